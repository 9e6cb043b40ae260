"""`[anomaly.groups.NAME]`: sensors with anomaly settings of their own, in one agent. A grouped graph gives each
sensor exactly the events it would get from a graph run with its group's settings alone; the groups inherit
`[anomaly]` (file and environment); their state is kept apart; their thresholds are live on reload."""

from __future__ import annotations

import dataclasses
import math
import random
import time
from datetime import datetime, timedelta

import csp
import httpx
from edgewatch.agent import config
from edgewatch.agent.analytics.sensor_groups import GroupOf
from edgewatch.agent.analytics.snapshot import StateBook, config_hashes
from edgewatch.agent.analytics.topology import sensor_graph
from edgewatch.agent.cli import main
from edgewatch.agent.commands.run import LIVE_KEYS, _apply_live, snapshot_identity
from edgewatch.agent.eventlog.snapshots import SnapshotWriter, restore
from edgewatch.agent.eventlog.store import Store
from edgewatch.agent.records import SensorReading
from edgewatch.agent.testing.plugin import AgentProcess, publish_many, wait_for_events
from edgewatch.common.ports import free_port

T0 = datetime(2026, 3, 2, 8, 0)
T1 = time.time() - 3600  # live readings an hour old: never "in the future"
GROUPS = """
[anomaly]
critical = 0.98

[anomaly.groups.compressors]
sensors = ["plant1/+/comp", "plant2/#"]
change_hold = 0
change_z = 5.0
critical = 0.95

[anomaly.groups.plant1]
sensors = ["plant1/#"]
change_z = 4.0
"""


def load(tmp_path, text: str = GROUPS, environ: dict | None = None) -> config.Config:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return config.load(path, environ=environ or {})


def test_a_group_takes_anomaly_with_its_own_keys_over_it(tmp_path):
    cfg = load(tmp_path, environ={"EDGEWATCH_ANOMALY_WARMUP": "50"})
    comp, plant1 = cfg.anomaly.groups["compressors"], cfg.anomaly.groups["plant1"]
    assert list(cfg.anomaly.groups) == ["compressors", "plant1"]  # file order: the first match wins
    assert comp.sensors == ["plant1/+/comp", "plant2/#"]
    assert (comp.settings.change_hold, comp.settings.change_z, comp.settings.critical) == (0.0, 5.0, 0.95)
    assert (plant1.settings.change_z, plant1.settings.change_hold, plant1.settings.critical) == (4.0, 5.0, 0.98)
    assert comp.settings.warmup == plant1.settings.warmup == cfg.anomaly.warmup == 50  # the environment too
    assert comp.settings.groups == {} and cfg.anomaly.change_hold == 5.0


def test_a_sensor_takes_the_first_group_whose_filter_matches(tmp_path):
    group_of = GroupOf(load(tmp_path).anomaly, cache=2)
    assert [group_of.index(s) for s in ("plant1/a/comp", "plant1/a/pump", "plant2/x/y", "plant2", "plant3/a",
                                         "plant1/a/comp/x")] == [0, 1, 0, 0, 2, 1]
    assert group_of.index.cache_info().currsize == 2  # bounded: anyone who can publish can invent sensor ids


def faulty(sensor_id: str, seed: int) -> list[SensorReading]:
    """Three metrics at 1 Hz; one is pushed 3 noise widths for 200 s, twice (a valve left open twice)."""
    rnd = random.Random(seed)
    out = []
    for i in range(3000):
        metrics = {f"m{j}": 20.0 + rnd.gauss(0, 1) for j in range(3)}
        metrics["m1"] += 3.0 if 1200 <= i < 1400 or 2200 <= i < 2400 else 0.0
        out.append(SensorReading(sensor_id=sensor_id, ts=T0 + timedelta(seconds=i), metrics=metrics, attrs={}))
    return out


def events(readings: list[SensorReading], cfg: config.Config, states: StateBook | None = None) -> list:
    by_time: dict[datetime, list[SensorReading]] = {}
    for rd in readings:
        by_time.setdefault(rd.ts, []).append(rd)

    @csp.graph
    def g():
        feed = csp.curve(list[SensorReading], sorted(by_time.items()))
        csp.add_graph_output("events", sensor_graph(feed, cfg, states))

    out = csp.run(g, starttime=T0, endtime=timedelta(seconds=3001))
    return sorted((e.key, e.kind, e.event_id, e.severity, str(e.data)) for _, evs in out.get("events", []) for e in evs)


def alone(anomaly: config.AnomalyConfig) -> config.Config:
    """The defaults with `anomaly`, without its groups, as the whole [anomaly] section."""
    own = config.Config()
    own.anomaly = dataclasses.replace(anomaly, groups={})
    return own


def test_each_sensor_gets_the_events_of_its_groups_settings(tmp_path):
    cfg = load(tmp_path)
    comp, plant1 = cfg.anomaly.groups["compressors"], cfg.anomaly.groups["plant1"]
    a, b, c = faulty("plant1/a/comp", 1), faulty("plant1/b/pump", 2), faulty("plant3/pump", 3)
    separately = events(a, alone(comp.settings)) + events(b, alone(plant1.settings)) + events(c, alone(cfg.anomaly))
    grouped = events(a + b + c, cfg)
    assert grouped == sorted(separately)
    assert {key for key, kind, *_ in grouped if kind == "anomaly"} == {"plant1/a/comp", "plant1/b/pump", "plant3/pump"}
    # the settings matter: under [anomaly] alone the compressor and plant1's pump raise other events
    ungrouped = events(a + b + c, alone(cfg.anomaly))
    assert {key for key, *_ in set(grouped) ^ set(ungrouped)} == {"plant1/a/comp", "plant1/b/pump"}


def test_each_group_keeps_its_own_state(tmp_path):
    book = StateBook()
    events(faulty("plant1/a/comp", 1) + faulty("plant3/pump", 3), load(tmp_path), book)
    keys = book.keys()
    assert keys["anomaly:compressors"] == 3 and keys["anomaly"] == 3 and keys["anomaly:plant1"] == 0


def test_a_group_whose_settings_changed_starts_fresh_and_the_rest_resume(tmp_path):
    cfg = load(tmp_path)
    book = StateBook()
    events(faulty("plant1/a/comp", 1) + faulty("plant1/b/pump", 2) + faulty("plant3/pump", 3), cfg, book)
    book.water = T0 + timedelta(seconds=3000)
    store = Store(str(tmp_path / "events.db"))
    SnapshotWriter(store, snapshot_identity(cfg, "gw1"), keep=1).save(book)
    saved = sorted(book.keys())
    assert saved == ["anomaly", "anomaly:compressors", "anomaly:plant1", "health"]

    retuned = load(tmp_path, GROUPS.replace("change_z = 5.0", "change_z = 5.5"))
    restored, row = restore(store, snapshot_identity(retuned, "gw1"))
    assert row is not None and restored.restored == ["anomaly", "anomaly:plant1", "health"]
    assert snapshot_identity(retuned, "gw1").stale(row) == {"anomaly:compressors": ["anomaly:compressors"]}
    # the retuned group's state restarts; the other group's and the fleet's resume as they were
    new = object()
    assert restored.keep("anomaly:compressors", new) is new
    assert len(restored.keep("anomaly", new)) == book.keys()["anomaly"] == 3

    moved = load(tmp_path, GROUPS.replace('"plant2/#"', '"plant9/#"'))  # membership: every anomaly state is stale
    restored, row = restore(store, snapshot_identity(moved, "gw1"))
    assert row is not None and restored.restored == ["health"]
    store.close()


def test_group_thresholds_are_live_and_other_group_changes_need_a_restart(tmp_path):
    live = load(tmp_path)
    hashes = config_hashes(live, LIVE_KEYS)
    new = load(tmp_path, GROUPS.replace("critical = 0.95", "critical = 0.9\nthreshold = 0.88"))
    assert config_hashes(new, LIVE_KEYS) == hashes  # a live key does not make the saved state stale
    applied, needs_restart = [], []
    _apply_live("anomaly", live.anomaly, new.anomaly, LIVE_KEYS["anomaly"], applied, needs_restart)
    assert sorted(applied) == ["anomaly.groups.compressors.critical", "anomaly.groups.compressors.threshold"]
    assert needs_restart == [] and live.anomaly.groups["compressors"].settings.critical == 0.9
    moved = load(tmp_path, GROUPS.replace('"plant2/#"', '"plant9/#"').replace("change_z = 4.0", "change_z = 4.5"))
    assert config_hashes(moved, LIVE_KEYS)["anomaly"] != hashes["anomaly"]
    applied, needs_restart = [], []
    _apply_live("anomaly", live.anomaly, moved.anomaly, LIVE_KEYS["anomaly"], applied, needs_restart)
    assert (applied, needs_restart) == ([], ["anomaly.groups"])
    assert live.anomaly.groups["compressors"].sensors == ["plant1/+/comp", "plant2/#"]


def test_check_config_lists_the_groups_in_the_order_they_are_tried(tmp_path, capsys):
    path = tmp_path / "agent.toml"
    path.write_text(GROUPS + HEALTH_GROUPS)
    assert main(["check-config", str(path)]) == 0
    lines = [ln.strip() for ln in capsys.readouterr().out.splitlines() if " group " in ln]
    assert lines == ["anomaly  group compressors: plant1/+/comp, plant2/#", "anomaly  group plant1: plant1/#",
                     "health   group bar: plant1/#"]


def test_a_running_agent_judges_each_group_with_its_settings(mqtt_broker, tmp_path):
    """The real service: a sensor of the group `hot` gets its threshold and keeps its state apart (metrics)."""
    port = free_port()
    agent = AgentProcess(mqtt_broker, tmp_path / "agent", {
        "anomaly": {"warmup": 20, "groups": {"hot": {"sensors": ["plant1/+"], "threshold": 0.95}}},
        "metrics": {"listen": f"127.0.0.1:{port}"}}).start()
    try:
        agent.wait_ready(mqtt_broker)
        calm = [{"temperature": 20.0 + 0.2 * math.sin(i / 3.0) + 0.01 * (i % 7)} for i in range(60)]
        for sensor in ("plant1/a", "plant2/a"):
            publish_many(mqtt_broker, [(f"sensors/{sensor}", {"ts": T1 + i, **r}) for i, r in enumerate(calm)]
                         + [(f"sensors/{sensor}", {"ts": T1 + 60, "temperature": 95.0})])
        found = wait_for_events(agent.db, 2, kinds=["anomaly"], timeout=20)
        assert {e["key"]: e["data"]["threshold"] for e in found} == {"plant1/a": 0.95, "plant2/a": 0.8}
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert 'edgewatch_state_keys{state="anomaly:hot"} 1.0' in text
        assert 'edgewatch_state_keys{state="anomaly"} 1.0' in text
    finally:
        assert agent.stop() == 0, agent.log_tail()


HEALTH_GROUPS = """
[health]
ranges = "pressure=100:1000"   # kPa, the fleet's unit

[health.groups.bar]
sensors = ["plant1/#"]
ranges = "pressure=0:10"       # plant 1 reports bar
stuck_readings = 50
"""


def pressures(sensor_id: str, level: float, n: int = 600) -> list[SensorReading]:
    rnd = random.Random(sensor_id)
    return [SensorReading(sensor_id=sensor_id, ts=T0 + timedelta(seconds=i),
                          metrics={"pressure": level * (1 + 0.01 * rnd.gauss(0, 1))}, attrs={}) for i in range(n)]


def out_of_range(events_: list) -> set[str]:
    """Sensors with a maintenance flag whose reasons include out_of_range (`data` is the event data's repr)."""
    return {key for key, kind, *_, data in events_ if kind == "maintenance" and "'out_of_range'" in data}


def test_a_health_group_judges_its_sensors_in_their_own_units(tmp_path):
    cfg = load(tmp_path, HEALTH_GROUPS)
    bar = cfg.health.groups["bar"]
    assert (bar.settings.ranges, bar.settings.stuck_readings, bar.settings.interval) == ("pressure=0:10", 50, 60.0)
    plant1, plant2 = pressures("plant1/p", 5.0), pressures("plant2/p", 500.0)
    grouped = events(plant1 + plant2, cfg)
    assert out_of_range(grouped) == set()
    # without the group plant 1's bar readings are out of the fleet's kPa range
    ungrouped = config.Config()
    ungrouped.health = dataclasses.replace(cfg.health, groups={})
    assert out_of_range(events(plant1 + plant2, ungrouped)) == {"plant1/p"}
    # the group's node is the [health] node with the group's settings: the same events as a run of its own
    own = config.Config()
    own.health = dataclasses.replace(bar.settings)
    assert grouped == sorted(events(plant1, own) + events(plant2, ungrouped))
    book = StateBook()
    events(plant1 + plant2, cfg, book)
    assert (book.keys()["health:bar"], book.keys()["health"]) == (1, 1)
