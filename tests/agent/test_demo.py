"""`edge-agent demo`: the README's main job, with nothing but the package."""

import re
import subprocess
import sys

from edgewatch.agent.cli import main
from edgewatch.agent.eventlog.store import Store


def test_demo_runs_end_to_end_and_exits_0(tmp_path):
    db = tmp_path / "demo.db"
    done = subprocess.run([sys.executable, "-m", "edgewatch.agent.cli", "demo", "--duration", "8s", "--db", str(db)],
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    out = done.stdout
    assert "edgewatch demo" in out  # the progress view (plain lines: stdout is not a terminal)
    assert "\x1b[" not in out
    assert f"edge-agent events --db {db}" in out
    store = Store(str(db), readonly=True)
    kinds = {e["kind"] for e in store.events()}
    assert len(kinds) >= 3 and "anomaly" in kinds, kinds
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
