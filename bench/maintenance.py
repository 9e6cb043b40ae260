"""Precision and recall of the maintenance flags against the simulator's ground truth, per reason.

Runs the full sensor graph (anomaly + health + maintenance) in historical mode
over simulated sensors, a share of which get one labelled fault each (every kind
in turn), with the default configuration. Prints ONE JSON line.

    python bench/maintenance.py [--sensors 140] [--duration 900] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import csp  # noqa: E402
from edgewatch.agent.analytics.topology import sensor_graph  # noqa: E402
from edgewatch.agent.config import Config  # noqa: E402
from edgewatch.agent.records import SensorReading  # noqa: E402
from edgewatch.agent.testing.simulator import (  # noqa: E402
    RANGES,
    SimConfig,
    Simulator,
    match_faults,
    to_batches,
)

START = datetime(2026, 1, 1)
GRACE = timedelta(seconds=30)  # a raise up to this long after a fault ends still belongs to it


def run(sensors: int, duration: float, seed: int) -> tuple[list, list, int, int]:
    cfg = Config()
    cfg.health.ranges = RANGES  # the simulated fleet's units: its impossible readings are out_of_range
    sim = Simulator(SimConfig(sensors=sensors, symbols=0, duration=duration, seed=seed, fault_fraction=0.5), START)
    feed = to_batches(sim.messages(), cfg)["sensor"]

    @csp.graph
    def g():
        csp.add_graph_output("events", sensor_graph(csp.curve(list[SensorReading], feed), cfg))

    out = csp.run(g, starttime=START, endtime=timedelta(seconds=duration))
    events = [e for _, evs in out.get("events", []) for e in evs]
    healthy = set(sim.sensor_ids) - {f.key for f in sim.faults}
    false_on_healthy = sum(1 for e in events if e.kind == "maintenance" and e.data["state"] == "raised"
                           and e.key in healthy)
    return sim.faults, events, sum(len(b) for _, b in feed), false_on_healthy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sensors", type=int, default=140)
    ap.add_argument("--duration", type=float, default=900.0, help="simulated seconds (1 reading per second)")
    ap.add_argument("--seeds", type=int, default=3)
    a = ap.parse_args()
    t0 = time.process_time()
    faults, events, readings, healthy_raises = [], [], 0, 0
    for seed in range(a.seeds):
        f, e, n, h = run(a.sensors, a.duration, seed)
        # keys are made unique per seed so the runs pool into one score
        faults += [type(x)(f"{seed}:{x.key}", x.kind, x.start, x.end, x.metric) for x in f]
        events += [type(x)(event_id=x.event_id, ts=x.ts, kind=x.kind, key=f"{seed}:{x.key}", severity=x.severity,
                           message=x.message, data=x.data) for x in e]
        readings += n
        healthy_raises += h
    per_reason = match_faults(faults, events, GRACE)
    print(json.dumps({
        "bench": "maintenance", "sensors": a.sensors * a.seeds, "readings": readings, "faults": len(faults),
        "grace_s": GRACE.total_seconds(), "raises_on_healthy_sensors": healthy_raises,
        "per_reason": per_reason, "cpu_s": round(time.process_time() - t0, 2),
    }))


if __name__ == "__main__":
    main()
