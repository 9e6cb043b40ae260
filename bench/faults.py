"""Which kinds of fault the sensor-level detector finds: faults injected into SKAB's healthy pump recording.

skab-dev's labelled files hold one kind of fault (a valve closing), which the change channels' constants were
fitted on. To see the detector on kinds it was not tuned on, this bench takes the anomaly-free recording
(skab-dev/anomaly-free: 2 h 36 min at 1 Hz, eight sensors, real noise, quantisation and slow wander) and, in
separate runs, injects one fault into one metric, at one of several positions:

    step    + k sigma for 300 s, then back          (a valve, a blocked line)
    ramp    0 -> k sigma over 300 s, then held       (a clogging filter, a bearing warming up)
    spike   one reading k sigma off                  (a transient, a glitch)
    noise   noise of k sigma added for 300 s         (a loose mount, cavitation)
    stuck   the value frozen for 300 s               (a sensor that stopped updating)

sigma is the metric's standard deviation over the recording's first hour. A fault is found when the agent
raises an `anomaly` event (the sensor-level score, as live) that the clean recording does not raise, from
the fault's first reading to 60 s after its last: the detector's state before the fault is the same in
both, so such an alarm is the fault's doing, and the alarms the recording raises anyway (4.9 an hour) do
not count as finds. Baselines, in the same runs and by the same rule: bench/skab.py's rolling z-score per
metric (300 readings, |z| > 4, 60 s quiet: twice the agent's alarms on the clean recording), and the same
with the smallest threshold that raises no more alarms an hour on the clean recording than the agent
(`zscore_matched`). It describes the shipped defaults (or --config); one design choice was made on it: a spike
of a metric no alarm in the sensor's refractory period was about may alarm inside it (every spike raised the
clean recording's false alarms above 5 an hour), so the spike figures lean in-sample.

    python bench/faults.py [--data DIR] [--config PATH]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgewatch.agent import config  # noqa: E402
from edgewatch.agent.analytics.anomaly import Detector  # noqa: E402
from edgewatch.agent.config import AnomalyConfig  # noqa: E402

from bench import cv, skab  # noqa: E402

LENGTH = 300  # readings a fault lasts (a ramp: 300 rising, then held; judged over 600)
AFTER = 60  # readings after its end in which a detection still counts
FIRST = 1500  # the first position (the detector has learnt 25 minutes); then every STRIDE readings
STRIDE = 500
MAGNITUDES = (3.0, 6.0)  # in sigmas of the metric
Z = 4.0  # the rolling z-score's threshold in bench/skab.py
ZSCORE_LEAD = 400  # the z-score's state depends on its last 300 readings and its quiet time: start it this early

Fault = Callable[[list[float], int, float, float], list[float]]


def step(xs: list[float], at: int, k: float, sigma: float) -> list[float]:
    return xs[:at] + [x + k * sigma for x in xs[at:at + LENGTH]] + xs[at + LENGTH:]


def ramp(xs: list[float], at: int, k: float, sigma: float) -> list[float]:
    up = [x + k * sigma * (i + 1) / LENGTH for i, x in enumerate(xs[at:at + LENGTH])]
    return xs[:at] + up + [x + k * sigma for x in xs[at + LENGTH:]]  # held: its end is not what is found


def spike(xs: list[float], at: int, k: float, sigma: float) -> list[float]:
    return xs[:at] + [xs[at] + k * sigma] + xs[at + 1:]


def noise(xs: list[float], at: int, k: float, sigma: float) -> list[float]:
    rnd = random.Random(at)
    return xs[:at] + [x + rnd.gauss(0.0, k * sigma) for x in xs[at:at + LENGTH]] + xs[at + LENGTH:]


def stuck(xs: list[float], at: int, k: float, sigma: float) -> list[float]:
    return xs[:at] + [xs[at]] * LENGTH + xs[at + LENGTH:]


FAULTS: dict[str, tuple[Fault, int, tuple[float, ...]]] = {  # kind -> (inject, readings it lasts, magnitudes)
    "step": (step, LENGTH, MAGNITUDES),
    "ramp": (ramp, 2 * LENGTH, MAGNITUDES),  # found within 300 s of rise and 300 s held (+ AFTER)
    "spike": (spike, 1, MAGNITUDES),
    "noise": (noise, LENGTH, MAGNITUDES),
    "stuck": (stuck, LENGTH, (0.0,)),
}


def zscore_alarms(times, rows, start: int, end: int, z: float) -> set[int]:
    """The baseline's detections in [start, end) (run from ZSCORE_LEAD readings before)."""
    lead = start - ZSCORE_LEAD
    return {i + lead for i in skab.zscore_detections(rows[lead:end], times[lead:end], z=z) if i + lead >= start}


def matched_z(times, rows, rate: float) -> float:
    """The z-score's smallest threshold (4 to 8, steps of 0.1) that raises at most `rate` alarms an hour on the
    clean recording: the baseline at the detector's own false-alarm rate."""
    return next((z / 10 for z in range(40, 81) if skab.alarms_per_hour(
        times, skab.zscore_detections(rows, times, z=z / 10)) <= rate), 8.0)


def with_fault(rows: list[list[float]], metric: int, inject: Fault, at: int, k: float, sigma: float) -> list[list[float]]:
    column = inject([r[metric] for r in rows], at, k, sigma)
    return [r[:metric] + [x] + r[metric + 1:] for r, x in zip(rows, column)]


def run(times, rows, cfg: AnomalyConfig) -> dict:
    hour = next(i for i, t in enumerate(times) if (t - times[0]).total_seconds() >= 3600)
    sigmas = [statistics.pstdev(r[j] for r in rows[:hour]) for j in range(len(skab.COLUMNS))]
    positions = list(range(FIRST, len(rows) - 2 * LENGTH - AFTER, STRIDE))
    # the clean recording once: its alarms, and the detector's state at each position (a fault run resumes it)
    det, states, clean = Detector(cfg), {}, []
    for start, at in zip([0] + positions, positions + [len(rows)]):
        clean += skab.alarm_rows(det, times, rows, start, at, cfg)
        states[at] = copy.deepcopy(det)
    clean = set(clean)
    rate = skab.alarms_per_hour(times, clean)
    baselines = {"zscore": Z, "zscore_matched": matched_z(times, rows, rate)}  # name -> threshold
    clean_z = {name: skab.zscore_detections(rows, times, z=z) for name, z in baselines.items()}
    tally: dict[str, dict[str, dict[str, list[int]]]] = {}  # kind -> magnitude -> detector -> delays of its finds
    for at, (kind, (inject, length, magnitudes)), (metric, sigma) in itertools.product(
            positions, FAULTS.items(), enumerate(sigmas)):
        end = min(at + length + AFTER, len(rows))
        for k in magnitudes:
            faulty = with_fault(rows, metric, inject, at, k, sigma)
            # the fault's own alarms: those the clean recording does not raise (the state before is the same)
            finds = {"agent": set(skab.alarm_rows(copy.deepcopy(states[at]), times, faulty, at, end, cfg)) - clean}
            finds |= {name: zscore_alarms(times, faulty, at, end, z) - clean_z[name] for name, z in baselines.items()}
            delays = tally.setdefault(kind, {}).setdefault(f"{k:g}", {name: [] for name in finds})
            for name, hits in finds.items():
                if hits:
                    delays[name].append(min(hits) - at)
    runs = len(positions) * len(sigmas)  # per kind and magnitude
    return {kind: {k: summary(d, runs) for k, d in by_k.items()} for kind, by_k in tally.items()} | {
        "positions": len(positions), "sigmas": dict(zip(skab.COLUMNS, (round(s, 4) for s in sigmas))),
        "clean_alarms_per_hour": {"agent": rate} | {
            name: skab.alarms_per_hour(times, clean_z[name]) for name in baselines},
        "zscore_thresholds": baselines}


def summary(delays: dict[str, list[int]], runs: int) -> dict:
    """Per detector: the share of the runs whose fault it found, and the median delay of its first find (s)."""
    return {"runs": runs} | {name: {"found": round(len(d) / runs, 3),
                                    "median_delay_s": statistics.median(d) if d else None}
                             for name, d in delays.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=cv.DATA, help="folder holding skab-dev/ (default: $SHARED_DIR/data)")
    ap.add_argument("--config", help="agent configuration whose [anomaly] section is used")
    args = ap.parse_args(argv)
    cfg = config.load(args.config).anomaly
    free = args.data / "skab-dev" / "anomaly-free" / "anomaly-free.csv"
    if not free.is_file():
        ap.exit(2, f"bench/faults.py: {free}: no such file (give --data DIR holding skab-dev/)\n")
    times, rows, _ = skab.read_skab(free)
    t0 = time.perf_counter()
    result = {"benchmark": "faults", "recording": str(free), "config": cv.label(cfg, cv.SENSOR_GRID),
              **run(times, rows, cfg), "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(result, separators=(",", ":")))
    return result


if __name__ == "__main__":
    main()
