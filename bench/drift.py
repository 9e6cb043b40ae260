"""Slow drift on simulated sensors: how soon a ramp is raised, and false alarms on healthy, cycling and stepped ones.

Prints ONE JSON line. Each simulated sensor reads temperature every 10 s: about
21 C, noise sigma 0.3, a daily cycle of amplitude `--cycle`, and a random phase
against the 10-minute blocks. A ramp of `--rate` noise-sigma an hour starts at
hour 8 (the detector has learnt its scale by then); its delay is the time from
the ramp's start to the block close that raises `drift`. Healthy sensors (the
cycle alone) and sensors with a step of `--step` to a new stable level at hour 8
run for `--hours`. The detector (`agent/analytics/drift.py`, the `[drift]`
defaults) is driven block by block directly: block means are cut as the sensor
graph cuts them, without the rest of the graph around them.

`--peers` instead runs `--groups` groups of six outdoor sensors under one prefix:
a shared daily cycle of 5 C and a front that warms them all by 5 C over 6 hours
(hour 20), each with its own offset and noise; one of each group drifts by
`--rate` noise-sigma an hour of its own from hour 30. It counts the healthy
sensors that raise `drift` in `--hours` and the drifting one's delay, against
their own level and against their peers (`drift.reference`).

`--daily` instead runs single sensors as above (give a steep `--cycle`, say 3) against their own level
and against the same block of the usual day (`drift.reference = "daily"`): the raises on healthy ones in
`--hours`, the delay of a ramp from hour 30 (a day and the scale's warm-up after the start), and the
sensors whose ramp, stopped after six hours, raises `drift` again 12 hours or more after it began.

    python bench/drift.py [--sensors 40] [--cycle 0.5] [--rate 3] [--step 2] [--hours 48]
    python bench/drift.py --peers [--groups 20] [--rate 3] [--hours 48]
    python bench/drift.py --daily --cycle 3 --hours 72 [--sensors 40] [--rate 3]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgewatch.agent.analytics.drift import DriftParams, PeerBlocks, close_blocks  # noqa: E402
from edgewatch.agent.analytics.health import MetricTrack  # noqa: E402
from edgewatch.agent.config import Config  # noqa: E402

PERIOD = 10.0  # seconds between readings
SIGMA = 0.3
START_H = 8.0  # hours: when the ramp or the step begins
DAILY_RAMP_H = 30.0  # hours: when the ramp begins with --daily
START = datetime(2026, 3, 2)  # the data time of the peer groups' first reading (blocks are cut in it)


def readings(seed: int, hours: float, cycle: float, rate: float = 0.0, step: float = 0.0, start: float = START_H,
             until: float = math.inf):
    """(seconds, value) of one sensor; the fault (ramp of `rate` sigma an hour, or `step`) from `start` hours on (a
    ramp until `until` hours, then level)."""
    rng = random.Random(seed)
    phase = rng.uniform(0, 86400)
    for i in range(int(hours * 3600 / PERIOD)):
        t = i * PERIOD
        h = t / 3600
        x = 21.0 + cycle * math.sin(2 * math.pi * (t + phase) / 86400) + rng.gauss(0, SIGMA)
        if h >= start:
            x += rate * SIGMA * (min(h, until) - start) + step
        yield t, round(x, 2)


def outdoor(seed: int, hours: float, rate: float = 3.0, drift_at: float | None = None, front_at: float = 20.0):
    """(seconds, value) of one outdoor sensor of a group: a shared daily cycle of amplitude 5 C and a front that
    warms the whole group by 5 C over 6 hours from `front_at`, its own offset and noise SIGMA; optionally a drift
    of its own of `rate` SIGMA an hour from `drift_at` hours on."""
    rng = random.Random(seed)
    offset = rng.uniform(-0.5, 0.5)
    for i in range(int(hours * 3600 / PERIOD)):
        t = i * PERIOD
        h = t / 3600
        x = 15.0 + offset + 5.0 * math.sin(2 * math.pi * h / 24) + 5.0 * min(max(h - front_at, 0.0), 6.0) / 6.0
        x += rng.gauss(0, SIGMA) + (rate * SIGMA * (h - drift_at) if drift_at is not None and h >= drift_at else 0.0)
        yield t, round(x, 2)


def group_raises(seed: int, hours: float, rate: float, reference: str, cfg: Config) -> list[float | None]:
    """Hours at which each of a group's six sensors first raises `drift` (the last one drifts from hour 30)."""
    cfg.drift.reference = reference
    p = DriftParams(cfg.drift, cfg.health.drift_z)
    peers = PeerBlocks(100) if p.peers else None
    series = [list(outdoor(seed * 10 + k, hours, rate, 30.0 if k == 5 else None)) for k in range(6)]
    tracks = [{"temperature": MetricTrack(0.0, -math.inf, math.inf, False, p)} for _ in series]
    first: list[float | None] = [None] * 6
    block = cfg.drift.block
    for i in range(len(series[0])):
        t = series[0][i][0]
        if i and int(t // block) != int(series[0][i - 1][0] // block):  # a block closes for every sensor
            end = START + timedelta(seconds=t - t % block)
            for k, tr in enumerate(tracks):
                score, _ = close_blocks(tr, p, end, peers, f"yard/t{k}")
                if score >= p.drift_z and first[k] is None:
                    first[k] = t / 3600
        for k, tr in enumerate(tracks):
            level = tr["temperature"].level
            level.total += series[k][i][1]
            level.n += 1
    return first


def raises(series, reference: str, cfg: Config) -> list[float]:
    """Hours at which one sensor's `drift` CUSUM reaches its threshold from below, judged by close_blocks against
    `reference`."""
    cfg.drift.reference = reference
    p = DriftParams(cfg.drift, cfg.health.drift_z)
    tracks = {"temperature": MetricTrack(0.0, -math.inf, math.inf, False, p)}
    out, block, above = [], None, False
    for t, x in series:
        b = int(t // cfg.drift.block)
        if block is not None and b != block:
            score, _ = close_blocks(tracks, p, START + timedelta(seconds=b * cfg.drift.block))
            if score >= p.drift_z and not above:
                out.append(t / 3600)
            above = score >= p.drift_z
        block = b
        level = tracks["temperature"].level
        level.total += x
        level.n += 1
    return out


def daily_main(a) -> None:
    """Sensors whose daily cycle is large against their noise, judged against their own level and against the
    same time of the usual day: raises on healthy ones over `a.hours`, and how soon a ramp from hour DAILY_RAMP_H on
    is found (a day and the scale's warm-up after the start, so that yesterday's blocks exist)."""
    out = {"bench": "drift-daily", "sensors": a.sensors, "cycle": a.cycle, "rate_sigma_per_h": a.rate,
           "hours": a.hours}
    for reference in ("own", "daily"):
        healthy = [len(raises(readings(3000 + s, a.hours, a.cycle), reference, Config())) for s in range(a.sensors)]
        delays = []
        for s in range(a.sensors):
            found = [h - DAILY_RAMP_H for h in raises(readings(4000 + s, DAILY_RAMP_H + 6, a.cycle, rate=a.rate,
                                                               start=DAILY_RAMP_H), reference, Config())
                     if h >= DAILY_RAMP_H]
            delays.append(found[0] if found else None)
        found = sorted(d for d in delays if d is not None)
        again = sum(any(h >= DAILY_RAMP_H + 12.0 for h in raises(readings(5000 + s, a.hours, a.cycle, rate=a.rate,
                                                                          start=DAILY_RAMP_H, until=DAILY_RAMP_H + 6.0),
                                                                 reference, Config()))
                    for s in range(a.sensors))
        out[reference] = {
            "healthy_sensors_raising": f"{sum(n > 0 for n in healthy)}/{a.sensors}", "raises_healthy": sum(healthy),
            "six_hour_ramps_raised_again_later": f"{again}/{a.sensors}",
            "ramps_found_within_6h": f"{len(found)}/{a.sensors}",
            "delay_h": {"median": round(found[len(found) // 2], 2), "p90": round(found[int(0.9 * len(found))], 2),
                        "max": round(found[-1], 2)} if found else None,
        }
    print(json.dumps(out))


def peers_main(a) -> None:
    out = {"bench": "drift-peers", "groups": a.groups, "rate_sigma_per_h": a.rate, "hours": a.hours}
    for reference in ("own", "peers"):
        healthy, delays = 0, []
        for g in range(a.groups):
            first = group_raises(g, a.hours, a.rate, reference, Config())
            healthy += sum(f is not None for f in first[:5])
            delays.append(None if first[5] is None else first[5] - 30.0)
        found = sorted(d for d in delays if d is not None and d > 0)
        out[reference] = {
            "false_raises_healthy": f"{healthy}/{5 * a.groups}",
            "drifting_found_after_start": f"{len(found)}/{a.groups}",
            "delay_h": {"median": round(found[len(found) // 2], 2), "p90": round(found[int(0.9 * len(found))], 2),
                        "max": round(found[-1], 2)} if found else None,
        }
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sensors", type=int, default=40, help="simulated sensors per case")
    ap.add_argument("--cycle", type=float, default=0.5, help="daily cycle amplitude, C (noise sigma is 0.3)")
    ap.add_argument("--rate", type=float, default=3.0, help="ramp, noise sigma per hour")
    ap.add_argument("--step", type=float, default=2.0, help="step to a new level, C")
    ap.add_argument("--hours", type=float, default=48.0, help="length of the healthy and step runs")
    ap.add_argument("--peers", action="store_true", help="instead: groups of outdoor sensors, own level vs peers")
    ap.add_argument("--groups", type=int, default=20, help="--peers: groups of six sensors")
    ap.add_argument("--daily", action="store_true", help="instead: sensors with a strong daily cycle (--cycle, say 3), "
                    "own level vs the same time of the usual day")
    a = ap.parse_args()
    if a.peers:
        peers_main(a)
        return
    if a.daily:
        daily_main(a)
        return
    delays = []
    for s in range(a.sensors):
        raised = raises(readings(s, START_H + 6, a.cycle, rate=a.rate), "own", Config())
        delays.append(raised[0] - START_H if raised else None)
    found = sorted(d for d in delays if d is not None)
    healthy = sum(bool(raises(readings(1000 + s, a.hours, a.cycle), "own", Config())) for s in range(a.sensors))
    stepped = sum(bool(raises(readings(2000 + s, a.hours, a.cycle, step=a.step), "own", Config()))
                  for s in range(a.sensors))
    print(json.dumps({
        "bench": "drift", "sensors": a.sensors, "cycle": a.cycle, "rate_sigma_per_h": a.rate, "step": a.step,
        "hours": a.hours, "ramps_found_within_6h": len(found),
        "delay_h": {"min": found[0], "median": found[len(found) // 2], "p90": found[int(0.9 * len(found))],
                    "max": found[-1]} if found else None,
        "early_raises": sum(d < 0 for d in found),
        "false_raises_healthy": healthy, "false_raises_step": stepped,
    }))


if __name__ == "__main__":
    main()
