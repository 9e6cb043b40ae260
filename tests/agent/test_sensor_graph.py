"""The sensor graph end to end: anomaly, health and maintenance events merged per cycle; data-driven ids are
the same however the input is batched (live ingest and replay batch differently)."""

from __future__ import annotations

from datetime import datetime, timedelta

import csp

from agent.config import Config
from agent.records import SensorReading
from agent.sensor_graph import sensor_graph
from agent.simulator import SimConfig, Simulator, to_batches

T0 = datetime(2026, 3, 2, 8, 0)


def run(feed: list, cfg: Config, end: float) -> list[list]:
    @csp.graph
    def g():
        csp.add_graph_output("events", sensor_graph(csp.curve(list[SensorReading], feed), cfg))

    out = csp.run(g, starttime=T0, endtime=timedelta(seconds=end))
    return [evs for _, evs in out.get("events", [])]


def data_driven(events) -> list[str]:
    """Events whose time is the data's: all but the timer's periodic health and staleness."""
    return sorted(e.event_id for e in events
                  if not (e.kind == "health" and e.data["why"] == "periodic")
                  and not (e.kind == "maintenance" and "stale" in e.data["reasons"]))


def test_sensor_graph_merges_every_sensor_kind_and_is_batching_invariant():
    cfg = Config()
    sim = Simulator(SimConfig(sensors=14, symbols=0, duration=420, seed=2, fault_fraction=1.0), T0)
    msgs = list(sim.messages())
    fine = run(to_batches(msgs, cfg, window=0.01)["sensor"], cfg, 420)
    coarse = run(to_batches(msgs, cfg, window=0.5)["sensor"], cfg, 420)
    events = [e for evs in fine for e in evs]
    assert {"anomaly", "health", "maintenance"} <= {e.kind for e in events}
    assert data_driven(events) == data_driven(e for evs in coarse for e in evs)
    assert len({e.event_id for e in events}) == len(events)
    for e in events:
        assert e.key in sim.sensor_ids and e.severity in ("info", "warning", "critical") and e.message


def test_first_tick_and_a_gap_then_out_of_order_readings():
    cfg = Config()
    r = lambda s, t: SensorReading(sensor_id="x", ts=T0 + timedelta(seconds=s), metrics={"temperature": t}, attrs={})
    feed = [(T0 + timedelta(seconds=1), [r(1, 20.0)]), (T0 + timedelta(seconds=500), [r(500, 21.0), r(3, 99.0)])]
    events = [e for evs in run(feed, cfg, 501) for e in evs]
    stale = [e for e in events if e.kind == "maintenance"]
    assert [(e.data["state"], e.data["reasons"]) for e in stale] == [("raised", ["stale"]), ("cleared", ["stale"])]
