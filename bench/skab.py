"""SKAB benchmark: the agent's `anomaly` events on real multivariate pump data, cross-validated (the headline).

Each file of skab-dev (under $SHARED_DIR/data) is replayed through the agent's detector as
the readings of ONE sensor with eight metrics (1 Hz); the rows where the agent
raises an `anomaly` event are its detections (with the sensor-level fusion on,
that is the fused score; each metric's own score raises none). They are scored
with SKAB's changepoint NAB method (skab-dev/README.md): the first 400 rows of a
file are not scored, each changepoint opens a 60 s window to its right, the
first detection in a window earns a tanh credit from A_tp (at the changepoint)
down to A_fp (at the window's end), a window without detection costs A_fn and
every detection outside windows costs A_fp; profiles standard (1, -0.11, -1),
LowFP (1, -0.22, -1), LowFN (1, -0.11, -2); normalised over all windows.

Headline: leave-one-file-out cross-validation over the labelled files (skab-dev: the
16 valve1 files; `--corpus` takes any SKAB folder, e.g. the full benchmark with
valve2/ and other/, every labelled CSV under it): for each file, the configuration
is chosen among bench/cv.py's candidates on the other files (standard score), among
those that raise at most FA_TARGET false alarms an hour on anomaly-free.csv (or, if
none does, at most 1.25x the fewest); the held-out file is scored with it, and the
held-out detections are scored together.
Beside it, labelled in-sample: the shipped `[anomaly]` defaults, replayed through
the csp nodes (`anomaly_scores` -> `anomaly_events`) in historical mode. The
anomaly-free recording has no labels: its false alarms per hour (from row 400)
are reported for both; it takes part in the selection rule, so that figure is
in-sample. The baseline, measured in the same run: a rolling z-score per metric
(mean and standard deviation of that metric's previous 300 readings, a detection
when |z| > 4, then 60 s quiet for that metric).

    python bench/skab.py [--data DIR | --corpus DIR] [--config PATH] [--jobs N]
    python bench/skab.py --sensitivity [--data DIR | --corpus DIR] [--config PATH] [--jobs N]

The 384 candidates run on `--jobs` worker processes (all cores by default; about 10 minutes on skab-dev with 2).
`--sensitivity` repeats the cross-validation with one more key in the grid at a time (bench/cv.py's
SENSOR_NEIGHBOURS: the change channels' other constants, fitted on all of skab-dev, each with a neighbour on
either side), 2,688 candidate runs (about 75 minutes on 2 cores): how much the headline owes to them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections import deque
from datetime import datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import csp  # noqa: E402
from edgewatch.agent import config  # noqa: E402
from edgewatch.agent.analytics.anomaly import Detector, anomaly_events, anomaly_scores, raises_event  # noqa: E402
from edgewatch.agent.commands.score import TableFormat, iter_table  # noqa: E402
from edgewatch.agent.records import SensorReading  # noqa: E402

from bench import cv  # noqa: E402

COLUMNS = ("Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature", "Thermocouple",
           "Voltage", "Volume Flow RateRMS")
TRAIN_ROWS = 400  # never scored (SKAB's training part)
WINDOW = timedelta(seconds=60)
PROFILES = {"standard": (1.0, -0.11, -1.0), "lowFP": (1.0, -0.22, -1.0), "lowFN": (1.0, -0.11, -2.0)}
FA_TARGET = 5.0  # false alarms an hour on anomaly-free.csv
SENSOR = "pump"


def read_skab(path: Path) -> tuple[list[datetime], list[list[float]], list[int]]:
    """(times, rows of the eight metrics, changepoint row indices) of one SKAB file, read as `edge-agent score`
    reads it (`--time-column datetime`)."""
    with open(path, newline="", encoding="utf-8") as f:
        columns, table = iter_table(f, fmt=TableFormat(time_column="datetime"))
        idx = [columns.index(c) for c in COLUMNS]
        cpi = columns.index("changepoint") if "changepoint" in columns else None
        times, rows, cps = [], [], []
        for _, _, when, xs, _ in table:
            if cpi is not None and xs[cpi] == 1.0:
                cps.append(len(rows))
            times.append(when)
            rows.append([xs[i] for i in idx])
    return times, rows, cps


def windows_of(times: list[datetime], cps: list[int]) -> list[tuple[datetime, datetime]]:
    """[t, t + 60 s] per changepoint; a window that would overlap the previous one starts where it ends."""
    out = []
    for c in cps:
        start, end = times[c], times[c] + WINDOW
        if out and start <= out[-1][1]:
            start = out[-1][1]
        out.append((start, end))
    return out


def score(files: dict, detections: dict) -> dict:
    """SKAB's changepoint NAB score of {file: detected row indices} over these files (all profiles)."""
    res = {}
    n_windows = sum(len(f["windows"]) for f in files.values())
    for name, (a_tp, a_fp, a_fn) in PROFILES.items():
        total, missed, fps = 0.0, 0, 0
        for key, f in files.items():
            times, wins = f["times"], f["windows"]
            first: list[datetime | None] = [None] * len(wins)
            for i in sorted(i for i in detections.get(key, ()) if i >= TRAIN_ROWS):
                t = times[i]
                k = next((k for k, (s, e) in enumerate(wins) if s <= t <= e), None)
                if k is None:
                    fps += 1
                    total += a_fp
                elif first[k] is None:
                    first[k] = t
            for k, (s, e) in enumerate(wins):
                if first[k] is None:
                    missed += 1
                    total += a_fn
                else:
                    frac = (first[k] - s) / (e - s) if e > s else 0.0
                    x = -math.pi / 2 + math.pi * round(frac * 999) / 999  # the curve sampled at 1000 steps
                    total += (a_tp - a_fp) / 2 * (-math.tanh(x) / math.tanh(math.pi / 2)) + (a_tp - a_fp) / 2 + a_fp
        res[name] = round(100.0 * (total - n_windows * a_fn) / (n_windows * a_tp - n_windows * a_fn), 2)
        if name == "standard":
            res.update(missed_changepoints=missed, false_positive_rows=fps, windows=n_windows)
    return res


def by_folder(files: dict, detections: dict) -> dict:
    """The standard score, missed changepoints and false-positive rows of each folder's files alone (the full
    benchmark's valve1/, valve2/ and other/ hold different faults: where a figure comes from)."""
    folders: dict[str, dict] = {}
    for key, f in files.items():
        folders.setdefault(key.rpartition("/")[0] or ".", {})[key] = f
    keys = ("standard", "missed_changepoints", "false_positive_rows", "windows")
    return {d: {k: r[k] for k in keys} for d, sub in sorted(folders.items()) if (r := score(sub, detections))}


def interval(files: dict, detections: dict, draws: int = 2000, seed: int = 0) -> list[float]:
    """A 95 % bootstrap interval of the standard score, the files drawn with replacement: how far the figure
    could move on other files like these (the same fault and testbed)."""
    def standard(drawn: list[str]) -> float:
        names = [f"{k}#{j}" for j, k in enumerate(drawn)]  # a file drawn twice counts twice
        return score(dict(zip(names, (files[k] for k in drawn))),
                     dict(zip(names, (detections.get(k, ()) for k in drawn))))["standard"]

    return cv.bootstrap_95([sorted(files)], standard, draws, seed)


def alarms_per_hour(times: list[datetime], detections: set) -> float:
    hours = (times[-1] - times[TRAIN_ROWS]).total_seconds() / 3600.0
    return round(sum(1 for i in detections if i >= TRAIN_ROWS) / hours, 2)


def readings_of(times, rows) -> list[SensorReading]:
    return [SensorReading(sensor_id=SENSOR, ts=t, metrics=dict(zip(COLUMNS, r)), attrs={}) for t, r in zip(times, rows)]


def detector_detections(times, rows, cfg) -> set:
    """Rows whose scores raise an `anomaly` event (what `anomaly_events` keeps), straight from the Detector."""
    return set(alarm_rows(Detector(cfg), times, rows, 0, len(rows), cfg))


def alarm_rows(det: Detector, times, rows, start: int, end: int, cfg) -> list[int]:
    """Rows in [start, end) at which `det` (advanced in place, one reading at a time) raises an `anomaly` event."""
    out = []
    for i, rd in enumerate(readings_of(times[start:end], rows[start:end]), start):
        if any(raises_event(sc, cfg.threshold) for sc in det.score_readings([rd])):
            out.append(i)
    return out


def live_detections(times, rows, cfg) -> set:
    """Rows with an `anomaly` event from the live csp nodes in historical mode (one engine tick per reading)."""
    ticks = [(t, [rd]) for t, rd in zip(times, readings_of(times, rows))]
    ticks = [(max(t, ticks[i - 1][0]) if i else t, b) for i, (t, b) in enumerate(ticks)]

    @csp.graph
    def g():
        with csp.memoize(False):
            events = anomaly_events(anomaly_scores(csp.curve(list[SensorReading], ticks), cfg), cfg)
            csp.add_graph_output("events", events)

    out = csp.run(g, starttime=ticks[0][0], endtime=ticks[-1][0])
    row_of = {}
    for i, t in enumerate(times):
        row_of.setdefault(t, i)
    return {row_of[e.ts] for _, batch in out.get("events", []) for e in batch}


def zscore_detections(rows, times, window: int = 300, z: float = 4.0, quiet: float = 60.0) -> set:
    """The baseline: per metric, |x - mean| > z * std over its previous `window` readings; 60 s quiet per metric."""
    m = len(rows[0])
    bufs = [deque() for _ in range(m)]
    s, s2, last, out = [0.0] * m, [0.0] * m, [None] * m, set()
    for i, (t, row) in enumerate(zip(times, rows)):
        for j, x in enumerate(row):
            b, n = bufs[j], len(bufs[j])
            if n >= 30:
                mu = s[j] / n
                var = s2[j] / n - mu * mu
                if var > 1e-12 and abs(x - mu) > z * math.sqrt(var) and (
                        last[j] is None or (t - last[j]).total_seconds() >= quiet):
                    out.add(i)
                    last[j] = t
            b.append(x)
            s[j] += x
            s2[j] += x * x
            if len(b) > window:
                o = b.popleft()
                s[j] -= o
                s2[j] -= o * o
    return out


def detections_of(cfg, data: tuple) -> tuple[dict, float]:
    """One candidate's detections on every labelled file and its false alarms an hour on the healthy pump
    (`data`: the labelled files, the healthy pump's times and rows)."""
    files, free_times, free_rows = data
    return ({k: detector_detections(f["times"], f["rows"], cfg) for k, f in files.items()},
            alarms_per_hour(free_times, detector_detections(free_times, free_rows, cfg)))


def lofo(files: dict, configs: list, outputs: list[dict], free_fa: list[float]) -> tuple[dict, dict]:
    """Leave-one-file-out: per file the candidate best on the others among those within the false-alarm rule;
    the held-out detections of every file, and how often each candidate was chosen."""
    allowed = [i for i, fa in enumerate(free_fa) if fa <= FA_TARGET] or \
        [i for i, fa in enumerate(free_fa) if fa <= 1.25 * min(free_fa)]
    held, chosen = {}, {}
    for k in files:
        train = {j: f for j, f in files.items() if j != k}
        fit = [score(train, outputs[i])["standard"] if i in allowed else -math.inf for i in range(len(configs))]
        i = cv.pick(fit)
        held[k] = outputs[i][k]
        chosen[i] = chosen.get(i, 0) + 1
    return held, chosen


def sensitivity(files: dict, free_times: list, free_rows: list, cfg, jobs: int) -> dict:
    """The leave-one-file-out figure with SENSOR_GRID, then with each SENSOR_NEIGHBOURS key added to it, one
    key at a time; each neighbour's in-sample score with the grid defaults."""
    base = cv.candidates(cfg, cv.SENSOR_GRID)
    extra = [(key, dataclasses.replace(c, **{key: v})) for key, vals in cv.SENSOR_NEIGHBOURS.items() for v in vals
             for c in base]
    runs = cv.runs(detections_of, base + [c for _, c in extra], (files, free_times, free_rows), jobs)
    base_runs, extra_runs = runs[:len(base)], runs[len(base):]

    def summary(configs: list, rs: list, key: str | None = None) -> dict:
        held, chosen = lofo(files, configs, [o for o, _ in rs], [fa for _, fa in rs])
        row = {"lofo": score(files, held)}
        row["chosen"] = {(f"{key}={getattr(configs[i], key)} " if key else "") + cv.label(configs[i], cv.SENSOR_GRID): n
                         for i, n in chosen.items()}
        return row

    result = {"grid": summary(base, base_runs)}
    for key in cv.SENSOR_NEIGHBOURS:
        mine = [(c, r) for (k, c), r in zip(extra, extra_runs) if k == key]
        row = summary(base + [c for c, _ in mine], base_runs + [r for _, r in mine], key)
        row["in_sample"] = {f"{key}={getattr(c, key)}": {"standard": score(files, o)["standard"],
                                                         "anomaly_free_alarms_per_hour": fa}
                            for c, (o, fa) in mine if cv.label(c, cv.SENSOR_GRID) == cv.label(cfg, cv.SENSOR_GRID)}
        result[f"+{key}"] = row
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=cv.DATA, help="folder holding skab-dev/ (default: $SHARED_DIR/data)")
    ap.add_argument("--corpus", type=Path, help="a SKAB folder: every CSV under it but anomaly-free/ is a labelled "
                    "file (default: DATA/skab-dev); its anomaly-free/anomaly-free.csv, or skab-dev's, sets the alarm rate")
    ap.add_argument("--config", help="agent configuration whose [anomaly] section is used")
    ap.add_argument("--sensitivity", action="store_true",
                    help="instead: the cross-validation with each of the change channels' other constants in the grid")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes for the candidates")
    args = ap.parse_args(argv)
    cfg = config.load(args.config).anomaly
    root = args.corpus or args.data / "skab-dev"
    labelled = sorted((p for p in root.rglob("*.csv") if "anomaly-free" not in p.relative_to(root).parts),
                      key=lambda p: (p.parent.as_posix(), int(p.stem) if p.stem.isdigit() else 0, p.stem))
    free = next((f for f in (root / "anomaly-free" / "anomaly-free.csv",
                             args.data / "skab-dev" / "anomaly-free" / "anomaly-free.csv") if f.is_file()), None)
    if not labelled or free is None:
        ap.exit(2, f"bench/skab.py: no SKAB data at {root} (give --data DIR holding skab-dev/, or --corpus DIR)\n")
    files = {}
    for path in labelled:
        times, rows, cps = read_skab(path)
        files[path.relative_to(root).as_posix()] = {"times": times, "rows": rows, "windows": windows_of(times, cps)}
    free_times, free_rows, _ = read_skab(free)
    if args.sensitivity:
        result = {"benchmark": "skab-sensitivity", "corpus": str(root),
                  **sensitivity(files, free_times, free_rows, cfg, args.jobs)}
        print(json.dumps(result, separators=(",", ":")))
        return result

    t0 = time.perf_counter()
    configs = cv.candidates(cfg, cv.SENSOR_GRID)
    runs = cv.runs(detections_of, configs, (files, free_times, free_rows), args.jobs)
    outputs, free_fa = [o for o, _ in runs], [fa for _, fa in runs]
    held, picks = lofo(files, configs, outputs, free_fa)
    chosen = {cv.label(configs[i], cv.SENSOR_GRID): n for i, n in picks.items()}
    t_cv = time.perf_counter() - t0

    # in-sample: the shipped configuration through the live csp nodes; it must agree with the Detector path
    live = {k: live_detections(f["times"], f["rows"], cfg) for k, f in files.items()}
    default = next(i for i, c in enumerate(configs) if c == cfg)
    if live != outputs[default]:
        raise SystemExit("bench/skab.py: the csp nodes and the Detector disagree")
    live_free = live_detections(free_times, free_rows, cfg)
    base = {k: zscore_detections(f["rows"], f["times"]) for k, f in files.items()}
    base_free = zscore_detections(free_rows, free_times)

    result = {
        "benchmark": "skab",
        "corpus": str(root),
        "files": len(files),
        "rows": sum(len(f["rows"]) for f in files.values()),
        "cv": {
            "method": f"leave-one-file-out over {len(files)} files: configuration chosen on the others "
                      f"(among those with <= {FA_TARGET:g} false alarms/h on anomaly-free, or the fewest x1.25)",
            "anomaly_free": str(free),
            **score(files, held),
            "bootstrap_95": interval(files, held),
            "by_folder": by_folder(files, held),
            "chosen": chosen,
        },
        "in_sample": {
            "note": "the shipped [anomaly] defaults, chosen on skab-dev: optimistic there",
            "config": cv.label(cfg, cv.SENSOR_GRID),
            **score(files, live),
            "bootstrap_95": interval(files, live),
            "by_folder": by_folder(files, live),
            "anomaly_free_alarms_per_hour": alarms_per_hour(free_times, live_free),
        },
        "zscore": {
            "method": "per metric |z| > 4 over its previous 300 readings, 60 s quiet per metric",
            **score(files, base),
            "bootstrap_95": interval(files, base),
            "by_folder": by_folder(files, base),
            "anomaly_free_alarms_per_hour": alarms_per_hour(free_times, base_free),
        },
        "candidates_in_sample": {cv.label(c, cv.SENSOR_GRID): {"standard": score(files, o)["standard"], "anomaly_free_alarms_per_hour": fa}
                                 for c, o, fa in zip(configs, outputs, free_fa)},
        "seconds": round(t_cv, 1),
    }
    print(json.dumps(result, separators=(",", ":")))
    return result


if __name__ == "__main__":
    main()
