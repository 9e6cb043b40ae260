"""Machines that switch between operating regimes: sensor-level alarms an hour with the regime memory, against
the same readings without it (`regime_visits = 0`, the baseline, in the same run).

A simulated compressor, one reading a second: three metrics that move `--shift` noise widths together when it
switches on or off, every `--period` seconds. Every switch is normal operation, so every alarm is a false one;
a detector that learns the machine's regimes stops raising them. From `--fault-hour` on, one metric also runs 12
noise widths above its on level, a level the machine never ran at: the delay of the first alarm after it shows
that the memory does not hide a new level. No real site data was available: this is the case the memory exists
for, not a benchmark of record. Deterministic; prints one JSON line.

    python bench/regimes.py [--hours 6] [--seeds 3] [--period 600] [--shift 6]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from edgewatch.agent.analytics.anomaly import Detector, raises_event  # noqa: E402
from edgewatch.agent.config import AnomalyConfig  # noqa: E402
from edgewatch.agent.records import SensorReading  # noqa: E402

T0 = datetime(2024, 1, 1)
STEP = timedelta(seconds=1)
FAULT = 12.0  # noise widths above the off level: 6 above the on level, where the machine never ran


def cycling(n: int, seed: int, period: int = 600, shift: float = 6.0) -> list[SensorReading]:
    """A compressor that switches on and off every `period` readings: its three metrics move `shift` noise widths
    together."""
    rnd = random.Random(seed)
    return [SensorReading(sensor_id="c", ts=T0 + i * STEP, attrs={},
                          metrics={f"m{j}": 20.0 + shift * ((i // period) % 2) + rnd.gauss(0, 1) for j in range(3)})
            for i in range(n)]


def with_fault(rds: list[SensorReading], at: int) -> list[SensorReading]:
    """The same readings, m1 FAULT noise widths higher from reading `at` on."""
    return rds[:at] + [SensorReading(sensor_id=r.sensor_id, ts=r.ts, attrs=r.attrs,
                                     metrics=r.metrics | {"m1": r.metrics["m1"] + FAULT}) for r in rds[at:]]


def alarms(rds: list[SensorReading], cfg: AnomalyConfig) -> list[int]:
    """The readings at which the detector raises an `anomaly` event."""
    return [int((sc.ts - T0) / STEP) for sc in Detector(cfg).score_readings(rds) if raises_event(sc, cfg.threshold)]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hours", type=int, default=6, help="hours of operation per seed")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--period", type=int, default=600, help="seconds between switches")
    ap.add_argument("--shift", type=float, default=6.0, help="noise widths the metrics move at a switch")
    ap.add_argument("--fault-hour", type=int, default=5, help="hour from which one metric runs at a new level")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    n, at = args.hours * 3600, args.fault_hour * 3600
    configs = {"memory": AnomalyConfig(), "forgetful": AnomalyConfig(regime_visits=0)}
    hourly: dict[str, list[list[int]]] = {name: [] for name in configs}
    found: dict[str, list[int | None]] = {name: [] for name in configs}
    for seed in range(args.seeds):
        faulty = with_fault(cycling(n, seed, args.period, args.shift), at)  # normal operation until reading `at`
        for name, cfg in configs.items():
            hits = alarms(faulty, cfg)
            hourly[name].append([sum(1 for h in hits if k * 3600 <= h < (k + 1) * 3600) for k in range(args.fault_hour)])
            found[name].append(next((h - at for h in hits if h >= at), None))
    result = {"benchmark": "regimes", "seeds": args.seeds, "period_s": args.period, "shift": args.shift,
              "alarms_per_hour": hourly, "new_level_found_after_s": found,
              "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(result, separators=(",", ":")))
    return result


if __name__ == "__main__":
    main()
