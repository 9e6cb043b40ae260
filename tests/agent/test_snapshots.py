"""State that survives a restart: the analytics' state is snapshotted into the log and restored at start, so the
events after a restart are the ones an uninterrupted run makes, whether the agent was stopped cleanly (the stop's
own snapshot) or killed (the last periodic snapshot, then the captures received after it)."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import pickle
import sqlite3
import zlib
from datetime import datetime, timedelta, timezone

import csp
from edgewatch.agent.analytics import anomaly, snapshot
from edgewatch.agent.analytics.sensor_groups import StatesOf
from edgewatch.agent.analytics.snapshot import StateBook
from edgewatch.agent.analytics.topology import analytics
from edgewatch.agent.cli import main
from edgewatch.agent.commands.demo import scrape
from edgewatch.agent.commands.run import snapshot_identity
from edgewatch.agent.config import Config, SensorGroup
from edgewatch.agent.eventlog.snapshots import Identity, SnapshotWriter, restore
from edgewatch.agent.eventlog.store import Store
from edgewatch.agent.records import Headline, Pnl, Position, Quote, SensorReading, Trade
from edgewatch.agent.testing.harness import AgentProcess, wait_for
from edgewatch.common.ports import free_port

from tests.agent.test_service import T0 as READINGS_T0
from tests.agent.test_service import stop_within
from tests.agent.test_warm_start import anomalies, run_split, uninterrupted

T0 = datetime(2026, 12, 6, 8, 0, 0)
SPLIT = T0 + timedelta(seconds=900)
END = T0 + timedelta(seconds=1500)
STATES = ["advisor", "anomaly", "health", "market", "price_alerts", "risk"]


def _inputs() -> dict[str, list[tuple[datetime, list]]]:
    """25 minutes of every feed: three sensors (two with two metrics) with spikes, a stuck value and a drift,
    two symbols with a jump, a position in each, and a P&L that falls through the drawdown limit."""
    sensors, trades, quotes, pnl = [], [], [], []
    for i in range(1500):
        t = T0 + timedelta(seconds=i)
        temp = 20.0 + 2.0 * math.sin(i / 40.0) + 0.1 * ((i * 7919) % 13) / 13.0
        if i in (450, 1000, 1300):
            temp += 30.0
        hum = 50.0 + 0.3 * ((i * 104729) % 11) / 11.0 + (0.05 * (i - 1100) if i > 1100 else 0.0)
        sensors.append((t, [
            SensorReading(sensor_id="s1", ts=t, metrics={"temperature": temp, "humidity": hum}, attrs={}),
            SensorReading(sensor_id="s2", ts=t, metrics={"temperature": temp - 3.0 if i < 1000 else 17.0,
                                                         "humidity": hum + 1.0}, attrs={}),
            SensorReading(sensor_id="s3", ts=t, metrics={"pressure": 1000.0 + ((i * 31) % 17) / 17.0}, attrs={}),
        ]))
        for half in (0, 0.5):
            tt = t + timedelta(seconds=half)
            step = i * 2 + int(half * 2)
            acme = 100.0 * (1.0 + 0.0004 * math.sin(step / 9.0)) * (1.05 if i >= 1200 else 1.0)
            globex = 50.0 * (1.0 + 0.0006 * math.cos(step / 7.0)) * (0.97 if i >= 950 else 1.0)
            trades.append((tt, [Trade(symbol="ACME", ts=tt, price=acme, size=10.0 + step % 5),
                                Trade(symbol="GLBX", ts=tt, price=globex, size=20.0 + step % 3)]))
        if i % 10 == 0:
            quotes.append((t, [Quote(symbol="ACME", ts=t, bid=99.9, ask=100.1, bid_size=5.0, ask_size=5.0)]))
            pnl.append((t, [Pnl(ts=t, pnl=5000.0 - (12_000.0 if i >= 1250 else 0.0) + i)]))
    positions = [(T0, [Position(symbol="ACME", ts=T0, quantity=1000.0), Position(symbol="GLBX", ts=T0, quantity=-500.0)])]
    return {"sensors": sensors, "trades": trades, "quotes": quotes, "positions": positions, "pnl": pnl}


@csp.graph
def _graph(feeds: dict, start: datetime, cfg: Config, book: object):
    def feed(name: str, typ: type):
        return csp.curve(list[typ], [(t, v) for t, v in feeds[name] if t >= start])

    out = analytics(feed("sensors", SensorReading), feed("trades", Trade), feed("quotes", Quote),
                    feed("positions", Position), feed("pnl", Pnl), csp.null_ts(list[Headline]), cfg, book)
    csp.add_graph_output("events", out.events)
    csp.add_graph_output("bars", out.bars)


def _run(feeds: dict, start: datetime, end: datetime, book: StateBook | None) -> dict[str, list]:
    out = csp.run(_graph, feeds, start, Config(), book, starttime=start, endtime=end)
    return {"events": [e.event_id for _, batch in out["events"] for e in batch],
            "kinds": sorted({e.kind for _, batch in out["events"] for e in batch}),
            "bars": [(b.symbol, b.start) for _, batch in out["bars"] for b in batch]}


def test_every_analytic_resumes_from_a_snapshot_as_if_never_stopped():
    """The state of every analytic, pickled mid-run and restored into a fresh graph, yields exactly the events
    and bars of an uninterrupted run from there on."""
    feeds = _inputs()
    whole = csp.run(_graph, feeds, T0, Config(), None, starttime=T0, endtime=END)
    after = {"events": [e.event_id for t, batch in whole["events"] if t >= SPLIT for e in batch],
             "bars": [(b.symbol, b.start) for t, batch in whole["bars"] if t >= SPLIT for b in batch]}
    first = StateBook()
    _run(feeds, T0, SPLIT - timedelta(microseconds=1), first)
    assert sorted(first.keys()) == STATES and all(n > 0 for n in first.keys().values()), first.keys()

    second = _run(feeds, SPLIT, END, StateBook(snapshot.loads(first.dumps())))
    cold = _run(feeds, SPLIT, END, StateBook())
    # the test means something only when the second half raises every kind of event the state drives
    assert {"anomaly", "maintenance", "health", "price_alert", "risk", "signal", "advice"} <= set(second["kinds"])
    assert second["events"] == after["events"] and second["bars"] == after["bars"]
    assert cold["events"] != after["events"]


def test_every_class_in_a_snapshot_is_part_of_its_version():
    """A persisted class whose slots change must change `snapshot.version()`, or an old snapshot would be
    restored into objects missing an attribute: every analytics class found in a real snapshot is `@persisted`."""
    book = StateBook()
    _run(_inputs(), T0, T0 + timedelta(seconds=200), book)
    found = set()

    class Spy(pickle.Pickler):
        def reducer_override(self, obj):
            found.add(type(obj))
            return NotImplemented

    Spy(io.BytesIO(), pickle.HIGHEST_PROTOCOL).dump(snapshot.loads(book.dumps()))
    ours = {f"{c.__module__}.{c.__qualname__}" for c in found if c.__module__.startswith("edgewatch.agent.analytics")}
    assert "edgewatch.agent.analytics.anomaly.MetricTable" in ours and "edgewatch.agent.analytics.risk.Book" in ours
    containers = {"edgewatch.agent.analytics.states.RecentStates", "edgewatch.agent.analytics.anomaly.SensorIndex",
                  "edgewatch.agent.analytics.health.SensorStates"}
    assert ours - containers <= set(snapshot._LAYOUT)


def test_a_column_added_to_a_persisted_table_changes_the_version(monkeypatch):
    """A table kept as arrays (the detector's MetricTable) gains a column without a new slot: the row widths it
    declares in COLUMNS are part of the layout, so a snapshot taken before is refused, not restored into rows
    one field short."""
    monkeypatch.setattr(snapshot, "_LAYOUT", dict(snapshot._LAYOUT))

    def table(width: int) -> str:
        @snapshot.persisted
        class Table:
            __slots__ = ("rows",)
            COLUMNS = (width,)

        return snapshot.version()

    assert table(13) == table(13) != table(14)
    layout = snapshot._LAYOUT["edgewatch.agent.analytics.anomaly.MetricTable"]
    assert layout[-2:] == (anomaly.FIELDS, anomaly.C_RING)


def _ident(cfg: Config, agent: str = "gw1") -> Identity:
    return snapshot_identity(cfg, agent)


def _book() -> StateBook:
    book = StateBook()
    _run(_inputs(), T0, T0 + timedelta(seconds=200), book)
    book.water = T0 + timedelta(seconds=200)
    return book



def test_a_state_whose_settings_changed_starts_fresh_and_the_others_resume(url):
    store = Store(url)
    writer = SnapshotWriter(store, _ident(Config()), keep=3)
    writer.save(_book())

    changed = Config()
    changed.anomaly.warmup = 50
    changed.market.bar_interval = 5.0  # the market side's states are rebuilt together
    book, row = restore(store, _ident(changed))
    assert row is not None and book.restored == ["health"] and book.water == T0 + timedelta(seconds=200)
    assert _ident(changed).refusal(row) is None
    assert sorted(_ident(changed).stale(row)) == ["advisor", "anomaly", "market", "price_alerts", "risk"]

    changed.health.warmup = 10  # now no state in it can resume: the snapshot is refused
    book, row = restore(store, _ident(changed))
    assert row is None and book.restored == []
    assert _ident(changed).refusal(store.snapshots()[0]) == (
        "the settings that shape every state in it changed: advisor, anomaly, health, market, price_alerts, risk "
        "(settings changed in [anomaly], [health], [market])")

    live = Config()  # keys a running graph applies live do not shape the state
    live.anomaly.threshold, live.risk.max_drawdown = 0.9, 5.0
    assert _ident(live).refusal(store.snapshots()[0]) is None and _ident(live).stale(store.snapshots()[0]) == {}

    other = Identity("gw1", "0.other", _ident(Config()).config)
    assert "another version" in other.refusal(store.snapshots()[0])
    assert restore(store, _ident(Config(), agent="gw2"))[1] is None  # another agent's snapshot is not ours

    book, row = restore(store, _ident(Config()))
    assert row is not None and book.restored == STATES and book.water == T0 + timedelta(seconds=200)
    assert store.snapshots()[0]["restored_at"] is not None
    store.close()


def test_snapshots_are_bounded_per_agent_and_written_off_the_engine(url):
    store = Store(url)
    book = _book()
    blob = book.dumps()
    writer = SnapshotWriter(store, _ident(Config()), keep=2)
    writer.start()
    for i in range(5):
        writer.offer(blob, T0 + timedelta(seconds=i), book.keys(), 0.01)
        wait_for(lambda: writer.saved == i + 1, timeout=10, what=f"snapshot {i} saved")
    SnapshotWriter(store, _ident(Config(), agent="gw2"), keep=2).save(book)
    writer.close(5.0)
    rows = store.snapshots("gw1")
    assert [r["taken_at"] for r in rows] == [T0 + timedelta(seconds=4), T0 + timedelta(seconds=3)]
    assert len(store.snapshots("gw2")) == 1
    assert rows[0]["size"] == len(store.snapshot_state(rows[0]["id"])) < len(blob) / 2  # compressed
    restored = snapshot.loads(zlib.decompress(store.snapshot_state(rows[0]["id"])))
    assert sorted(restored) == STATES and len(restored["health"]) == book.keys()["health"] == 3
    store.close()


def test_state_command_shows_the_snapshots_and_the_last_restore(tmp_path, capsys):
    db = str(tmp_path / "events.db")
    store = Store(db)
    SnapshotWriter(store, _ident(Config()), keep=3).save(_book())
    restore(store, _ident(Config()))
    store.close()
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\nid = "gw1"\n[store]\nurl = "{db}"\n')
    capsys.readouterr()
    assert main(["state", "--config", str(config), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    (snap,) = rep["snapshots"]
    assert snap["usable"] and snap["keys"] == {"anomaly": 5, "health": 3, "price_alerts": 2,
                                               "market": 2, "risk": 2, "advisor": 2}
    assert rep["last_restore"]["snapshot"] == snap["id"] and rep["last_restore"]["age_at_restore_seconds"] > 0
    config.write_text(f'[agent]\nid = "gw1"\n[store]\nurl = "{db}"\n[health]\nwarmup = 10\n')
    assert main(["state", "--config", str(config)]) == 0
    text = capsys.readouterr().out
    assert f"snapshot {snap['id']} of gw1" in text
    assert "usable at the next start; these start fresh: health (settings changed in [health])" in text


# -- the agent, restarted ---------------------------------------------------------------------------------


def judged_after_restart(db) -> list[tuple[str, str]]:
    """Id and message of the data-driven events (anomalies; health reports, but not the clock-driven `stale`
    ones) of the readings after the restart (40 on). A health message carries the sensor's score, so equal
    messages mean the health state behind them was resumed exactly, not only the anomaly detector's."""
    cut = datetime.fromtimestamp(READINGS_T0 + 40, timezone.utc).replace(tzinfo=None)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("select event_id, ts, kind, message, data from events order by ts, event_id").fetchall()
    return [(eid, msg) for eid, ts, kind, msg, data in rows
            if kind in ("anomaly", "health") and json.loads(data).get("why") != "stale"
            and datetime.fromisoformat(ts) >= cut]


def _snapshot_rows(agent: AgentProcess) -> list[dict]:
    with sqlite3.connect(f"file:{agent.db}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("select id, taken_at, restored_at from state_snapshots order by id")]


def test_a_clean_stop_saves_the_state_and_the_restart_resumes_from_it(mosquitto, tmp_path):
    expected = uninterrupted(mosquitto, tmp_path / "whole")
    # no capture warm start: the stop's own snapshot is all the state there is
    agent = run_split(mosquitto, tmp_path / "split", "term", warm_start=0.0, snapshot_interval=60.0)
    try:
        assert wait_for(lambda: anomalies(agent), timeout=15, what="anomaly after the restart") == expected
        judged = judged_after_restart(agent.db)
        assert len(judged) == 12 and judged == judged_after_restart(tmp_path / "whole" / "events.db")
        log = agent.log_tail(1_000_000)
        assert '"state_restored"' in log and '"warm_start"' not in log
        assert len(_snapshot_rows(agent)) == 1 and _snapshot_rows(agent)[0]["restored_at"]
    finally:
        stop_within(agent)
    assert len(_snapshot_rows(agent)) == 2  # and the second stop saved the state again


def test_a_restart_with_other_market_settings_still_resumes_the_sensors(mosquitto, tmp_path):
    expected = uninterrupted(mosquitto, tmp_path / "whole")

    def retune(agent: AgentProcess) -> None:  # read at the next start
        agent.config.write_text(agent.config.read_text() + "\n[market]\nbar_interval = 5.0\n")

    # no capture warm start: without the snapshot's sensor state the detector starts cold and misses the spike
    agent = run_split(mosquitto, tmp_path / "split", "term", warm_start=0.0, snapshot_interval=60.0,
                      before_stop=retune)
    try:
        assert wait_for(lambda: anomalies(agent), timeout=15, what="anomaly after the restart") == expected
        log = [json.loads(line) for line in agent.log_tail(1_000_000).splitlines() if line.startswith("{")]
        restored = next(e for e in log if e["event"] == "state_restored")
        assert restored["fresh"] == "advisor, market, price_alerts, risk (settings changed in [market])"
    finally:
        stop_within(agent)


def test_a_state_whose_settings_changed_warms_up_from_the_captures_before_the_snapshot(mosquitto, tmp_path):
    expected = uninterrupted(mosquitto, tmp_path / "whole")

    def retune(agent: AgentProcess) -> None:
        agent.config.write_text(agent.config.read_text().replace("[anomaly]\n", "[anomaly]\nlevel_span = 25.0\n"))

    # the detector starts fresh under its new setting; it learns the 40 readings before the stop from the captures
    # (with only the 10 after the restart it would still be in its warm-up of 20 at the spike)
    agent = run_split(mosquitto, tmp_path / "split", "term", warm_start=3600.0, snapshot_interval=60.0,
                      before_stop=retune)
    try:
        assert wait_for(lambda: anomalies(agent), timeout=15, what="anomaly after the restart") == expected
        log = [json.loads(line) for line in agent.log_tail(1_000_000).splitlines() if line.startswith("{")]
        assert next(e for e in log if e["event"] == "state_restored")["fresh"] == \
            "anomaly (settings changed in [anomaly])"
        assert next(e for e in log if e["event"] == "state_prewarmed")["states"] == ["anomaly"]
    finally:
        stop_within(agent)


def test_a_killed_agent_resumes_from_its_last_snapshot_and_the_captures_after_it(mosquitto, tmp_path):
    expected = uninterrupted(mosquitto, tmp_path / "whole")
    # a periodic snapshot (every 5 s) after the first 20 readings; the kill comes right after 20 more, once they
    # are acknowledged: a message consumed but not acknowledged is redelivered after a kill, and a detector
    # learns its reading twice (at-least-once delivery), which would make this run differ for another reason
    metrics = f"127.0.0.1:{free_port()}"

    def acknowledged(agent: AgentProcess) -> None:
        wait_for(lambda: scrape(f"http://{metrics}/metrics").get("edgewatch_messages_done_total", 0) >= 40,
                 timeout=15, what="40 readings acknowledged")

    agent = run_split(mosquitto, tmp_path / "split", "kill", warm_start=0.0, snapshot_interval=5.0, pause_after=20,
                      pause=lambda agent: wait_for(lambda: _snapshot_rows(agent), timeout=15, what="a snapshot"),
                      before_stop=acknowledged, settings={"metrics": {"listen": metrics}})
    try:
        assert wait_for(lambda: anomalies(agent), timeout=15, what="anomaly after the restart") == expected
        judged = judged_after_restart(agent.db)
        assert len(judged) == 12 and judged == judged_after_restart(tmp_path / "whole" / "events.db")
        log = [json.loads(line) for line in agent.log_tail(1_000_000).splitlines() if line.startswith("{")]
        restored = next(e for e in log if e["event"] == "state_restored")
        warm = next(e for e in log if e["event"] == "warm_start")  # the 20 readings after the snapshot, re-run
        assert warm["after_snapshot"] == restored["snapshot"]
    finally:
        stop_within(agent)


def test_prewarm_takes_only_the_states_a_snapshot_could_not_give_and_a_failure_costs_only_warmth(tmp_path,
                                                                                                monkeypatch):
    from edgewatch.agent.commands import run as run_command
    from edgewatch.agent.timeutil import utcnow

    from tests.agent.test_replay import readings, write_capture

    msgs = readings(utcnow() - timedelta(minutes=20), sensors=2, n=300)
    write_capture(tmp_path / "cap", msgs)
    cfg = Config()
    cfg.record.path, cfg.record.warm_start = str(tmp_path / "cap"), 3600.0
    kept = object()
    water = msgs[400][0]  # two sensors a second: the snapshot holds 201 readings of each; the rest run after it
    book = StateBook({"health": kept}, water=water, stale={"anomaly": ["anomaly"]})
    done = run_command.prewarm(book, cfg, None)
    assert done is not None and "anomaly" in done["states"] and "health" not in done["states"]
    assert done["messages"] == 402  # the sensor readings up to the watermark
    assert book.keep("health", object()) is kept  # the snapshot's state is not replaced
    detector = book.keep("anomaly", object())
    assert len(detector) == 2 and detector.m[:2, anomaly.N].tolist() == [201.0, 201.0]  # the captures up to `water`

    # a market setting changed: the market side warms up from market feeds alone, not the sensor readings
    market = StateBook({"anomaly": kept, "health": kept}, water=water, stale={"market": ["market"]})
    done = run_command.prewarm(market, cfg, None)
    assert done["messages"] == 0 and "market" in done["states"] and market.keep("anomaly", object()) is kept

    # a sensor group's settings changed: its sensor's readings are replayed, the other sensor's are not read
    grouped = Config()
    grouped.record = cfg.record
    grouped.anomaly.groups = {"first": SensorGroup(["line0/#"], dataclasses.replace(grouped.anomaly, level_span=25.0))}
    book = StateBook({"anomaly": kept, "health": kept}, water=water, stale={"anomaly:first": ["anomaly:first"]})
    done = run_command.prewarm(book, grouped, None)
    assert done["messages"] == 201 and "anomaly:first" in done["states"] and "anomaly" not in done["states"]
    detector = book.keep("anomaly:first", object())
    assert len(detector) == 1 and detector.m[0, anomaly.N] == 201.0
    assert StatesOf(grouped)("line0/t") == ("anomaly:first", "health")
    grouped.drift.reference = "peers"
    assert StatesOf(grouped)("line1/t") == ("anomaly", "health", "drift_peers")
    grouped.anomaly.groups["first"].settings.counters = ["energy_kwh"]  # the group's last totals too
    assert StatesOf(grouped)("line0/t") == ("anomaly:first", "health", "counters:first", "drift_peers")
    # a health group that judges its sensors against their usual day needs no peers' sums; the rest still do
    grouped.health.groups = {"rooms": SensorGroup(["line1/#"], dataclasses.replace(grouped.health,
                                                                                  drift_reference="daily"))}
    assert StatesOf(grouped)("line1/t") == ("anomaly", "health:rooms")
    assert StatesOf(grouped)("line0/t") == ("anomaly:first", "health", "counters:first", "drift_peers")

    @csp.graph
    def broken(source: object, cfg: Config, book: object):
        raise RuntimeError("no")

    monkeypatch.setattr(run_command, "learn_graph", broken)
    book = StateBook({"health": kept}, water=water, stale={"anomaly": ["anomaly"]})
    assert run_command.prewarm(book, cfg, None) is None
    fresh = object()
    assert book.keep("anomaly", fresh) is fresh
