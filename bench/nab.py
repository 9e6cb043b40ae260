"""NAB benchmark of the anomaly detector: cross-validated (the headline) and in-sample, against the rolling z-score.

Headline: leave-one-category-out cross-validation over nab-dev. For each of its
four categories, the configuration is chosen among bench/cv.py's candidates on
the other three categories (NAB standard score, threshold optimised over them),
and the held-out category is scored with it; the four held-out outputs are then
pooled and scored together with the shared NAB scorer, the NAB way (one
threshold optimised over the pooled corpus; artificialNoAnomaly, which has no
windows, only counts there) and at each fold's own live `anomaly.threshold`
(the honest figure). No file is ever scored with a configuration chosen on it.
Beside the standard score, a 95 % bootstrap interval over files (`bootstrap_95`):
how far the figure could move on other files like these.

Beside it, labelled in-sample: the shipped `[anomaly]` defaults scored on all of
nab-dev through `edge-agent score`'s code path (the `anomaly_scores` csp node in
historical mode); the defaults were chosen on this data, so this figure is
optimistic. The causal rolling z-score baseline (bench/zscore.py) is scored on
the same corpus. Prints ONE JSON line.

`--healthy` instead measures what NAB's probation period hides: false alarms on
healthy simulated sensors (agent/testing/simulator.py, faults off) from the first
reading on, per 1000 scored reading-metrics after the warm-up, and the recall
of injected spike faults with the false alarms outside them.

    python bench/nab.py [--data DIR] [--scorer PATH] [--config PATH] [--out DIR]
    python bench/nab.py --healthy [--sensors N] [--readings N] [--config PATH]
    python bench/nab.py --perturb [--data DIR] [--config PATH]
    python bench/nab.py --sensitivity [--data DIR] [--config PATH] [--jobs N]

`--sensitivity` repeats the cross-validation with one more key in the grid at a time (bench/cv.py's
NEIGHBOURS: the detector's other constants, fitted on all of nab-dev, each with a neighbour on either side),
~340 candidate runs (about 10 minutes on 2 cores): how much the headline owes to those constants.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgewatch.agent import config  # noqa: E402
from edgewatch.agent.analytics.anomaly import FUSED, Detector, raises_event  # noqa: E402
from edgewatch.agent.commands.score import read_series, score_series  # noqa: E402
from edgewatch.agent.records import SensorReading  # noqa: E402
from edgewatch.agent.testing.simulator import SimConfig, Simulator  # noqa: E402
from edgewatch.agent.timeutil import parse_timestamp  # noqa: E402

from bench import cv  # noqa: E402
from bench.zscore import zscore_series  # noqa: E402

SHARED = Path(os.environ.get("SHARED_DIR", REPO.parent / "shared"))
PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")
BASELINE_FIXED = 0.7  # z = 7: near the baseline's own optimum on nab-dev (generous to it; z = 3 scores -226)


def nab_files(corpus: Path) -> list[str]:
    return sorted(json.loads((corpus / "labels" / "windows.json").read_text()))


def write_scores(path: Path, rows: list, scores: list[float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("timestamp,value,anomaly_score\n")
        f.writelines(f"{t},{v},{s!r}\n" for (t, v, _, _), s in zip(rows, scores))


class Scorer:
    """The shared NAB scorer, in process, over any subset of the corpus (normalised over that subset's windows)."""

    def __init__(self, scorer: Path, corpus: Path):
        self.nab = cv.load_nab_scorer(scorer)
        self.corpus = self.nab.Corpus(str(corpus))

    def score(self, scores: dict, files: list[str] | None = None, threshold: float | None = None,
              profiles=PROFILES) -> dict:
        nab, full = self.nab, self.corpus
        sub = copy.copy(full)
        sub.files = sorted(files or full.files)
        sub.n_label_windows = sum(len(full.windows[f]) for f in sub.files)
        points = nab.build_points(sub, scores)
        out = {}
        for p in profiles:
            cost = full.profiles[p]
            r = nab.sweep(*points, cost) if threshold is None else nab.score_at_threshold(*points, cost, threshold)
            row = {"threshold": r["threshold"], "windows_detected": f"{r['windows_detected']}/{r['windows_scored']}",
                   "fp_rows": r["fp_rows"]}
            if sub.n_label_windows:
                perfect = cost["tpWeight"] * sub.n_label_windows
                row["normalized"] = round(100.0 * (r["raw_score"] - r["null_score"]) / (perfect - r["null_score"]), 2)
            out[p] = row
        return out

    def interval(self, scores: dict, threshold: float, profile: str = "standard", draws: int = 2000,
                 seed: int = 0) -> list[float]:
        """A 95 % bootstrap interval of the normalised score at `threshold`: the files of each category drawn
        with replacement (a category keeps its number of files), each file's raw score and windows summed. It
        says how far the figure could move on other files like these; the threshold stays fixed."""
        nab, corpus = self.nab, self.corpus
        cost = corpus.profiles[profile]
        points, windows = nab.build_points(corpus, scores)
        raw = nab.score_at_threshold(points, windows, cost, threshold)["per_file_raw"]
        counts = {f: 0 for f in corpus.files}
        for f, _ in windows:
            counts[f] += 1
        by_cat: dict[str, list[str]] = {}
        for f in sorted(corpus.files):
            by_cat.setdefault(f.split("/")[0], []).append(f)

        def normalised(drawn: list[str]) -> float | None:
            w = sum(counts[f] for f in drawn)
            if not w:
                return None
            null, perfect = -cost["fnWeight"] * w, cost["tpWeight"] * w
            return 100.0 * (sum(raw.get(f, 0.0) for f in drawn) - null) / (perfect - null)

        return cv.bootstrap_95(list(by_cat.values()), normalised, draws, seed)


def detector_scores(series: list, cfg) -> list[float]:
    """The detector's scores of one file (the same numbers as the csp node: tests/agent/test_score.py)."""
    readings = [SensorReading(sensor_id="s", ts=t, metrics={"value": x}, attrs={}) for t, x in series]
    return [sc.score for sc in Detector(cfg).score_readings(readings)]


def loco(scorer: Scorer, files: list[str], outputs: list[dict], configs: list) -> dict:
    """Leave-one-category-out: per held-out category, the candidate best on the others (standard profile,
    threshold optimised over them); the held-out outputs pooled and scored together."""
    cats = sorted({f.split("/")[0] for f in files})
    pooled, binary, chosen = {}, {}, {}
    for held in cats:
        train = [f for f in files if not f.startswith(held + "/")]
        fit = [scorer.score(o, train, profiles=("standard",))["standard"]["normalized"] for o in outputs]
        i = cv.pick(fit)
        chosen[held] = {"config": cv.label(configs[i]), "train_standard": fit[i], "index": i}
        thr = configs[i].threshold
        for f in files:
            if f.startswith(held + "/"):
                pooled[f] = outputs[i][f]
                binary[f] = [1.0 if x >= thr else 0.0 for x in outputs[i][f]]
    opt = scorer.score(pooled)
    opt["standard"]["bootstrap_95"] = scorer.interval(pooled, opt["standard"]["threshold"])
    held_out = {}
    for cat in cats:
        sub = [f for f in files if f.startswith(cat + "/")]
        held_out[cat] = scorer.score(pooled, sub, threshold=opt["standard"]["threshold"], profiles=("standard",))["standard"]
    return {
        "method": "leave-one-category-out over nab-dev: configuration chosen on the other 3 categories, "
                  "held-out outputs pooled and scored together",
        "optimised": opt,
        "fixed": scorer.score(binary, threshold=1.0),  # each fold at its own live anomaly.threshold
        "chosen": chosen,
        "held_out_by_category_at_pooled_threshold": held_out,
    }


def scores_of(cfg, series_of: dict) -> dict:
    """One candidate's scores of every file ({file: series})."""
    return {rel: detector_scores(xs, cfg) for rel, xs in series_of.items()}


def sensitivity(scorer: Scorer, files: list[str], series_of: dict, cfg, jobs: int) -> dict:
    """The leave-one-category-out figure with bench/cv.py's GRID, then with each NEIGHBOURS key added to it
    (its default and its neighbours), one key at a time; and each neighbour's in-sample score with the GRID
    defaults."""
    base = cv.candidates(cfg)
    extra = [(key, dataclasses.replace(c, **{key: v})) for key, vals in cv.NEIGHBOURS.items() for v in vals for c in base]
    outs = cv.runs(scores_of, base + [c for _, c in extra], series_of, jobs)
    base_outs, extra_outs = outs[:len(base)], outs[len(base):]

    def summary(r: dict) -> dict:
        return {"loco_optimised": r["optimised"]["standard"]["normalized"],
                "loco_live_thresholds": r["fixed"]["standard"]["normalized"],
                "held_out_by_category": {k: v.get("normalized") for k, v in
                                         r["held_out_by_category_at_pooled_threshold"].items()}}

    result = {"grid": summary(loco(scorer, files, base_outs, base))}
    for key in cv.NEIGHBOURS:
        mine = [(c, o) for (k, c), o in zip(extra, extra_outs) if k == key]
        configs = base + [c for c, _ in mine]
        r = loco(scorer, files, base_outs + [o for _, o in mine], configs)
        row = summary(r)
        row["chosen"] = {held: f"{key}={getattr(configs[c['index']], key)}" for held, c in r["chosen"].items()}
        row["in_sample"] = {f"{key}={getattr(c, key)}": scorer.score(o, profiles=("standard",))["standard"]["normalized"]
                            for c, o in mine if cv.label(c) == cv.label(cfg)}
        result[f"+{key}"] = row
    return result


def core_us_per_reading(series: list, cfg, repeats: int = 3) -> float:
    """The detector's own cost per reading (no csp, no input struct creation); best of a few runs."""
    readings = [SensorReading(sensor_id="s", ts=t, metrics={"value": x}, attrs={}) for t, x in series]
    best = float("inf")
    for _ in range(repeats):
        det = Detector(cfg)
        t0 = time.perf_counter()
        det.score_readings(readings)
        best = min(best, time.perf_counter() - t0)
    return best / len(readings) * 1e6


def simulated_alarms(cfg, sim: Simulator) -> list[tuple[str, str, datetime, int]]:
    """(sensor, metric, ts, readings of that key so far) of every alarm (`anomaly` event) on the simulator's
    sensor feed; a sensor-level alarm is attributed to its most surprising metric."""
    det = Detector(cfg)
    alarms = []
    for m in sim.messages():
        metrics = {k: float(v) for k, v in m.payload.items() if k != "ts" and isinstance(v, (int, float))}
        rd = SensorReading(sensor_id=m.topic.removeprefix("sensors/"), ts=parse_timestamp(m.payload["ts"]),
                           metrics=metrics, attrs={})
        for sc in det.score_readings([rd]):
            if raises_event(sc, cfg.threshold):
                metric = sc.top if sc.metric == FUSED else sc.metric  # a fused alarm: its most surprising metric
                alarms.append((sc.sensor_id, metric, sc.ts, det.readings(sc.sensor_id, metric)))
    return alarms


def healthy(cfg, sensors: int, readings: int, seed: int = 0) -> dict:
    """False alarms on healthy simulated sensors, by phase and metric; recall of injected spikes."""
    start = datetime(2024, 1, 1, 8)
    sim = Simulator(SimConfig(sensors=sensors, symbols=0, faults=False, seed=seed, duration=float(readings)), start)
    t0 = time.perf_counter()
    alarms = simulated_alarms(cfg, sim)
    elapsed = time.perf_counter() - t0
    keys = sensors * 4  # temperature, humidity, pressure, battery
    scored = keys * max(readings - cfg.warmup, 0)
    phases = {"101-300": (cfg.warmup, 300), "301-1000": (300, 1000), "1001+": (1000, 1 << 62)}
    by_phase = {}
    for name, (lo, hi) in phases.items():
        rows = keys * max(min(readings, hi) - lo, 0)
        if rows:
            hits = sum(lo < n <= hi for *_, n in alarms)
            by_phase[name] = {"alarms": hits, "per_1000": round(1000.0 * hits / rows, 3)}
    by_metric: dict[str, int] = {}
    for _, metric, _, _ in alarms:
        by_metric[metric] = by_metric.get(metric, 0) + 1

    spikes = Simulator(SimConfig(sensors=sensors, symbols=0, faults=True, fault_fraction=0.2, fault_kinds=("spike",),
                                 seed=seed, duration=float(readings)), start)
    s_alarms = simulated_alarms(cfg, spikes)
    windows = {(f.key, f.metric): f for f in spikes.faults}
    inside = {(sid, metric) for sid, metric, ts, _ in s_alarms
              if (f := windows.get((sid, metric))) and f.start <= ts < f.end}
    outside = sum(1 for sid, metric, ts, _ in s_alarms
                  if not ((f := windows.get((sid, metric))) and f.start <= ts < f.end))
    return {
        "benchmark": "healthy-sensors",
        "sensors": sensors,
        "readings_per_sensor": readings,
        "threshold": cfg.threshold,
        "alarms": len(alarms),
        "alarms_per_1000": round(1000.0 * len(alarms) / scored, 3) if scored else None,
        "by_phase": by_phase,
        "by_metric": by_metric,
        "us_per_reading_metric": round(elapsed / (keys * readings) * 1e6, 2),
        "spike_faults": len(windows),
        "spike_faults_detected": len(inside),
        "false_alarms_with_spikes": outside,
    }


def perturbed(series: list, kind: str, seed: int = 0) -> list:
    """The same series in other units or from a coarser or noisier sensor: `offset` moves its zero by 20 standard
    deviations plus twice its mean magnitude, `quantised` rounds it to an eighth of its standard deviation, `noise`
    adds Gaussian noise of 5 % of it. The labels still hold; a detector that generalises should barely notice."""
    xs = np.array([x for _, x in series])
    sd = float(xs.std()) or 1.0
    if kind == "offset":
        ys = xs + 20.0 * sd + 2.0 * float(np.abs(xs).mean())
    elif kind == "quantised":
        ys = np.round(xs / (sd / 8.0)) * (sd / 8.0)
    else:
        ys = xs + np.random.default_rng(seed).normal(0.0, 0.05 * sd, len(xs))
    return [(t, float(y)) for (t, _), y in zip(series, ys)]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help="folder holding nab-dev/ (default: $SHARED_DIR/data)")
    ap.add_argument("--corpus", type=Path, help="the nab-dev folder itself (default: DATA/nab-dev)")
    ap.add_argument("--scorer", type=Path, help="NAB scorer (default: DATA/../tools/nab_score.py, else $SHARED_DIR/tools/nab_score.py)")
    ap.add_argument("--config", help="agent configuration whose [anomaly] section is used")
    ap.add_argument("--out", type=Path, help="also write the in-sample score CSVs here (detector/, zscore/)")
    ap.add_argument("--healthy", action="store_true", help="false alarms on healthy simulated sensors instead")
    ap.add_argument("--perturb", action="store_true",
                    help="instead: in-sample scores on nab-dev offset, quantised and noisier (a generalisation probe)")
    ap.add_argument("--sensitivity", action="store_true",
                    help="instead: the cross-validation with each of the detector's other constants added to the grid")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="--sensitivity: worker processes")
    ap.add_argument("--sensors", type=int, default=300, help="--healthy: simulated sensors")
    ap.add_argument("--readings", type=int, default=500, help="--healthy: readings per sensor")
    args = ap.parse_args(argv)
    cfg = config.load(args.config).anomaly
    if args.healthy:
        result = healthy(cfg, args.sensors, args.readings)
        print(json.dumps(result, separators=(",", ":")))
        return result

    data = args.data or (args.corpus.parent if args.corpus else SHARED / "data")
    corpus = args.corpus or data / "nab-dev"
    if not (corpus / "labels" / "windows.json").is_file():
        ap.exit(2, f"bench/nab.py: no NAB corpus at {corpus} (give --data DIR holding nab-dev/, or --corpus DIR)\n")
    scorer_path = args.scorer or next((p for p in (data.parent / "tools" / "nab_score.py", SHARED / "tools" / "nab_score.py")
                                       if p.is_file()), None)
    if scorer_path is None or not scorer_path.is_file():
        ap.exit(2, f"bench/nab.py: no NAB scorer at {scorer_path or data.parent / 'tools' / 'nab_score.py'} (give --scorer PATH)\n")
    scorer = Scorer(scorer_path, corpus)
    files = nab_files(corpus)
    rows_of, series_of = {}, {}
    for rel in files:
        with open(corpus / "data" / rel, newline="", encoding="utf-8") as f:
            rows_of[rel] = read_series(f)
        series_of[rel] = [(when, x) for _, _, when, x in rows_of[rel]]
    rows_total = sum(len(r) for r in rows_of.values())
    if args.perturb:
        def scored(kind: str) -> dict:
            return {rel: detector_scores(series_of[rel] if kind == "as_is" else perturbed(series_of[rel], kind), cfg)
                    for rel in files}

        result = {"benchmark": "nab-dev-perturbed", "config": "the [anomaly] defaults, in-sample",
                  "standard_optimised": {kind: scorer.score(scored(kind), profiles=("standard",))["standard"]
                                         for kind in ("as_is", "offset", "quantised", "noise")}}
        print(json.dumps(result, separators=(",", ":")))
        return result

    if args.sensitivity:
        result = {"benchmark": "nab-dev-sensitivity", "config": "the [anomaly] defaults; GRID from bench/cv.py",
                  **sensitivity(scorer, files, series_of, cfg, args.jobs)}
        print(json.dumps(result, separators=(",", ":")))
        return result

    # in-sample: the shipped configuration through the live csp node (edge-agent score's code path)
    t0 = time.perf_counter()
    live = {rel: score_series(series_of[rel], cfg) for rel in files}
    t_node = time.perf_counter() - t0
    t0 = time.perf_counter()
    base = {rel: zscore_series([x for _, x in series_of[rel]]) for rel in files}
    t_base = time.perf_counter() - t0
    # cross-validated: every candidate on every file, then leave-one-category-out selection
    configs = cv.candidates(cfg)
    outputs, done = [], {}
    for c in configs:  # the fusion keys do not change a single metric's scores: each distinct run once
        single = dataclasses.replace(c, **{k: getattr(cfg, k) for k in cv.FUSION_KEYS})
        key = cv.label(single)  # the candidates differ in GRID's keys only
        if key not in done:
            done[key] = live if single == cfg else scores_of(single, series_of)
        outputs.append(done[key])
    core = [(core_us_per_reading(series_of[rel], cfg, repeats=1), len(series_of[rel])) for rel in files[::6]]
    if args.out:
        for rel in files:
            write_scores(args.out / "detector" / rel, rows_of[rel], live[rel])
            write_scores(args.out / "zscore" / rel, rows_of[rel], base[rel])

    result = {
        "benchmark": "nab-dev",
        "files": len(files),
        "rows": rows_total,
        "cv": loco(scorer, files, outputs, configs),
        "in_sample": {
            "note": "the shipped [anomaly] defaults, chosen on nab-dev: optimistic there",
            "config": cv.label(cfg),
            "optimised": (in_sample := scorer.score(live)),
            "optimised_bootstrap_95": scorer.interval(live, in_sample["standard"]["threshold"]),
            "fixed": scorer.score(live, threshold=cfg.threshold),
        },
        "zscore": {
            "optimised": scorer.score(base),
            "fixed": scorer.score(base, threshold=BASELINE_FIXED),
        },
        "candidates_in_sample_standard": {cv.label(c): scorer.score(o, profiles=("standard",))["standard"]["normalized"]
                                          for c, o in zip(configs, outputs)},
        "detector_threshold": cfg.threshold,
        "us_per_reading": {
            "detector_core": round(sum(u * n for u, n in core) / sum(n for _, n in core), 2),
            "detector_csp_node": round(t_node / rows_total * 1e6, 2),
            "zscore": round(t_base / rows_total * 1e6, 2),
        },
    }
    print(json.dumps(result, separators=(",", ":")))
    return result


if __name__ == "__main__":
    main()
