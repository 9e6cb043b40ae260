"""Sensor health in historical mode: the score's components, periodic and band-crossing events, staleness;
data-driven events the same however the input is batched and however long the engine runs."""

from __future__ import annotations

import csv
import random
from datetime import datetime, timedelta
from pathlib import Path

import csp
import pytest
from edgewatch.agent.analytics.health import (
    Params,
    SensorHealth,
    SensorStates,
    parse_bands,
    parse_ranges,
    sensor_health,
)
from edgewatch.agent.config import ConfigError, DriftConfig, HealthConfig, MaintenanceConfig
from edgewatch.agent.ops import metrics
from edgewatch.agent.records import MetricScore, SensorReading, event_id
from edgewatch.agent.testing.plugin import require

T0 = datetime(2026, 3, 2, 8, 0)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def reading(sid: str, s: float, **metrics) -> SensorReading:
    status = metrics.pop("status", None)
    return SensorReading(sensor_id=sid, ts=at(s), metrics=metrics, attrs={"status": status} if status else {})


def healthy(sid: str, n: int, start: float = 0.0, seed: int = 0) -> list[SensorReading]:
    rng = random.Random(seed)
    return [reading(sid, start + i, temperature=21 + rng.gauss(0, 0.1), humidity=45 + rng.gauss(0, 0.5),
                    battery=90.0) for i in range(n)]


def run_health(readings: list, scores: list = (), h: HealthConfig | None = None, end: float | None = None,
               m: MaintenanceConfig | None = None, batches: list | None = None) -> list:
    """Events of `sensor_health` over the readings, one batch per reading at its own time unless `batches`."""
    h = h or HealthConfig()
    m = m or MaintenanceConfig()
    end = end if end is not None else max(r.ts for r in readings).timestamp() - T0.timestamp() + 1
    batches = batches or [(r.ts, [r]) for r in sorted(readings, key=lambda r: r.ts)]
    score_batches = [(s.ts, [s]) for s in scores]

    @csp.graph
    def g():
        sc = csp.curve(list[MetricScore], score_batches) if scores else csp.null_ts(list[MetricScore])
        csp.add_graph_output("events", sensor_health(csp.curve(list[SensorReading], batches), sc, h, m))

    out = csp.run(g, starttime=T0, endtime=timedelta(seconds=end))
    return [e for _, evs in out.get("events", []) for e in evs]


def test_config_strings_parse_and_bad_ones_name_the_key():
    assert parse_ranges("temperature=-40:85, humidity=0:100") == {
        "temperature": (-40.0, 85.0), "humidity": (0.0, 100.0)}
    assert parse_bands("0.4,0.9") == (0.4, 0.9)
    for bad in ("temperature=1", "x=5:1", "nonsense", "=1:2", "x=0:1,x=0:2"):
        with pytest.raises(ConfigError, match="health.ranges"):
            parse_ranges(bad)
    with pytest.raises(ConfigError, match="health.bands"):
        parse_bands("0.9,0.4")


def test_healthy_sensor_gets_periodic_health_events_with_every_component():
    evs = run_health(healthy("a/1", 200), h=HealthConfig(interval=60.0))
    assert [e.kind for e in evs] == ["health"] * 3  # at 60, 120 and 180 s, nothing else
    e = evs[0]
    assert e.ts == at(60) and e.key == "a/1" and e.severity == "info"
    assert e.data["why"] == "periodic" and e.data["band"] == "good" and e.data["score"] == 1.0
    assert set(e.data["components"]) == {"freshness", "anomaly", "stuck", "drift", "noise", "range", "battery"}
    assert all(0.0 <= v <= 1.0 for v in e.data["components"].values())
    assert e.data["readings"] == 61 and e.data["interval_s"] == pytest.approx(1.0)


def test_out_of_range_readings_drop_the_score_and_raise_a_flag():
    rs = healthy("a/1", 60) + [reading("a/1", 60 + i, temperature=-127.0, humidity=45.0, battery=90.0)
                               for i in range(10)]
    evs = run_health(rs, h=HealthConfig(interval=3600.0, ranges="temperature=-40:85"))
    flags = [e for e in evs if e.kind == "maintenance"]
    assert flags and flags[0].data["reasons"] == ["out_of_range"] and flags[0].data["state"] == "raised"
    bands = [e for e in evs if e.kind == "health"]
    assert bands and bands[-1].data["why"] == "band" and bands[-1].data["band"] == "poor"
    assert bands[-1].data["components"]["range"] < 0.45 and bands[-1].severity == "critical"
    assert all(e.ts >= at(60) for e in evs)  # data-driven: stamped with the readings' time


def skab_readings(shared_data: Path, name: str) -> list[SensorReading]:
    """One SKAB recording as readings of one sensor (1 Hz, eight metrics in the testbed's own units)."""
    path = shared_data / "skab-dev" / name
    require("SKAB dev data", path.is_file(), f"{path} not found")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    return [SensorReading(sensor_id="skab/pump", ts=datetime.fromisoformat(row.pop("datetime")),
                          metrics={k: float(v) for k, v in row.items()}, attrs={}) for row in rows]


def test_no_range_is_assumed_from_a_metric_name(shared_data):
    """SKAB's normal recording: pressure in bar (around 0, below the 300 hPa a name-keyed range would want),
    motor temperature around 90 °C. Without configured ranges nothing of it is out of range."""
    assert HealthConfig().ranges == "" and parse_ranges("") == {}
    rs = skab_readings(shared_data, "anomaly-free/anomaly-free.csv")
    assert min(r.metrics["Pressure"] for r in rs) < 1.0 and max(r.metrics["Temperature"] for r in rs) > 85.0
    evs = run_health(rs, h=HealthConfig(interval=3600.0))
    assert not [e for e in evs if e.kind == "maintenance" and "out_of_range" in e.data["reasons"]]
    assert all(e.data["out_of_range_rate"] == 0.0 for e in evs if e.kind == "health")


def test_bad_status_attribute_and_low_battery():
    rs = healthy("a/1", 40) + [reading("a/1", 40 + i, temperature=21.0 + 0.1 * (i % 2), humidity=45.0 + 0.3 * (i % 3),
                                       battery=9.0, status="low_battery") for i in range(5)]
    evs = run_health(rs, h=HealthConfig(interval=3600.0))
    flag = next(e for e in evs if e.kind == "maintenance")
    assert flag.data["reasons"] == ["low_battery"] and flag.ts == at(40)
    band = [e for e in evs if e.kind == "health"][-1]
    assert band.data["components"]["status"] == 0.0 and band.data["components"]["battery"] == 0.0
    assert band.data["status"] == "low_battery" and band.data["battery"] == 9.0


def test_stale_sensor_is_flagged_by_the_timer_and_cleared_when_it_returns():
    h = HealthConfig(interval=60.0, stale_factor=10.0, stale_min=5.0)
    rs = healthy("a/1", 50) + healthy("a/1", 20, start=200)
    evs = run_health(rs, h=h, end=230)
    flags = [e for e in evs if e.kind == "maintenance"]
    assert [(e.data["state"], e.data["reasons"]) for e in flags] == [("raised", ["stale"]), ("cleared", ["stale"])]
    # found by the engine-time sweep, stamped when the data went stale: stale_factor x interval after the last
    # reading; cleared by the reading
    assert flags[0].ts == at(49 + 10) and flags[1].ts == at(200)
    # its health is reported once, at that moment, with freshness 0; then nothing while it stays silent
    silent = [e for e in evs if e.kind == "health" and e.data["why"] == "stale"]
    assert [e.ts for e in silent] == [at(59)]
    assert all(e.data["components"]["freshness"] == 0.0 and e.data["band"] == "poor" for e in silent)
    assert silent[0].event_id == event_id("health", "a/1", at(59), "stale")
    # ... without moving the band the readings drive: no crossing back when it returns, only the flag clears
    back = [e for e in evs if e.kind == "health" and e.data["why"] != "stale"]
    assert [(e.data["why"], e.ts) for e in back] == [("periodic", at(200))]  # the first reading of its bucket
    assert back[0].event_id == event_id("health", "a/1", at(180), "periodic") and back[0].data["band"] == "good"


def test_anomaly_scores_count_toward_the_anomaly_rate_but_steady_metrics_do_not():
    rs = healthy("a/1", 80)
    hits = [MetricScore(sensor_id="a/1", metric="temperature", ts=at(60 + i), value=21.0, score=0.95) for i in range(5)]
    evs = run_health(rs, scores=hits, h=HealthConfig(interval=3600.0))
    burst = [e for e in evs if e.kind == "maintenance" and e.data["state"] == "raised"]
    assert burst and burst[0].data["reasons"] == ["anomaly_burst"]
    battery_hits = [MetricScore(sensor_id="a/1", metric="battery", ts=at(60 + i), value=90.0, score=1.0)
                    for i in range(5)]
    assert [e for e in run_health(rs, scores=battery_hits, h=HealthConfig(interval=3600.0))
            if e.kind == "maintenance"] == []


def test_out_of_order_and_first_readings_do_not_break_anything():
    rs = healthy("a/1", 40)
    late = reading("a/1", 10.5, temperature=21.0, humidity=45.0, battery=90.0)
    batches = sorted([(r.ts, [r]) for r in rs] + [(at(40), [late])], key=lambda b: b[0])
    h = HealthConfig(interval=30.0, stale_min=5.0, stale_factor=10.0)
    evs = run_health(rs + [late], h=h, end=61, batches=batches)
    assert [(e.kind, e.data["why"] if e.kind == "health" else e.data["state"]) for e in evs] == [
        ("health", "periodic"), ("maintenance", "raised"), ("health", "stale")]
    assert evs[0].ts == at(30) and evs[0].data["readings"] == 31  # the first reading starts no event
    assert evs[2].data["readings"] == 41  # the late reading counts as a value ...
    assert evs[2].data["last_reading"] == "2026-03-02T08:00:39Z" and evs[2].ts == at(49)  # ... not as a sign of life


def ids(events, why: str) -> list[tuple]:
    return sorted((e.event_id, e.ts) for e in events if e.kind == "health" and e.data["why"] == why)


def test_periodic_health_follows_data_time_whatever_the_batching_and_the_engine_clock():
    """One periodic event per sensor and bucket of data time, with the first reading in the bucket, keyed on the
    bucket: fine or coarse batches, an engine clock far ahead of the data, a run past the last reading: same ids."""
    rng = random.Random(5)
    rs = []
    for sid in ("a/1", "b/2"):
        t = rng.uniform(0, 3)
        while t < 400:  # irregular reporting: 0.2 to 4 s apart
            rs.append(reading(sid, t, temperature=21 + rng.gauss(0, 0.1), humidity=45 + rng.gauss(0, 0.5)))
            t += rng.uniform(0.2, 4.0)
    rs.sort(key=lambda r: r.ts)
    h = HealthConfig(interval=30.0)
    fine = run_health(rs, h=h)
    periodic = ids(fine, "periodic")
    assert len(periodic) == 2 * 13  # buckets starting at 30, 60, ..., 390 for each sensor
    for sid in ("a/1", "b/2"):
        mine = [r.ts for r in rs if r.sensor_id == sid]
        for k in range(1, 14):
            start = at(30 * k)
            first = min(t for t in mine if t >= start)  # stamped with the first reading of the bucket
            assert (event_id("health", sid, start, "periodic"), first) in periodic
    # 20-second batches handed to the engine at the batch's end: the engine clock runs up to 20 s ahead of
    # the data, so the stale timer fires in between; the data-driven events do not move
    coarse = {}
    for r in rs:
        coarse.setdefault(at(20 * (int((r.ts - T0).total_seconds()) // 20 + 1)), []).append(r)
    late_clock = run_health(rs, h=h, batches=sorted(coarse.items()), end=1000)
    assert ids(late_clock, "stale")  # the timer did fire (and the engine ran far past the last reading) ...
    for why in ("periodic", "band"):
        assert ids(late_clock, why) == ids(fine, why)  # ... and changed nothing the data drives
    assert ids(run_health(rs, h=h, end=1000), "periodic") == periodic


def test_bad_health_and_market_keys_fail_when_the_graphs_are_wired():
    from edgewatch.agent.analytics.topology import market_graph, sensor_graph
    from edgewatch.agent.config import Config
    from edgewatch.agent.records import Pnl, Position, Quote, Sentiment, Trade

    cfg = Config()
    cfg.maintenance.drift_clear_z = 9.0
    with pytest.raises(ConfigError, match="maintenance.drift_clear_z"):
        csp.build_graph(sensor_graph, csp.null_ts(list[SensorReading]), cfg)
    cfg = Config()
    cfg.market.bar_interval = 0.0
    with pytest.raises(ConfigError, match="market.bar_interval"):
        csp.build_graph(market_graph, csp.null_ts(list[Trade]), csp.null_ts(list[Quote]), csp.null_ts(list[Position]),
                        csp.null_ts(list[Pnl]), csp.null_ts(list[Sentiment]), cfg)


def test_a_silent_fleet_is_reported_once_then_forgotten():
    """Every dead sensor: one stale flag and one health report, then silence; forgotten after forget_after."""
    h = HealthConfig(interval=60.0, stale_factor=10.0, stale_min=5.0, forget_after=3600.0)
    fleet = [r for i in range(20) for r in healthy(f"dead/{i}", 10)]
    evs = run_health(fleet, h=h, end=4000)
    per_sensor = {}
    for e in evs:
        if e.key.startswith("dead/"):
            per_sensor.setdefault(e.key, []).append((e.kind, e.data.get("why") or e.data.get("state")))
    assert len(per_sensor) == 20
    assert all(v == [("maintenance", "raised"), ("health", "stale")] for v in per_sensor.values()), per_sensor
    # forgotten after an hour of silence: a sensor that comes back later starts afresh (no "cleared" flag)
    back = run_health(fleet + healthy("dead/0", 5, start=4000), h=h, end=4010)
    assert not [e for e in back if e.key == "dead/0" and e.kind == "maintenance" and e.data["state"] == "cleared"]
    kept = run_health(fleet + healthy("dead/0", 5, start=3000), h=h, end=3010)  # back before the horizon
    assert [e for e in kept if e.key == "dead/0" and e.kind == "maintenance" and e.data["state"] == "cleared"]


def test_sensor_cap_forgets_the_longest_silent_and_counts_it():
    h = HealthConfig(interval=3600.0, max_sensors=5)
    before = metrics.REGISTRY.get_sample_value("edgewatch_state_evictions_total", {"state": "health"}) or 0.0
    rs = [reading(f"s/{i}", float(i), temperature=21.0) for i in range(12)]
    rs += [reading("s/11", 12.0 + i, temperature=21.0 + 0.01 * i) for i in range(40)]
    run_health(rs, h=h, end=60)
    after = metrics.REGISTRY.get_sample_value("edgewatch_state_evictions_total", {"state": "health"})
    assert after - before == 7  # 12 sensors through a cap of 5
    assert metrics.REGISTRY.get_sample_value("edgewatch_state_keys", {"state": "health"}) == 5


def test_invented_metric_names_are_bounded_by_max_series():
    """Whoever can publish can invent metric names as well as sensor ids: health tracks at most `max_series` of
    them over all its sensors, forgetting the longest-silent sensors first; a sensor that holds them all starts no
    more (an outsider's flood of names grew the agent by gigabytes)."""
    h = HealthConfig(max_series=50)
    p = Params(h, MaintenanceConfig(), DriftConfig())
    index = SensorStates(h.max_sensors, "health", h.max_series)

    def feed(sid: str, names: list[str], s: float) -> SensorHealth:
        state = index.get(sid)
        if state is None:
            state = index[sid] = SensorHealth(sid, at(s), p)
        state.observe(SensorReading(sensor_id=sid, ts=at(s), metrics=dict.fromkeys(names, 1.0), attrs={}), at(s),
                      False, p, None, index)
        return state

    feed("quiet", ["temperature"], 0.0)
    for i in range(30):
        loud = feed("loud", [f"m{i}_{j}" for j in range(10)], 1.0 + i)
    assert index.series == len(loud.metrics) == 50 and "quiet" not in index
    assert feed("next", ["temperature"], 40.0).metrics and "loud" not in index and index.series == 1
