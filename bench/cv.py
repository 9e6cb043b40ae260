"""Cross-validation for the anomaly benchmarks (bench/nab.py, bench/skab.py): the candidate configurations and
the rule that picks one of them on training data only.

Every figure a benchmark prints as its headline comes from outputs that were produced with a configuration chosen
WITHOUT the data being scored: NAB leave-one-category-out over nab-dev, SKAB leave-one-file-out over skab-dev.
The held-out outputs of all folds are pooled and scored together (NAB: one threshold for the pooled corpus,
optimised the NAB way, and at each fold's own live threshold; SKAB: the detector's own `anomaly` events).
In-sample figures (the shipped defaults scored on the data they were chosen on) are printed beside, labelled.

The candidates differ in the choices the cross-validation is trusted with: the refractory period, the live
threshold, and the forecast's and the likelihood's time scales (two constants first fitted on all of nab-dev);
for a sensor of several metrics (SKAB) also which channels the sensor-level score takes (the metrics' own
verdicts, the pairs), the change channels' threshold and whether a fault's deviations teach their norm; everything else is the `[anomaly]` default. The fusion rule is not a candidate: `fuse = "bonferroni"`
is valid however a sensor's metrics correlate, while "fisher" assumes independent metrics and over-counts
correlated evidence (tests/agent/test_fusion.py), whatever it scores on a benchmark. The first value of each
key is the shipped default, so a tie keeps it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import multiprocessing
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from edgewatch.agent.config import AnomalyConfig  # noqa: E402

SHARED = Path(os.environ.get("SHARED_DIR", REPO.parent / "shared"))
DATA = SHARED / "data"

# the grid the cross-validation chooses from (one configuration for every series; nothing keyed to a file)
GRID = {
    "refractory": (100, 60),
    "threshold": (0.8, 0.9),
    "level_span": (20.0, 50.0),
    "short_span": (2.0, 5.0),
}
# the choices that only matter for a sensor of several metrics (SKAB), chosen with the threshold (the
# forecast's time scales stay at their defaults: they barely touch the sensor-level score)
SENSOR_GRID = {
    "sensor_refractory": (60, 45, 100),
    "threshold": GRID["threshold"],
    "fuse_metrics": (False, True),
    "pairs": (False, True),
    "change_z": (3.4, 3.6),  # values that keep simulated healthy sensors within 5 alarms an hour (bench/nab.py --healthy)
    "change_hold": (5.0, 0.0),
    "spike_z": (6.0, 0.0),
    "regime_visits": (5, 0),
}
# the detector's other constants, fitted on all of nab-dev before the cross-validation existed, with a neighbour
# on each side: `bench/nab.py --sensitivity` adds one key's neighbours at a time to GRID, to show how much the
# cross-validated figure owes to those constants being fitted on the categories it holds out
NEIGHBOURS = {
    "trend_span": (250.0, 1000.0, 0.0),
    "scale_span": (50.0, 200.0),
    "season_span": (15.0, 60.0),
    "season_min": (3, 10),
    "tail_floor": (1e-3, 1e-5),
    "long_span": (1000.0, 4000.0),
    "clip": (3.0, 6.0),
    "spatial_tolerance": (0.0, 0.1),
    "spatial_z": (3.0, 8.0),
    "warmup": (50, 200),
}
# the same for the sensor-level score's change channels, fitted on all of skab-dev (`bench/skab.py --sensitivity`)
SENSOR_NEIGHBOURS = {
    "change_window": (150, 600),
    "change_span": (6.0, 24.0),
    "change_norm_span": (1500.0, 6000.0),
}
# the keys that change only a multi-metric sensor's scores: a single-metric series (NAB) ignores them
FUSION_KEYS = ("fuse", "sensor_refractory", "pairs", "pair_span", "fuse_metrics", "change_window", "change_span",
               "change_z", "change_norm_span", "change_hold", "spike_z", "regime_visits")


def candidates(base: AnomalyConfig | None = None, grid: dict = GRID) -> list[AnomalyConfig]:
    base = base or AnomalyConfig()
    keys = list(grid)
    return [dataclasses.replace(base, **dict(zip(keys, vals))) for vals in itertools.product(*grid.values())]


def label(cfg: AnomalyConfig, grid: dict = GRID) -> str:
    return ",".join(f"{k}={getattr(cfg, k)}" for k in grid)


def load_nab_scorer(path: Path):
    spec = importlib.util.spec_from_file_location("nab_score", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_SHARED: list = []  # a worker's copy of the data every candidate runs on (see runs)


def _share(data: object) -> None:
    _SHARED[:] = [data]


def _run(job: tuple) -> object:
    fn, cfg = job
    return fn(cfg, _SHARED[0])


def runs(fn, configs: list, data: object, jobs: int) -> list:
    """[fn(cfg, data) for cfg in configs] on `jobs` worker processes; `data` (the corpus) reaches each worker once
    when the pool starts, not once per candidate. `fn` must be a module-level function."""
    with multiprocessing.Pool(jobs, initializer=_share, initargs=(data,)) as pool:
        return pool.map(_run, [(fn, c) for c in configs], chunksize=2)


def pick(scores: list[float]) -> int:
    """The index of the best training score (the first of equals: the grid lists the defaults first)."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def bootstrap_95(groups: list[list[str]], stat: Callable[[list[str]], float | None], draws: int = 2000,
                 seed: int = 0) -> list[float]:
    """A 95 % interval of `stat` over files drawn with replacement, each group keeping its number of files (NAB:
    its categories; SKAB: one group): how far a benchmark's figure could move on other files like these. A draw
    that `stat` cannot score (None) is left out."""
    rng = np.random.default_rng(seed)
    values = [stat([f for files in groups for f in rng.choice(files, len(files))]) for _ in range(draws)]
    return [round(float(x), 2) for x in np.percentile([v for v in values if v is not None], [2.5, 97.5])]
