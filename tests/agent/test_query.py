"""`edge-agent events` / `deadletters` through the real CLI entry point, against a live log."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from edgewatch.agent.cli import main
from edgewatch.agent.eventlog.store import Store
from edgewatch.agent.eventlog.writer import StoreWriter
from edgewatch.agent.records import DeadLetter, make_event
from edgewatch.agent.timeutil import utcnow

NOW = utcnow()
INJECTION = "'; DROP TABLE events; --"


def _events():
    spec = [  # (minutes ago, kind, key, severity)
        (120, "anomaly", "s1", "warning"),
        (60, "risk", "portfolio", "critical"),
        (30, "anomaly", "s2", "critical"),
        (10, "signal", "AAPL", "info"),
        (1, "anomaly", "s1", "info"),
    ]
    return [
        make_event(kind, key, NOW - timedelta(minutes=ago), sev, f"{kind} on {key} {ago}m ago",
                   {"metric": "temperature", "value": 21.5 + ago, "score": 0.97}, ago)
        for ago, kind, key, sev in spec
    ]


@pytest.fixture
def db(tmp_path) -> str:
    global NOW
    NOW = utcnow()  # relative filters ("--until 5m") count back from when the test runs, not from the import
    path = str(tmp_path / "events.db")
    store = Store(path)
    store.write(
        _events(),
        [DeadLetter("sensors/a", "{bad", "invalid JSON", NOW - timedelta(hours=2), "bad_json"),
         DeadLetter("market/X/trade", '{"price": -1}', "price: must be > 0", NOW - timedelta(minutes=5),
                    "bad_field")],
    )
    store.close()
    return path


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def jsonl(capsys, *argv) -> list[dict]:
    rc, out, err = run(capsys, *argv, "--format", "json")
    assert rc == 0, err
    return [json.loads(line) for line in out.splitlines()]


def keys(rows) -> list[str]:
    return [r["key"] for r in rows]


def test_json_lines_are_full_spec_events_newest_last(capsys, db):
    rows = jsonl(capsys, "events", "--db", db)
    assert keys(rows) == ["s1", "portfolio", "s2", "AAPL", "s1"]
    assert set(rows[0]) == {"id", "event_id", "ts", "logged_at", "kind", "key", "severity", "message", "data", "agent_id"}
    assert rows[0]["data"] == {"metric": "temperature", "value": 141.5, "score": 0.97}


def test_every_filter(capsys, db):
    assert keys(jsonl(capsys, "events", "--db", db, "--kind", "anomaly")) == ["s1", "s2", "s1"]
    assert keys(jsonl(capsys, "events", "--db", db, "--kind", "risk", "--kind", "signal")) == ["portfolio", "AAPL"]
    assert keys(jsonl(capsys, "events", "--db", db, "--key", "s1")) == ["s1", "s1"]
    assert keys(jsonl(capsys, "events", "--db", db, "--severity", "critical")) == ["portfolio", "s2"]
    assert keys(jsonl(capsys, "events", "--db", db, "--since", "45m")) == ["s2", "AAPL", "s1"]
    assert keys(jsonl(capsys, "events", "--db", db, "--until", "20m")) == ["s1", "portfolio", "s2"]
    assert keys(jsonl(capsys, "events", "--db", db, "--since", "2h", "--until", "5m", "--kind", "anomaly")) == ["s2"]
    assert keys(jsonl(capsys, "events", "--db", db, "--limit", "2")) == ["AAPL", "s1"]  # the 2 most recent
    assert keys(jsonl(capsys, "events", "--db", db, "--limit", "0")) == []
    since = (NOW - timedelta(minutes=15)).isoformat() + "Z"
    assert keys(jsonl(capsys, "events", "--db", db, "--since", since)) == ["AAPL", "s1"]
    offset = (NOW - timedelta(minutes=15) + timedelta(hours=2)).isoformat() + "+02:00"
    assert keys(jsonl(capsys, "events", "--db", db, "--since", offset)) == ["AAPL", "s1"]


def test_sql_in_filter_values_is_data(capsys, db):
    for flag in ("--key", "--since"):
        rc, out, err = run(capsys, "events", "--db", db, flag, INJECTION, "--format", "json")
        assert (rc, out) == ((2, "") if flag == "--since" else (0, ""))
    with pytest.raises(SystemExit) as e:  # --kind takes the known kinds only
        main(["events", "--db", db, "--kind", INJECTION])
    assert e.value.code == 2
    assert keys(jsonl(capsys, "events", "--db", db, "--key", "s1' OR '1'='1")) == []
    assert len(jsonl(capsys, "events", "--db", db)) == 5  # the table is still there, untouched


def test_table_is_aligned_and_summarised(capsys, tmp_path):
    path = str(tmp_path / "t.db")
    store = Store(path)
    store.write([make_event("anomaly", "s1", NOW, "warning", "x" * 200, {"metric": "humidity", "value": 1 / 3}),
                 make_event("news", "AAPL", NOW, "info", "short", {"symbols": ["AAPL"], "score": None, "fresh": True})])
    store.close()
    rc, out, _ = run(capsys, "events", "--db", path)
    lines = out.splitlines()
    assert rc == 0 and lines[0].split() == ["id", "ts", "agent_id", "kind", "key", "severity", "message", "data"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[0].index("kind") == lines[2].index("anomaly") == lines[3].index("news")  # aligned columns
    assert "x" * 59 + "…" in lines[2] and "x" * 61 not in lines[2]  # message truncated
    assert "metric=humidity value=0.3333" in lines[2]
    assert 'symbols=["AAPL"] score=null fresh=true' in lines[3]  # as JSON spells them, not as Python does


def test_csv_has_a_header_and_json_data(capsys, db):
    rc, out, _ = run(capsys, "events", "--db", db, "--format", "csv", "--kind", "risk")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rc == 0 and [r["key"] for r in rows] == ["portfolio"]
    assert list(rows[0]) == ["id", "ts", "kind", "key", "severity", "message", "data", "agent_id"]
    assert json.loads(rows[0]["data"])["score"] == 0.97


def test_deadletters_formats_and_filters(capsys, db):
    rows = jsonl(capsys, "deadletters", "--db", db)
    assert [r["topic"] for r in rows] == ["sensors/a", "market/X/trade"]
    assert set(rows[0]) == {"id", "topic", "payload", "reason", "code", "received_at", "agent_id"}
    assert [r["topic"] for r in jsonl(capsys, "deadletters", "--db", db, "--code", "bad_field")] == ["market/X/trade"]
    assert [r["topic"] for r in jsonl(capsys, "deadletters", "--db", db, "--since", "1h")] == ["market/X/trade"]
    assert [r["topic"] for r in jsonl(capsys, "deadletters", "--db", db, "--limit", "1")] == ["market/X/trade"]
    rc, out, _ = run(capsys, "deadletters", "--db", db)
    assert rc == 0 and out.splitlines()[0].split() == ["id", "received_at", "agent_id", "topic", "code", "payload", "reason"]
    rc, out, _ = run(capsys, "deadletters", "--db", db, "--format", "csv")
    assert [r["reason"] for r in csv.DictReader(io.StringIO(out))] == ["invalid JSON", "price: must be > 0"]


def test_db_defaults_to_the_configured_store(capsys, db, tmp_path, monkeypatch):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[store]\nurl = "{db}"\n')
    assert len(jsonl(capsys, "events", "--config", str(cfg))) == 5
    monkeypatch.chdir(tmp_path)  # no --config: the default ./edgewatch.db, which is absent here
    rc, out, err = run(capsys, "events")
    assert rc == 2 and "edgewatch.db: no such event log" in err
    assert not (tmp_path / "edgewatch.db").exists()


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["events", "--since", "yesterday"], 2, "--since: not a time"),
        (["events", "--until", "soon"], 2, "--until: not a time"),
        (["events", "--limit", "-1"], 2, "--limit: must be 0 to 9223372036854775807, got -1"),
        (["deadletters", "--since", "1x"], 2, "--since: not a time"),
        (["events", "--limit", str(10**20)], 2, "--limit: must be 0 to 9223372036854775807"),
        (["deadletters", "--limit", str(10**20)], 2, "--limit: must be 0 to 9223372036854775807"),
        (["events", "--since", "999999999d"], 2, "--since: 999999999d ago is before the year 1"),
        (["events", "--until", "99999999999d"], 2, "--until: 99999999999d ago is before the year 1"),
        (["deadletters", "--since", "999999999d"], 2, "--since: 999999999d ago is before the year 1"),
        (["events", "--since", "9999-12-31T23:00:00-05:00"], 2, "--since: '9999-12-31T23:00:00-05:00' is outside"),
        (["events", "--kind", "bogus"], 2,
         "argument --kind: invalid choice: 'bogus' (choose from 'anomaly', 'health', 'maintenance', 'risk', 'signal', "
         "'price_alert', 'news', 'advice')"),
        (["events", "--severity", "loud"], 2, "argument --severity: invalid choice: 'loud'"),
        (["deadletters", "--code", "nope"], 2, "argument --code: invalid choice: 'nope' (choose from 'not_utf8',"),
        (["events", "--limit", "many"], 2, "argument --limit: invalid int value: 'many'"),
    ],
)
def test_usage_errors_exit_2_with_one_line(capsys, db, argv, code, message):
    try:
        rc = main([*argv, "--db", db])
    except SystemExit as e:  # argparse's own checks (choices, types) exit from the parser
        rc = e.code
    out, err = capsys.readouterr()
    assert (rc, out) == (code, "") and message in err and len(err.strip().splitlines()) == 1


def test_an_empty_result_says_so_on_stderr(capsys, db):
    for argv in (["events", "--key", "nobody"], ["events", "--kind", "news", "--format", "json"],
                 ["events", "--since", "1s", "--limit", "3"]):
        rc, out, err = run(capsys, *argv, "--db", db)
        assert (rc, out, err) == (0, "", "no events match\n"), argv
    rc, out, err = run(capsys, "deadletters", "--db", db, "--since", "1s", "--format", "csv")
    assert (rc, out, err) == (0, "id,received_at,topic,code,reason,payload,agent_id\n", "no dead letters match\n")
    rc, out, err = run(capsys, "events", "--db", db, "--kind", "risk")
    assert rc == 0 and "portfolio" in out and err == ""  # rows: nothing said


def test_deadletters_table_shows_the_reason_whole_and_marks_base64(capsys, tmp_path):
    from edgewatch.agent.ingest.validate import dead_letter

    path = str(tmp_path / "dl.db")
    long_reason = "field 'temperature' must be a number, got string " + "(and the whole explanation) " * 4
    store = Store(path)
    store.write([], [dead_letter("sensors/a", b'{"temperature": "' + b"w" * 80 + b'"}', long_reason, NOW, "bad_field"),
                     dead_letter("sensors/b", b"\xff\xfe\x00binary", "payload is not UTF-8", NOW, "not_utf8")])
    store.close()
    rc, out, _ = run(capsys, "deadletters", "--db", path)
    lines = out.splitlines()
    assert rc == 0 and lines[0].split() == ["id", "received_at", "agent_id", "topic", "code", "payload", "reason"]
    assert lines[2].endswith(f"sensors/a: {long_reason.strip()}")  # the reason is never cut
    assert "…" in lines[2]  # the long payload is
    assert lines[3].endswith("sensors/b: payload is not UTF-8 (payload shown base64)")
    rc, out, _ = run(capsys, "deadletters", "--db", path, "--wide")
    assert rc == 0 and "…" not in out and '{"temperature": "' + "w" * 80 + '"}' in out


def test_events_table_wide_shows_whole_messages(capsys, tmp_path):
    path = str(tmp_path / "t.db")
    store = Store(path)
    store.write([make_event("anomaly", "s1", NOW, "warning", "x" * 200, {"metric": "humidity", "value": 1 / 3})])
    store.close()
    rc, out, _ = run(capsys, "events", "--db", path, "--wide")
    assert rc == 0 and "x" * 200 in out and "…" not in out


def test_database_errors(capsys, tmp_path):
    missing = tmp_path / "missing.db"
    rc, _, err = run(capsys, "events", "--db", str(missing))
    assert rc == 2 and "no such event log" in err and not missing.exists()  # never created
    rc, _, err = run(capsys, "events", "--db", str(tmp_path))
    assert rc == 2 and f"{tmp_path}: is a directory, not an event log" in err
    for bad in ("mysql://u@h/db", "postgresql+psycopg://[::1"):
        rc, _, err = run(capsys, "events", "--db", bad)
        assert rc == 2 and "store.url" in err
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    rc, _, err = run(capsys, "events", "--db", str(garbage))  # a log-file problem: usage, not runtime
    assert rc == 2 and f"{garbage}: file is not a database" in err and len(err.strip().splitlines()) == 1
    good = tmp_path / "good.db"
    store = Store(str(good))
    store.write([make_event("anomaly", f"s{i}", NOW, "info", "m" * 500, {"i": i}, i) for i in range(2000)])
    store.close()
    truncated = tmp_path / "truncated.db"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    for name in ("events", "deadletters"):
        rc, out, err = run(capsys, name, "--db", str(truncated))
        assert rc == 2 and str(truncated) in err and "malformed" in err and len(err.strip().splitlines()) == 1, err
    rc, _, err = run(capsys, "deadletters", "--db", "postgresql+psycopg://postgres@127.0.0.1:1/none")
    assert rc == 1 and "Connection refused" in err and len(err.strip().splitlines()) == 1  # a server away: runtime


def test_a_postgresql_database_without_a_log_is_a_usage_error(capsys, postgres_url):
    """As an SQLite file without the log's tables: exit 2, one line, nothing created."""
    rc, _, err = run(capsys, "events", "--db", postgres_url)
    assert rc == 2 and "not an event log (no table deadletters, events)" in err and len(err.strip().splitlines()) == 1
    assert not sa.inspect(sa.create_engine(postgres_url)).get_table_names()


def test_queries_while_the_agent_writes(capsys, tmp_path):
    path = str(tmp_path / "live.db")
    store = Store(path)
    writer = StoreWriter(store, batch_size=200)
    writer.start()
    stop = threading.Event()

    def produce():
        i = 0
        while not stop.is_set() and i < 20000:
            writer.submit(events=[make_event("anomaly", f"s{j % 7}", NOW, "warning", "m", {"i": i + j}, i + j)
                                  for j in range(50)],
                          dead_letters=[DeadLetter("sensors/x", "{", "invalid JSON", NOW, "bad_json")])
            i += 50
            time.sleep(0.002)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        counts = []
        for _ in range(15):
            counts.append(len(jsonl(capsys, "events", "--db", path, "--key", "s3")))
            assert run(capsys, "events", "--db", path, "--kind", "anomaly", "--limit", "5")[0] == 0
            assert run(capsys, "deadletters", "--db", path, "--format", "csv", "--limit", "5")[0] == 0
        assert counts == sorted(counts) and counts[-1] > counts[0]
    finally:
        stop.set()
        producer.join()
        writer.close()
        store.close()


def _cli(*argv) -> list[str]:
    return [sys.executable, "-m", "edgewatch.agent.cli", *argv]


def test_follow_prints_new_events_until_sigterm(tmp_path):
    path = str(tmp_path / "follow.db")
    store = Store(path)
    store.write([make_event("anomaly", "old", NOW, "info", "before", {}, 0)])
    proc = subprocess.Popen(_cli("events", "--db", path, "--follow", "--format", "json", "--kind", "anomaly"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert json.loads(proc.stdout.readline())["key"] == "old"
        store.write([make_event("risk", "portfolio", NOW, "critical", "not followed", {}, 1),
                     make_event("anomaly", "new", NOW, "warning", "after", {}, 2)])
        assert json.loads(proc.stdout.readline())["key"] == "new"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill() if proc.poll() is None else None
        store.close()
    assert proc.returncode == 0 and out == "" and err == ""


def test_piping_into_head_prints_no_traceback(tmp_path):
    path = str(tmp_path / "big.db")
    store = Store(path)
    store.write([make_event("anomaly", f"s{i}", NOW, "info", "m" * 50, {"i": i}, i) for i in range(5000)])
    store.close()
    proc = subprocess.Popen(_cli("events", "--db", path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # like `| head -1`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=20) == 0 and "Traceback" not in err and err == ""


@pytest.mark.postgres
def test_events_from_a_postgresql_log(capsys, postgres_url):
    store = Store(postgres_url)
    store.write(_events())
    store.close()
    assert keys(jsonl(capsys, "events", "--db", postgres_url, "--kind", "anomaly", "--since", "45m")) == ["s2", "s1"]
    rc, out, _ = run(capsys, "events", "--db", postgres_url, "--format", "csv", "--key", INJECTION)
    assert (rc, out.strip()) == (0, "id,ts,kind,key,severity,message,data,agent_id")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv to act as an operator")
def test_operators_in_the_services_group_read_the_live_and_the_stopped_log():
    """The state directory is 0750 and the log 0640, group = the service's: an operator of that group reads
    it while the agent writes and after it stopped; anyone else gets one clear line."""
    nobody, group = 65534, 65534
    base = Path(tempfile.mkdtemp(prefix="edgewatch-perm-"))
    try:
        base.chmod(0o755)
        state = base / "state"
        state.mkdir(mode=0o750)
        os.chown(state, 0, group)
        path = state / "events.db"
        store = Store(str(path))
        store.write(_events())
        for f in state.iterdir():
            os.chown(f, 0, group)

        def as_user(gid: int, *argv: str) -> subprocess.CompletedProcess:
            cmd = ["setpriv", f"--reuid={nobody}", f"--regid={gid}", "--clear-groups",
                   *(argv or _cli("events", "--db", str(path), "--format", "json"))]
            return subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parents[2], timeout=60)

        if as_user(group, sys.executable, "-c", "import edgewatch.agent.commands.events").returncode != 0:
            pytest.skip("user nobody cannot read this checkout or its Python environment")
        live = as_user(group)
        store.close()  # the agent stops: -wal and -shm are gone, the operator cannot create them
        assert sorted(p.name for p in state.iterdir()) == ["events.db"]
        stopped = as_user(group)
        stranger = as_user(1)
    finally:
        shutil.rmtree(base)
    assert live.returncode == 0 and len(live.stdout.splitlines()) == 5, live.stderr
    assert stopped.returncode == 0 and len(stopped.stdout.splitlines()) == 5, stopped.stderr
    assert stranger.returncode == 2 and "permission denied" in stranger.stderr and "Traceback" not in stranger.stderr


def test_a_whole_log_streams_in_pages(capsys, db, monkeypatch):
    monkeypatch.setattr("edgewatch.agent.commands.events.PAGE", 2)  # 5 events, 2 dead letters: several pages, one exactly full
    assert keys(jsonl(capsys, "events", "--db", db)) == ["s1", "portfolio", "s2", "AAPL", "s1"]
    assert keys(jsonl(capsys, "events", "--db", db, "--kind", "anomaly")) == ["s1", "s2", "s1"]
    rc, out, _ = run(capsys, "events", "--db", db, "--format", "csv")
    assert rc == 0 and out.count("id,ts,kind") == 1 and len(out.splitlines()) == 6
    rc, out, _ = run(capsys, "events", "--db", db)
    assert rc == 0 and len(out.splitlines()) == 7 and out.splitlines()[0].startswith("id")
    assert [r["topic"] for r in jsonl(capsys, "deadletters", "--db", db)] == ["sensors/a", "market/X/trade"]
    rc, out, _ = run(capsys, "events", "--db", db, "--format", "csv", "--key", "none")
    assert out == "id,ts,kind,key,severity,message,data,agent_id\n"


def test_limit_keeps_the_most_recent_in_pages(capsys, db, monkeypatch):
    monkeypatch.setattr("edgewatch.agent.commands.events.PAGE", 2)
    assert keys(jsonl(capsys, "events", "--db", db, "--limit", "3")) == ["s2", "AAPL", "s1"]
    assert keys(jsonl(capsys, "events", "--db", db, "--limit", "4")) == ["portfolio", "s2", "AAPL", "s1"]
    assert keys(jsonl(capsys, "events", "--db", db, "--limit", "2", "--kind", "anomaly")) == ["s2", "s1"]
    assert keys(jsonl(capsys, "events", "--db", db, "--limit", "99")) == ["s1", "portfolio", "s2", "AAPL", "s1"]
    assert jsonl(capsys, "events", "--db", db, "--limit", "0") == []
    assert [r["topic"] for r in jsonl(capsys, "deadletters", "--db", db, "--limit", "1")] == ["market/X/trade"]


def _peak_rss_mib(*argv: str) -> float:
    """Peak RSS of `edge-agent ARGV` in a process of its own, its output thrown away."""
    # VmHWM, not ru_maxrss: the latter keeps the forking pytest's own peak across exec
    code = ("import sys\nfrom edgewatch.agent.cli import main\nrc = main(sys.argv[1:])\n"
            "hwm = [line for line in open('/proc/self/status') if line.startswith('VmHWM:')][0]\n"
            "print(int(hwm.split()[1]) / 1024, file=sys.stderr)\nsys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return float(out.stderr.strip().splitlines()[-1])


def test_a_large_limit_streams_like_the_unlimited_query(tmp_path):
    """`--limit N` used to hold all N rows (3-4 GB for a million); now it pages like the query without a limit."""
    path = str(tmp_path / "big.db")
    store = Store(path)
    n = 20_000
    for start in range(0, n, 5000):
        store.write([make_event("anomaly", f"s{i % 50}", NOW - timedelta(seconds=n - i), "warning", "m" * 1000,
                                {"value": i, "note": "x" * 500}, i) for i in range(start, start + 5000)])
    store.close()
    everything = _peak_rss_mib("events", "--db", path, "--format", "json")
    limited = _peak_rss_mib("events", "--db", path, "--format", "json", "--limit", str(n))
    assert limited < everything + 15, (limited, everything)  # holding 20,000 such rows costs ~50 MiB


FLEET = ["plant1/a/comp", "plant1/b/comp", "plant1/a/pump", "plant1", "plant2/a/comp", "plant10/x", "p%1/x_y"]


def _fleet_log(url: str) -> None:
    store = Store(url)
    store.write([make_event("anomaly", key, NOW - timedelta(minutes=i), "warning", f"on {key}", {}, i)
                 for i, key in enumerate(FLEET)])
    store.close()


def test_a_key_filter_takes_what_its_topic_filter_takes(capsys, tmp_path):
    """`--key` with MQTT wildcards: '+' one level, a last '#' every level below and the level above; `%` and `_`
    are plain characters; several `--key` are alternatives; `--group` takes a configured group's filters."""
    url = str(tmp_path / "fleet.db")
    _fleet_log(url)

    def matched(*filters: str) -> set[str]:
        return set(keys(jsonl(capsys, "events", "--db", url, *[a for f in filters for a in ("--key", f)])))

    assert matched("plant1/#") == {"plant1/a/comp", "plant1/b/comp", "plant1/a/pump", "plant1"}
    assert matched("plant1/+/comp") == {"plant1/a/comp", "plant1/b/comp"}
    assert matched("+/a/+") == {"plant1/a/comp", "plant1/a/pump", "plant2/a/comp"}
    assert matched("#") == set(FLEET) and matched("plant1") == {"plant1"}
    assert matched("p%1/#") == {"p%1/x_y"} and matched("p_ant1/+/comp") == set()
    assert matched("plant1/a/pump", "plant2/#") == {"plant1/a/pump", "plant2/a/comp"}
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[store]\nurl = "{url}"\n[anomaly.groups.comps]\nsensors = ["+/+/comp"]\n'
                   '[health.groups.comps]\nsensors = ["plant10/#"]\n')
    rows = jsonl(capsys, "events", "--config", str(cfg), "--group", "comps")
    assert set(keys(rows)) == {"plant1/a/comp", "plant1/b/comp", "plant2/a/comp", "plant10/x"}
    rc, _, err = run(capsys, "events", "--config", str(cfg), "--group", "pumps")
    assert rc == 2 and "--group pumps: no [anomaly.groups.pumps]" in err and "(groups: comps)" in err


@pytest.mark.postgres
def test_key_filters_on_a_postgresql_log(capsys, postgres_url):
    _fleet_log(postgres_url)
    got = set(keys(jsonl(capsys, "events", "--db", postgres_url, "--key", "plant1/+/comp", "--key", "p%1/#")))
    assert got == {"plant1/a/comp", "plant1/b/comp", "p%1/x_y"}
