"""Sensor health in historical mode: the score's components, periodic and band-crossing events, staleness."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import csp
import pytest

from agent.config import ConfigError, HealthConfig, MaintenanceConfig
from agent.health import parse_bands, parse_ranges, sensor_health
from agent.records import MetricScore, SensorReading

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
               m: MaintenanceConfig | None = None) -> list:
    h = h or HealthConfig()
    m = m or MaintenanceConfig()
    end = end if end is not None else max(r.ts for r in readings).timestamp() - T0.timestamp() + 1
    batches = [(r.ts, [r]) for r in sorted(readings, key=lambda r: r.ts)]
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
    for bad in ("temperature=1", "x=5:1", "nonsense"):
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
    evs = run_health(rs, h=HealthConfig(interval=3600.0))
    flags = [e for e in evs if e.kind == "maintenance"]
    assert flags and flags[0].data["reasons"] == ["out_of_range"] and flags[0].data["state"] == "raised"
    bands = [e for e in evs if e.kind == "health"]
    assert bands and bands[-1].data["why"] == "band" and bands[-1].data["band"] == "poor"
    assert bands[-1].data["components"]["range"] < 0.45 and bands[-1].severity == "critical"
    assert all(e.ts >= at(60) for e in evs)  # data-driven: stamped with the readings' time


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
    h = HealthConfig(interval=3600.0, stale_factor=10.0, stale_min=5.0)
    rs = healthy("a/1", 50) + healthy("a/1", 20, start=200)
    evs = [e for e in run_health(rs, h=h, end=230) if e.kind == "maintenance"]
    assert [(e.data["state"], e.data["reasons"]) for e in evs] == [("raised", ["stale"]), ("cleared", ["stale"])]
    # raised by the engine-time sweep about stale_factor x interval after the last reading, cleared by the reading
    assert at(49 + 10) <= evs[0].ts <= at(49 + 10 + h.sweep_interval)
    assert evs[1].ts == at(200)


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

    @csp.graph
    def g():
        batches = [(r.ts, [r]) for r in rs] + [(at(40), [late])]
        feed = csp.curve(list[SensorReading], sorted(batches, key=lambda b: b[0]))
        h = HealthConfig(interval=30.0, stale_min=100.0)
        csp.add_graph_output("e", sensor_health(feed, csp.null_ts(list[MetricScore]), h, MaintenanceConfig()))

    out = csp.run(g, starttime=T0, endtime=timedelta(seconds=61))
    evs = [e for _, l in out["e"] for e in l]
    assert [e.data["why"] for e in evs] == ["periodic", "periodic"]
    assert evs[1].data["readings"] == 41  # the late reading counts as a value ...
    assert evs[1].data["last_reading"] == "2026-03-02T08:00:39Z"  # ... but not as a sign of life


def test_bad_health_and_market_keys_fail_when_the_graphs_are_wired():
    from agent.config import Config
    from agent.market_graph import market_graph
    from agent.records import Pnl, Position, Quote, Sentiment, Trade
    from agent.sensor_graph import sensor_graph

    cfg = Config()
    cfg.maintenance.drift_clear_z = 9.0
    with pytest.raises(ConfigError, match="maintenance.drift_clear_z"):
        csp.build_graph(sensor_graph, csp.null_ts(list[SensorReading]), cfg)
    cfg = Config()
    cfg.market.bar_interval = 0.0
    with pytest.raises(ConfigError, match="market.bar_interval"):
        csp.build_graph(market_graph, csp.null_ts(list[Trade]), csp.null_ts(list[Quote]), csp.null_ts(list[Position]),
                        csp.null_ts(list[Pnl]), csp.null_ts(list[Sentiment]), cfg)
