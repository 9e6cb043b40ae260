"""The forecast's profile on simulated sites whose rhythm people set, against the default profile in the same run.

- **weekly**: offices heated from 07:00 to 19:00 on weekdays (17 -> 22 degrees over 90 minutes, noise 0.3, a
  reading every 5 minutes, ten weeks from a Monday). The daily profile (the baseline) against a weekly one
  (`season_days = 7`, `season_buckets = 672`): false alarms in weeks 7 - 10 (the weekly profile is consulted from
  week 6), and two faults in week 9, each in a recording of its own: heating left on on a Saturday, and a
  Wednesday without heating (a weekday that looks like a weekend).
- **clocks**: a shop in Berlin heated from 07:00 to 19:00 local time every day, from 2024-02-05 for 80 days,
  across the spring change of the clocks (2024-03-31). The profile in UTC (the baseline) against one on the
  site's clock (`timezone = "Europe/Berlin"`): alarms per seed in the three weeks before and after the change.

No real site data was available: these are the cases the two keys exist for, not a benchmark of record.
Deterministic; prints one JSON line.

    python bench/rhythms.py [--seeds 6]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from edgewatch.agent.analytics.anomaly import Detector, raises_event  # noqa: E402
from edgewatch.agent.config import AnomalyConfig  # noqa: E402
from edgewatch.agent.records import SensorReading  # noqa: E402

MONDAY = datetime(2024, 1, 1)
STEP = timedelta(minutes=5)
WEEKLY = dataclasses.replace(AnomalyConfig(), season_days=7, season_buckets=672)
BERLIN = "Europe/Berlin"
SHOP_START = datetime(2024, 2, 5)
CLOCKS_CHANGE = datetime(2024, 3, 31)
IDLE_DAY = 8 * 7 + 2  # the Wednesday of week 9
BUSY_DAY = 8 * 7 + 5  # the Saturday of week 9


def heating(hour: float, on: bool) -> float:
    """17 degrees, 22 from 07:00 to 19:00 when on (a 90-minute warm-up)."""
    return 17.0 + (5.0 * min(1.0, (hour - 7) / 1.5) if on and 7 <= hour < 19 else 0.0)


def office(weeks: int, seed: int, idle_day: int | None = None, busy_day: int | None = None) -> list[tuple]:
    """(time, temperature) every 5 minutes from a Monday: heated on weekdays, not on day `idle_day`, also on
    day `busy_day`."""
    rnd = random.Random(seed)
    out = []
    for i in range(weeks * 7 * 288):
        t = MONDAY + i * STEP
        day = (t - MONDAY).days
        on = (t.weekday() < 5 and day != idle_day) or day == busy_day
        out.append((t, heating(t.hour + t.minute / 60, on) + rnd.gauss(0.0, 0.3)))
    return out


def shop(days: int, seed: int, zone: str = BERLIN) -> list[tuple]:
    """(UTC time, temperature) every 5 minutes from SHOP_START: heated every day by the local clock."""
    local, rnd = ZoneInfo(zone), random.Random(seed)
    out = []
    for i in range(days * 288):
        t = SHOP_START + i * STEP
        at = t.replace(tzinfo=timezone.utc).astimezone(local)
        out.append((t, heating(at.hour + at.minute / 60, True) + rnd.gauss(0.0, 0.3)))
    return out


def alarms(series: list[tuple], cfg: AnomalyConfig) -> list[datetime]:
    """The times at which the detector raises an `anomaly` event on one sensor's series."""
    readings = [SensorReading(sensor_id="s", ts=t, metrics={"temperature": x}, attrs={}) for t, x in series]
    return [r.ts for r, sc in zip(readings, Detector(cfg).score_readings(readings)) if raises_event(sc, cfg.threshold)]


def weekly(seeds: int) -> dict:
    late = MONDAY + timedelta(weeks=6)
    out = {}
    for name, cfg in (("daily (baseline)", AnomalyConfig()), ("weekly", WEEKLY)):
        false = busy = idle = 0
        for seed in range(seeds):
            found = [t for t in alarms(office(10, seed, busy_day=BUSY_DAY), cfg) if t >= late]
            on_busy = [t for t in found if (t - MONDAY).days == BUSY_DAY]
            false, busy = false + len(found) - len(on_busy), busy + bool(on_busy)
            idle += any((t - MONDAY).days == IDLE_DAY for t in alarms(office(10, seed, idle_day=IDLE_DAY), cfg))
        out[name] = {"false_alarms_weeks_7_10": false, "busy_saturday_found": f"{busy}/{seeds}",
                     "idle_wednesday_found": f"{idle}/{seeds}"}
    base, mine = out["daily (baseline)"], out["weekly"]
    out["false_alarms_ratio_vs_baseline"] = round(mine["false_alarms_weeks_7_10"]
                                                  / max(base["false_alarms_weeks_7_10"], 1), 3)
    return out


def clocks(seeds: int) -> dict:
    weeks3 = timedelta(weeks=3)
    out = {}
    for name, cfg in (("utc (baseline)", AnomalyConfig()), ("local", AnomalyConfig(timezone=BERLIN))):
        before, after = [], []
        for seed in range(seeds):
            ts = alarms(shop(80, seed), cfg)
            before.append(sum(CLOCKS_CHANGE - weeks3 <= t < CLOCKS_CHANGE for t in ts))
            after.append(sum(CLOCKS_CHANGE <= t < CLOCKS_CHANGE + weeks3 for t in ts))
        out[name] = {"alarms_3_weeks_before": before, "alarms_3_weeks_after": after}
    out["after_ratio_vs_baseline"] = round(sum(out["local"]["alarms_3_weeks_after"])
                                           / max(sum(out["utc (baseline)"]["alarms_3_weeks_after"]), 1), 3)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=6, help="offices (weekly) and shops (clocks, at most 4 by default)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    result = {"bench": "rhythms", "seeds": args.seeds, "weekly": weekly(args.seeds),
              "clocks": clocks(min(args.seeds, 4)), "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(result, separators=(",", ":")))
    return result


if __name__ == "__main__":
    main()
