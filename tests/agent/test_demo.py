"""`edge-agent demo`: the README's main job, with nothing but the package."""

import re
import subprocess
import sys

from edgewatch.agent.cli import main
from edgewatch.agent.commands.demo import LogCounts
from edgewatch.agent.eventlog.store import Store
from edgewatch.agent.records import DeadLetter, make_event
from edgewatch.agent.timeutil import utcnow


def _previous_demo(db) -> None:
    """A log as an earlier demo left it: rows this run must neither keep nor count."""
    store = Store(str(db))
    store.write([make_event("risk", "previous-demo", utcnow(), "critical", "from the last run", {}, i) for i in range(50)],
                [DeadLetter("sensors/old", "{", "invalid JSON", utcnow(), "bad_json")] * 3)
    store.close()


def test_demo_runs_end_to_end_and_exits_0(tmp_path, documented_fields):
    db = tmp_path / "demo.db"
    _previous_demo(db)  # a fresh log each run: the summary is of this run only
    done = subprocess.run([sys.executable, "-m", "edgewatch.agent.cli", "demo", "--duration", "8s", "--db", str(db)],
                          check=False, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    out = done.stdout
    assert "edgewatch demo" in out  # the progress view (plain lines: stdout is not a terminal)
    assert "\x1b[" not in out
    assert re.search(r"status page \(open while the demo runs\): http://127\.0\.0\.1:\d+/status", out)
    assert f"edge-agent events --db {db}" in out
    store = Store(str(db), readonly=True)
    kinds = {e["kind"] for e in store.events()}
    assert len(kinds) >= 3 and "anomaly" in kinds, kinds
    undocumented = {(e["kind"], k) for e in store.events() for k in e["data"] if k not in documented_fields(e["kind"])}
    assert not undocumented, sorted(undocumented)  # every field of every kind the demo logs is in the events reference
    assert not store.events(key="previous-demo")
    dead = store.dead_letters()
    assert dead and all(d["reason"] for d in dead)
    assert f"dead letters: {len(dead)}" in out
    # every message the fleet published reached the agent (none left in the feeder's queue at its disconnect)
    last = re.findall(r"published\s+(\d+)\s+\((\d+) malformed\) \| agent in\s+(\d+)\s+dead letters (\d+)", out)[-1]
    published, malformed, taken, dead_letters = map(int, last)
    assert taken + dead_letters == published and dead_letters == malformed == len(dead), last


def test_demo_rejects_a_bad_duration(tmp_path, capsys):
    assert main(["demo", "--duration", "soon", "--db", str(tmp_path / "x.db")]) == 2
    err = capsys.readouterr().err
    assert "--duration" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.db").exists()


def test_demo_sidecar_serves_a_model_and_stops(tmp_path, tiny_model_dir):
    """The demo's sidecar: `edge-sidecar serve` on the CPU, ready, classifying, stopped (tiny model, cached)."""
    import httpx
    from edgewatch.agent.commands.demo import SidecarChild

    assert "no model in" in SidecarChild(tmp_path, tmp_path / "nothing").available()
    sidecar = SidecarChild(tmp_path, tiny_model_dir)
    assert sidecar.available() == ""
    sidecar.start()
    try:
        assert sidecar.wait_ready(timeout=60), sidecar.log_path.read_text()[-2000:]
        r = httpx.post(f"{sidecar.url}/v1/classify", json={"texts": ["AAPL beats estimates"]}, timeout=10)
        assert r.status_code == 200 and r.json()["results"][0]["label"] in ("bullish", "bearish", "neutral")
    finally:
        sidecar.stop()
    assert sidecar.proc is None


def test_a_kept_log_is_counted_from_this_run_on(tmp_path):
    """`--keep-log`: the earlier rows stay in the log, and the summary counts only what this run added."""
    db = tmp_path / "demo.db"
    _previous_demo(db)
    counts = LogCounts(str(db))
    assert counts.read() == ({}, 0)
    store = Store(str(db))
    store.write([make_event("anomaly", "s1", utcnow(), "warning", "new", {}, 1)],
                [DeadLetter("sensors/new", "{", "invalid JSON", utcnow(), "bad_json")])
    store.close()
    by, dead = counts.read()
    counts.close()
    assert (dict(by), dead) == ({("anomaly", "warning"): 1}, 1)
    reader = Store(str(db), readonly=True)
    assert len(reader.events()) == 51  # nothing removed
    reader.close()


def test_demo_replaces_only_an_event_log(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes, not a demo log\n")
    assert main(["demo", "--duration", "5s", "--db", str(notes)]) == 2
    err = capsys.readouterr().err
    assert f"--db: {notes} is not an event log, not replacing it" in err and len(err.strip().splitlines()) == 1
    assert notes.read_text() == "my notes, not a demo log\n"
