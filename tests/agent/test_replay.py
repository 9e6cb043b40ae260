"""Replay: the live graph over captures in event time; same input, same event ids as the live run."""

import json
import random
from datetime import datetime, timedelta

from edgewatch.agent.cli import main
from edgewatch.agent.commands.replay import replay
from edgewatch.agent.config import Config, RecordConfig
from edgewatch.agent.eventlog.store import Store
from edgewatch.agent.ingest.capture import CaptureWriter, read_captures
from edgewatch.agent.testing.plugin import (
    AgentProcess,
    publish_many,
    wait_for,
    wait_for_events,
)
from edgewatch.agent.timeutil import utcnow

EPOCH = datetime(1970, 1, 1)


def readings(start: datetime, sensors: int = 3, n: int = 400, spike_at: int = 350, seed: int = 7):
    """(received_at, topic, payload) for `sensors` noisy sensors, one spike each."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        t = start + timedelta(seconds=i)
        for s in range(sensors):
            v = 20 + rnd.gauss(0, 0.3) + (25 if i == spike_at else 0)
            payload = json.dumps({"ts": (t - EPOCH).total_seconds(), "temperature": round(v, 3), "status": "ok"})
            out.append((t, f"sensors/line{s}/t", payload))
    return out


def write_capture(path, msgs):
    w = CaptureWriter(RecordConfig(path=str(path)))
    for m in msgs:
        w.write(*m)
    w.close()


def test_replay_finds_the_spikes_and_is_idempotent(tmp_path):
    msgs = readings(datetime(2026, 1, 1))
    msgs.append((msgs[-1][0], "sensors/bad", '{"temperature": "hot"}'))
    write_capture(tmp_path / "cap", msgs)
    db = str(tmp_path / "ev.db")
    first = replay([str(tmp_path / "cap")], Config(), db)
    assert first["messages"] == len(msgs) and first["accepted"] == {"sensor": len(msgs) - 1}
    assert first["rejected"] == 1 and "field 'temperature' must be a number" in first["rejected_examples"][0]
    anomalies = Store(db).events(kinds=["anomaly"])
    assert {e["key"] for e in anomalies} >= {"line0/t", "line1/t", "line2/t"}
    assert all(e["ts"].startswith("2026-01-01T00:05:50") for e in anomalies if e["data"]["value"] > 40)
    again = replay([str(tmp_path / "cap")], Config(), db)
    assert again["events"] == first["events"] and again["new_events"] == 0  # same ids: nothing duplicated


def test_replay_command_prints_a_summary_and_rejects_missing_files(tmp_path, capsys):
    write_capture(tmp_path / "cap", readings(datetime(2026, 1, 1), sensors=1, n=50))
    db = tmp_path / "ev.db"
    assert main(["replay", str(tmp_path / "cap"), "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "replayed 50 messages from 1 file(s)" in out and f"edge-agent events --db {db}" in out
    assert main(["replay", str(tmp_path / "nope.jsonl"), "--db", str(db)]) == 2
    assert "no such capture file" in capsys.readouterr().err


def test_replay_of_an_empty_capture(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    s = replay([str(tmp_path / "empty.jsonl")], Config(), str(tmp_path / "ev.db"))
    assert s["messages"] == 0 and s["events"] == 0


def data_driven(events: list[dict]) -> list[str]:
    """Event ids of all but the stale timer's events: silence is found on the engine clock, which a replay
    runs on a different phase and stops at the last message (see agent/analytics/health.py)."""
    return sorted(e["event_id"] for e in events
                  if e["data"].get("why") != "stale" and "stale" not in e["data"].get("reasons", ()))


def test_replay_matches_the_live_run(mqtt_broker, tmp_path):
    """The live agent records what it consumed; replaying that capture yields the same anomaly, health and
    maintenance event ids (but the stale timer's). The readings are an hour old and come in two bursts, so
    the live engine's clock, far ahead of the data, finds every sensor stale in the pause: that must not
    move the rest."""
    start = utcnow().replace(microsecond=0) - timedelta(hours=1)
    msgs = readings(start)
    # one periodic health event per sensor for each 60 s bucket of data time after the first one
    buckets = {int((received - EPOCH).total_seconds()) // 60 for received, _, _ in msgs}
    periodic = 3 * (len(buckets) - 1)
    agent = AgentProcess(mqtt_broker, tmp_path / "live", protocol="3.1.1").start()
    try:
        agent.wait_ready(mqtt_broker)
        half = len(msgs) // 2
        publish_many(mqtt_broker, [(topic, payload) for _, topic, payload in msgs[:half]])
        wait_for_events(agent.db, 3, kinds=["maintenance"], predicate=lambda e: e["data"]["reasons"] == ["stale"],
                        timeout=10)
        publish_many(mqtt_broker, [(topic, payload) for _, topic, payload in msgs[half:]])
        wait_for(lambda: sum(1 for _ in read_captures([agent.capture_dir])) == len(msgs), 20, what="all captured")
        wait_for_events(agent.db, 3, kinds=["anomaly"], timeout=10)
        wait_for_events(agent.db, periodic, kinds=["health"], predicate=lambda e: e["data"]["why"] == "periodic",
                        timeout=10)
    finally:
        assert agent.stop() == 0, agent.log_tail()
    kinds = ["anomaly", "health", "maintenance"]
    live = Store(agent.db, readonly=True).events(kinds=kinds)
    summary = replay([str(agent.capture_dir)], Config(), str(tmp_path / "replayed.db"))
    assert summary["messages"] == len(msgs) and summary["rejected"] == 0
    replayed = Store(str(tmp_path / "replayed.db"), readonly=True).events(kinds=kinds)
    assert data_driven(replayed) == data_driven(live)
    assert any(e["data"].get("why") == "stale" for e in live)
    assert sum(e["kind"] == "anomaly" for e in live) >= 3
    assert sum(e["kind"] == "health" and e["data"]["why"] == "periodic" for e in live) == periodic


def test_replay_into_postgresql(tmp_path, postgres_url):
    write_capture(tmp_path / "cap", readings(datetime(2026, 1, 1)))
    sqlite = replay([str(tmp_path / "cap")], Config(), str(tmp_path / "ev.db"))
    pg = replay([str(tmp_path / "cap")], Config(), postgres_url)
    assert pg["new_events"] == sqlite["new_events"] > 0
    assert {e["event_id"] for e in Store(postgres_url).events()} == {
        e["event_id"] for e in Store(str(tmp_path / "ev.db")).events()}


def test_a_replay_of_some_feeds_skips_the_others_undecoded(tmp_path):
    from edgewatch.agent.commands.replay import CaptureSource

    t = datetime(2026, 1, 1)
    write_capture(tmp_path / "cap", [(t, "sensors/a", '{"temperature": "hot"}'),
                                     (t, "market/AAPL/trade", '{"price": 190.0, "size": 5}'),
                                     (t, "market/AAPL/candle", "{}")])
    every = CaptureSource([str(tmp_path / "cap")], Config())
    assert set(every.next_batch()[1]) == {"trade", "done"} and len(every.rejected) == 2
    trades = CaptureSource([str(tmp_path / "cap")], Config(), feeds={"trade"})
    assert set(trades.next_batch()[1]) == {"trade", "done"} and trades.rejected == []  # the others never decoded
    others = CaptureSource([str(tmp_path / "cap")], Config(), feeds={"sensor", "trade"}, sensors=lambda s: s != "a")
    assert set(others.next_batch()[1]) == {"trade", "done"} and others.rejected == []  # sensor a's never decoded


def damaged_capture(folder, start: datetime, n: int = 50):
    """A capture of `n` readings from `start` with, in between, lines no engine can run (nested too deep to
    parse, times past datetime's or csp's range), and a folder named like a capture file; returns (readings,
    damaged lines)."""
    msgs = readings(start, sensors=1, n=n)
    write_capture(folder, msgs)
    (capture,) = folder.glob("capture-*.jsonl")
    lines = capture.read_text().splitlines(keepends=True)
    row = json.loads(lines[0])
    bad = ["[" * 100_000 + "\n"] + [json.dumps({**row, "received_at": when}) + "\n" for when in (
        "1600-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "2262-01-01T00:00:00Z", "9999-12-31T23:59:59Z")]
    capture.write_text("".join(bad[:2] + lines[:10] + bad[2:] + lines[10:]))
    (folder / "capture-x.jsonl").mkdir()
    return len(msgs), len(bad)


def test_replay_skips_lines_the_engine_cannot_run_and_ends_within_its_range(tmp_path, capsys):
    """A capture near csp's last time (2261-12-31) replays: the run's bound is the engine's end, not a span past
    the first message that would overflow it; the damaged lines are counted, and nothing else breaks."""
    n, bad = damaged_capture(tmp_path / "cap", datetime(2261, 12, 31, 23, 59))
    db = tmp_path / "ev.db"
    assert main(["replay", str(tmp_path / "cap"), "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert f"replayed {n} messages from 1 file(s), 2261-12-31 23:59:00 .. 2261-12-31 23:59:49 UTC" in out
    assert f"accepted: sensor {n}; rejected 0; damaged lines skipped {bad}" in out


def test_replay_of_a_capture_a_century_before_the_engine_ends(tmp_path):
    write_capture(tmp_path / "cap", readings(datetime(2170, 1, 1), sensors=1, n=20))
    s = replay([str(tmp_path / "cap")], Config(), str(tmp_path / "ev.db"))
    assert s["messages"] == s["accepted"]["sensor"] == 20 and s["skipped_lines"] == 0


def test_a_warm_start_reads_past_lines_the_engine_cannot_run(tmp_path):
    """`edge-agent run` re-runs its captures at start (`warm_source`, then the engine from its first time): a
    damaged line there is skipped, never a failed start (under systemd, a crash loop)."""
    import csp
    from edgewatch.agent.analytics.snapshot import StateBook
    from edgewatch.agent.commands.replay import RUN_LIMIT, learn_graph
    from edgewatch.agent.commands.run import warm_source

    start = utcnow().replace(microsecond=0) - timedelta(minutes=5)
    n, bad = damaged_capture(tmp_path / "cap", start)
    cfg = Config(record=RecordConfig(path=str(tmp_path / "cap")))
    source = warm_source(cfg, None)
    assert source is not None and source.first == start
    batches = []
    while (batch := source.next_batch()) is not None:
        batches.append(batch)
    assert sum(source.accepted.values()) == n and source.reader.skipped == bad and batches[-1][1]["done"]
    # the prewarm's run over the same captures (agent/commands/run.py): from the first capture to RUN_LIMIT
    source = warm_source(cfg, None, after=start - timedelta(seconds=1))
    book = StateBook()
    csp.run(learn_graph, source, cfg, book, starttime=source.first, endtime=RUN_LIMIT)
    assert source.last == start + timedelta(seconds=n - 1) and source.reader.skipped == bad


def test_a_warm_start_never_runs_past_now(tmp_path):
    """A capture stamped ahead of the clock (the clock was set back since) must not start the live engine in the
    future, where it would wait for that time to come: the warm-up stops at now."""
    from edgewatch.agent.commands.run import warm_source

    start = utcnow().replace(microsecond=0) - timedelta(minutes=5)
    past, ahead = readings(start, sensors=1, n=20), readings(utcnow() + timedelta(hours=1), sensors=1, n=5)
    write_capture(tmp_path / "cap", past + ahead)
    cfg = Config(record=RecordConfig(path=str(tmp_path / "cap")))
    for source in (warm_source(cfg, None), warm_source(cfg, None, after=start - timedelta(seconds=1))):
        while source.next_batch() is not None:
            pass
        assert sum(source.accepted.values()) == len(past) and source.last <= utcnow()
