"""Sensors back from an outage: alarms on their return, against the same minutes had they never left.

A simulated temperature sensor, a reading a minute for three days: a daily cycle of 3 degrees, a slow random
walk and noise of 0.05 (with `--metrics 2`, also a humidity that moves against it), falls silent on its second
day for 1, 2 or 6 hours. Its level has moved by many noise widths meanwhile.

- **returns**: the sensors whose return raises an `anomaly` within 10 minutes, against the same 10 minutes of
  the same sensors with no outage (the baseline: what those minutes raise anyway).
- **faults**: the sensor comes back 2, 5 or 30 degrees off after two hours away; found when it alarms within 60
  minutes of its return, against the same step made while it reports (the baseline: the step seen live).

The daily profile is not trusted yet on the second day (`season_min` days), so these judge the level forecast,
which is what a silence leaves behind. No real site data was available: these are the cases the rule exists
for, not a benchmark of record. Deterministic; prints one JSON line.

    python bench/outages.py [--seeds 10]
"""

from __future__ import annotations

import argparse
import json
import math
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
HOURS = (1, 2, 6)
OFFSETS = (2.0, 5.0, 30.0)
FAULT_OUTAGE = 120  # minutes away before a fault's return
RETURN_WINDOW = timedelta(minutes=10)
FAULT_WINDOW = timedelta(minutes=60)


def outage(seed: int, minutes: int) -> tuple[int, int]:
    """The minutes a sensor is silent: from a time of its second day that differs by seed."""
    start = 1440 + 300 + 97 * seed
    return start, start + minutes


def wandering(seed: int, metrics: int, gone: tuple[int, int], offset: float = 0.0) -> list[SensorReading]:
    """Three days of a reading a minute from a sensor whose level wanders (a daily cycle of 3 degrees, a slow
    random walk, noise 0.05; with two metrics, a humidity that moves against it), silent for the minutes
    `gone` (none when empty), and `offset` higher from the end of `gone` on."""
    rnd = random.Random(seed)
    walk, out = 0.0, []
    for i in range(3 * 1440):
        walk = 0.9995 * (walk + rnd.gauss(0.0, 0.02))
        cycle = math.sin(2.0 * math.pi * i / 1440)
        values = {"temperature": 20.0 + 3.0 * cycle + walk + rnd.gauss(0.0, 0.05) + (offset if i >= gone[1] else 0.0),
                  "humidity": 50.0 - 5.0 * cycle + rnd.gauss(0.0, 0.2)}
        if not gone[0] <= i < gone[1]:
            out.append(SensorReading(sensor_id="s1", ts=T0 + timedelta(minutes=i),
                                     metrics=dict(list(values.items())[:metrics]), attrs={}))
    return out


def alarms(readings: list[SensorReading], cfg: AnomalyConfig) -> list[datetime]:
    """The times at which the detector raises an `anomaly` event on one sensor's readings."""
    return [sc.ts for sc in Detector(cfg).score_readings(readings) if raises_event(sc, cfg.threshold)]


def alarmed(times: list[datetime], start: datetime, window: timedelta) -> bool:
    return any(start <= t < start + window for t in times)


def case(seeds: int, metrics: int, cfg: AnomalyConfig, minutes: int, offset: float, window: timedelta) -> tuple:
    """(sensors that alarm within `window` of their return after `minutes` away, `offset` off; the same sensors
    alarming in the same minutes had they reported throughout, with the same offset from then on), out of `seeds`."""
    away = live = 0
    for seed in range(seeds):
        gone = outage(seed, minutes)
        back = T0 + timedelta(minutes=gone[1])
        away += alarmed(alarms(wandering(seed, metrics, gone, offset), cfg), back, window)
        live += alarmed(alarms(wandering(seed, metrics, (gone[1], gone[1]), offset), cfg), back, window)
    return f"{away}/{seeds}", f"{live}/{seeds}"


def returns(seeds: int, metrics: int, cfg: AnomalyConfig) -> dict:
    return {f"{hours}h": dict(zip(("returns_alarming", "never_left (baseline)"),
                                  case(seeds, metrics, cfg, 60 * hours, 0.0, RETURN_WINDOW))) for hours in HOURS}


def faults(seeds: int, metrics: int, cfg: AnomalyConfig) -> dict:
    return {f"+{offset:g}": dict(zip(("found_after_outage", "found_live (baseline)"),
                                     case(seeds, metrics, cfg, FAULT_OUTAGE, offset, FAULT_WINDOW)))
            for offset in OFFSETS}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=10, help="sensors per case")
    args = ap.parse_args(argv)
    cfg = AnomalyConfig()
    t0 = time.perf_counter()
    result: dict = {"bench": "outages", "seeds": args.seeds}
    for metrics in (1, 2):
        result[f"metrics_{metrics}"] = {"returns": returns(args.seeds, metrics, cfg),
                                        "faults_after_2h": faults(args.seeds, metrics, cfg)}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result, separators=(",", ":")))
    return result


if __name__ == "__main__":
    main()
