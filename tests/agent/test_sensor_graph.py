"""The sensor graph end to end: anomaly, health and maintenance events merged per cycle; data-driven events
(all but the stale timer's) are the same however the input is batched (live ingest and replay batch
differently) and however long the engine runs past the last reading (a replay stops there, live does not)."""

from __future__ import annotations

from datetime import datetime, timedelta

import csp
from edgewatch.agent.analytics.topology import sensor_graph
from edgewatch.agent.config import Config
from edgewatch.agent.records import SensorReading
from edgewatch.agent.testing.simulator import SimConfig, Simulator, to_batches

T0 = datetime(2026, 3, 2, 8, 0)


def run(feed: list, cfg: Config, end: float) -> list[list]:
    @csp.graph
    def g():
        csp.add_graph_output("events", sensor_graph(csp.curve(list[SensorReading], feed), cfg))

    out = csp.run(g, starttime=T0, endtime=timedelta(seconds=end))
    return [evs for _, evs in out.get("events", [])]


def stale_driven(e) -> bool:
    """Found by the engine-time sweep (a silent sensor), or the clear of such a flag."""
    return (e.kind == "health" and e.data["why"] == "stale") or (
        e.kind == "maintenance" and "stale" in e.data["reasons"])


def data_driven(events) -> list[tuple]:
    return sorted((e.event_id, e.ts, e.kind, e.severity) for e in events if not stale_driven(e))


def test_sensor_graph_merges_every_sensor_kind_and_is_batching_invariant():
    cfg = Config()
    sim = Simulator(SimConfig(sensors=14, symbols=0, duration=420, seed=2, fault_fraction=1.0), T0)
    msgs = list(sim.messages())
    fine = [e for evs in run(to_batches(msgs, cfg, window=0.01)["sensor"], cfg, 420) for e in evs]
    # 3-second batches hold several readings of each sensor, stamped up to 3 s after them; the longer run
    # goes on ten minutes past the last reading
    coarse = [e for evs in run(to_batches(msgs, cfg, window=3.0)["sensor"], cfg, 1020) for e in evs]
    kinds = {(e.kind, e.data.get("why")) for e in fine}
    assert {("anomaly", None), ("health", "periodic"), ("health", "band"), ("health", "stale")} <= kinds
    assert {"raised", "cleared"} <= {e.data["state"] for e in fine if e.kind == "maintenance" and not stale_driven(e)}
    assert data_driven(fine) == data_driven(coarse)
    assert len({e.event_id for e in fine}) == len(fine) and len({e.event_id for e in coarse}) == len(coarse)
    for e in fine:
        assert e.key in sim.sensor_ids and e.severity in ("info", "warning", "critical") and e.message


def test_first_tick_and_a_gap_then_out_of_order_readings():
    cfg = Config()
    r = lambda s, t: SensorReading(sensor_id="x", ts=T0 + timedelta(seconds=s), metrics={"temperature": t}, attrs={})
    feed = [(T0 + timedelta(seconds=1), [r(1, 20.0)]), (T0 + timedelta(seconds=500), [r(500, 21.0), r(3, 99.0)])]
    events = [e for evs in run(feed, cfg, 501) for e in evs]
    stale = [e for e in events if e.kind == "maintenance"]
    assert [(e.data["state"], e.data["reasons"]) for e in stale] == [("raised", ["stale"]), ("cleared", ["stale"])]
