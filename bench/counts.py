"""Count-valued series (events per interval): false alarms against Gaussian noise, and what stricter settings cost.

The single-metric detector's surprise is symmetric and its likelihood's tail is normal, while a count's right tail
is heavier. This bench measures what that costs on simulated counts, a reading every 5 minutes with a daily
cycle of +- 60 % around a mean of lambda events:

- **healthy**: alarms per 1,000 readings (after NAB's probation of 15 %) on Gaussian noise of variance lambda
  (the baseline, in the same run), Poisson counts and negative-binomial counts of shape 2 (bursty: variance
  lambda + lambda^2 / 2), with the ratio to the baseline;
- **ladder**: on the counts, each step of `edge-agent calibrate`'s ladder (tail_floor / 10, spatial_z + 1 a step)
  against the same detector fed Anscombe's transform 2 sqrt(x + 3/8) (the textbook remedy for Poisson noise),
  each with its false alarms and the share of three faults it finds within 3 hours (36 readings) of their start,
  in copies of the series (its state before the fault is the clean run's): a 4 x burst for 30 minutes, the level
  doubling, the counts falling to 0 for 2 hours. A step of one that finds more at no more false alarms than a
  step of the other is the better way to quieten counters.

No real counter data was available: these are the cases the README's limitation on counts states. Deterministic;
prints one JSON line.

    python bench/counts.py [--series 8] [--seeds 20]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from edgewatch.agent.analytics.anomaly import Detector, raises_event  # noqa: E402
from edgewatch.agent.commands.calibrate import ladder  # noqa: E402
from edgewatch.agent.config import AnomalyConfig  # noqa: E402
from edgewatch.agent.records import SensorReading  # noqa: E402

START = datetime(2026, 1, 5, tzinfo=timezone.utc)
STEP = timedelta(minutes=5)
PROBATION = 0.15  # NAB's: the first 15 % of a series is not counted
SHAPE = 2.0  # the negative binomial's: variance lambda + lambda^2 / SHAPE
HEALTHY_LAMBDAS = (1.0, 3.0, 10.0, 100.0)
LADDER_LAMBDAS = (3.0, 20.0)
FAULT_AT = 3000  # readings into a ladder series (about 10 days)
WITHIN = 36  # readings after a fault's start in which an alarm finds it (3 hours)
LADDER_STEPS = 4  # calibrate's steps 0 - 3 (1e-4 .. 1e-7); the transform's first two

Noise = Callable[[np.random.Generator, np.ndarray], np.ndarray]
NOISE: dict[str, Noise] = {
    "gaussian": lambda rng, mu: mu + rng.normal(0.0, 1.0, len(mu)) * np.sqrt(mu),
    "poisson": lambda rng, mu: rng.poisson(mu).astype(float),
    "negative_binomial": lambda rng, mu: rng.negative_binomial(SHAPE, SHAPE / (SHAPE + mu)).astype(float),
}
FAULTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {  # the mean from FAULT_AT on, changed
    "burst_4x_30min": lambda mu: np.r_[mu[:6] * 4.0, mu[6:]],
    "level_doubles": lambda mu: mu * 2.0,
    "zero_for_2h": lambda mu: np.r_[mu[:24] * 0.0, mu[24:]],
}


def daily_mean(n: int, lam: float) -> np.ndarray:
    days = np.arange(n) * STEP.total_seconds() / 86400.0
    return lam * (1.0 + 0.6 * np.sin(2.0 * math.pi * days))


def anscombe(xs: np.ndarray) -> np.ndarray:
    return 2.0 * np.sqrt(xs + 0.375)


def readings(xs: np.ndarray, first: int = 0) -> list[SensorReading]:
    return [SensorReading(sensor_id="c", ts=START + (first + i) * STEP, metrics={"value": float(x)}, attrs={})
            for i, x in enumerate(xs)]


def alarms(det: Detector, xs: np.ndarray, cfg: AnomalyConfig, first: int = 0) -> set[int]:
    return {first + i for i, sc in enumerate(det.score_readings(readings(xs, first)))
            if raises_event(sc, cfg.threshold)}


def healthy(series: int, readings_per: int) -> dict:
    """Alarms per 1,000 readings on each kind of noise at each lambda, and the ratio to Gaussian noise's."""
    cfg = AnomalyConfig()
    out: dict[str, dict] = {}
    for lam in HEALTHY_LAMBDAS:
        mu = daily_mean(readings_per, lam)
        rates = {}
        start = int(PROBATION * readings_per)
        for kind, noise in NOISE.items():
            count = sum(sum(1 for i in alarms(Detector(cfg), noise(np.random.default_rng(s), mu), cfg) if i >= start)
                        for s in range(series))
            rates[kind] = round(1000.0 * count / (series * (readings_per - start)), 3)
        base = rates["gaussian"]
        out[f"{lam:g}"] = {"per_1000": rates,
                           "ratio_to_gaussian": {k: round(v / base, 1) if base else None for k, v in rates.items()}}
    return out


def ladder_row(kind: str, lam: float, cfg: AnomalyConfig, transform: bool, seeds: int) -> dict:
    """One setting on one kind of counts: its false alarms and the share of each fault it finds."""
    noise = NOISE[kind]
    n = FAULT_AT + WITHIN
    mu = daily_mean(n, lam)
    start = int(PROBATION * FAULT_AT)
    fed = anscombe if transform else (lambda xs: xs)
    false = 0
    found = dict.fromkeys(FAULTS, 0)
    after = mu[FAULT_AT:]
    for s in range(seeds):
        det = Detector(cfg)
        false += sum(1 for i in alarms(det, fed(noise(np.random.default_rng(s), mu[:FAULT_AT])), cfg) if i >= start)
        # the continuation with and without the fault, from one random stream: an alarm the fault's copy raises
        # and the clean one does not is the fault's doing
        clean = alarms(copy.deepcopy(det), fed(noise(np.random.default_rng(10_000 + s), after)), cfg, FAULT_AT)
        for name, fault in FAULTS.items():
            ys = noise(np.random.default_rng(10_000 + s), fault(after))
            found[name] += bool(alarms(copy.deepcopy(det), fed(ys), cfg, FAULT_AT) - clean)
    return {"tail_floor": cfg.tail_floor, "spatial_z": cfg.spatial_z,
            "false_per_1000": round(1000.0 * false / (seeds * (FAULT_AT - start)), 3),
            "found": {name: round(k / seeds, 2) for name, k in found.items()}}


def ladders(seeds: int) -> dict:
    steps = ladder(AnomalyConfig(), LADDER_STEPS)
    return {f"{kind}_{lam:g}": {"calibrate_ladder": [ladder_row(kind, lam, c, False, seeds) for c in steps],
                                "anscombe": [ladder_row(kind, lam, c, True, seeds) for c in steps[:2]]}
            for kind in ("poisson", "negative_binomial") for lam in LADDER_LAMBDAS}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--series", type=int, default=8, help="healthy series per kind and lambda (default: 8)")
    ap.add_argument("--readings", type=int, default=15_000, help="readings per healthy series (default: 15000)")
    ap.add_argument("--seeds", type=int, default=20, help="series per ladder row (default: 20)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    result = {"bench": "counts", "healthy": healthy(args.series, args.readings), "ladders": ladders(args.seeds),
              "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(result, separators=(",", ":")))
    return result


if __name__ == "__main__":
    main()
