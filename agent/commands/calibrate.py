"""`edge-agent calibrate`: how many `anomaly` events recorded data raises at stricter settings, and the least
strict setting that stays within an alarm budget.

The detector's defaults were chosen on public benchmarks; a site's own machines alarm at their own rate (a
counter of a few events a minute raises about ten times the false alarms of Gaussian noise, a pump with
spiky vibration more than a calm one). Given captures of normal operation (`[record] path`), every alarm on
them is a false one: this runs the live detector over their sensor readings once per step of a ladder from
the settings as they are to the strictest, counts the events each step would have raised per sensor-hour,
and names the first step within `--budget`. With `--group NAME` only that group's sensors, with its settings;
without, the sensors outside every group, with `[anomaly]`. A CSV in `edge-agent score`'s format (a timestamp
column and one column per metric), such as an export from a historian, is one sensor's readings, named after
the file and judged with those settings: a site can calibrate on its history before the agent has captured any.

Each step asks for ten times rarer evidence: `tail_floor` divided by 10 (the tail probability a score of 1
stands for, so a score at `threshold` needs a rarer surprise: the per-metric verdicts and the correlation
channels), `change_z` up by 0.4 (a multi-metric sensor's change channels: about a tenth of the tail at these
values), `spatial_z` up by 1 (how far from its forecast a reading that breaks the range seen must be) and
`spike_z` up by 1 when it is on (how far from its slow reference a single reading must jump). The
event threshold stays: what a score means changes, not where events start. A stricter step finds fewer real
faults too: with `--faults` each step also runs over two copies of the readings with a fault injected into
every sensor (its first metric, 60 % of the way through its readings): a step of 4 sigma for 60 readings,
and a single reading 6 sigma off (sigma: that metric's standard deviation over the captures); a fault is found
when the copy raises an alarm for that sensor, from the fault to 60 readings after it, that the readings as
they are do not.

Captures are rarely all normal operation. With `--labels`, the operators' verdicts in the log (`edge-agent
label`) say which alarms were real: an alarm at a reading labelled real, or within 60 readings after it, is a
finding and not counted against the budget, and each step says how many of the readings labelled real and
labelled false it still raises an alarm at (a stricter step that keeps the real ones and drops the false ones
is the one to take).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path

from edgewatch.agent import config
from edgewatch.agent.analytics.anomaly import Detector, raises_event
from edgewatch.agent.analytics.counters import CounterRates
from edgewatch.agent.analytics.sensor_groups import GroupOf
from edgewatch.agent.commands.logfile import with_log
from edgewatch.agent.commands.replay import CaptureSource
from edgewatch.agent.commands.score import BATCH, PLAIN, InputError, TableFormat, iter_table, metrics_of, reading
from edgewatch.agent.config import AnomalyConfig, Config, ConfigError
from edgewatch.agent.kinds import LABELS
from edgewatch.agent.records import SensorReading
from edgewatch.agent.timeutil import parse_timestamp

STEPS = 6  # the settings as they are, then five stricter
CHANGE_Z_STEP = 0.4
SPATIAL_Z_STEP = 1.0
FAULTS = {"step": (4.0, 60), "spike": (6.0, 1)}  # kind -> (sigmas, readings it lasts)
FAULT_AT = 0.6  # of the way through a sensor's readings
AFTER = 60  # readings after a fault in which an alarm still finds it
LOUDEST = 10  # sensors listed by how many alarms they raise at the settings as they are


def ladder(s: AnomalyConfig, steps: int = STEPS) -> list[AnomalyConfig]:
    """`s`, then ever stricter: `tail_floor` a tenth a step, `change_z` up by 0.4, `spatial_z` and `spike_z` (when
    on) by 1."""
    return [dataclasses.replace(s, tail_floor=float(f"{s.tail_floor * 10.0 ** -k:.3g}"),
                                change_z=round(s.change_z + k * CHANGE_Z_STEP, 2),
                                spatial_z=s.spatial_z + k * SPATIAL_Z_STEP,
                                spike_z=s.spike_z + k * SPATIAL_Z_STEP if s.spike_z else 0.0) for k in range(steps)]


def calibrate(paths: list[str], cfg: Config, group: str | None = None, budget: float = 1.0,
              faults: bool = False, labels: list[dict] | None = None, fmt: TableFormat = PLAIN) -> dict:
    """The alarms each step of `ladder` raises on the sensor readings of `paths` (captures: those of `group`, or
    outside every group; CSVs: one sensor each), per sensor-hour of data time, and the first step within `budget`
    (None: none is); with `faults`, the share of injected faults each step finds. With `labels` (the log's labels
    of `anomaly` events, `Store.labels`), an alarm at a reading labelled real is not a false one: each step says how
    many of those it still raises, and how many labelled false. `fmt`: which columns of the CSVs are not metrics."""
    marked = {(lb["key"], parse_timestamp(lb["ts"])): lb["label"] for lb in labels or ()}
    at_label: dict[str, list[tuple[int, str]]] = {}  # sensor -> (reading index, label) of its labelled readings
    section = cfg.anomaly
    group_of = GroupOf(section, cache=section.max_series)
    wanted = [name for name, _ in group_of.settings].index(group or "")
    steps = ladder(group_of.settings[wanted][1])
    tables = [p for p in paths if _is_table(p)]
    captures = [p for p in paths if not _is_table(p)]

    def batches() -> Iterator[list[SensorReading]]:
        rates = CounterRates(steps[0])  # running totals reach the detector as rates, as in the agent
        if captures:
            source = CaptureSource(captures, cfg, feeds={"sensor"},
                                   sensors=lambda sensor: group_of.index(sensor) == wanted)
            while (item := source.next_batch()) is not None:
                if readings := rates(item[1].get("sensor", [])):
                    yield readings
        for path in tables:
            for readings in table_batches(path, fmt):
                if readings := rates(readings):
                    yield readings

    plan = _fault_plan(batches()) if faults else {}
    runs = ["clean", *(FAULTS if faults else ())]
    detectors = {(k, run): Detector(s) for k, s in enumerate(steps) for run in runs}
    alarms: dict[tuple[int, str], dict[str, set[int]]] = {key: {} for key in detectors}  # sensor -> reading indices
    seen: dict[str, int] = {}  # sensor -> readings so far
    span: dict[str, list] = {}  # sensor -> [first, last] reading time
    for readings in batches():
        at = []
        for r in readings:
            at.append(seen.get(r.sensor_id, 0))
            seen[r.sensor_id] = at[-1] + 1
            first_last = span.setdefault(r.sensor_id, [r.ts, r.ts])
            first_last[0], first_last[1] = min(first_last[0], r.ts), max(first_last[1], r.ts)
        index = {(r.sensor_id, r.ts): i for r, i in zip(readings, at)}  # a score names its reading so
        if marked:
            for key in marked.keys() & index.keys():
                at_label.setdefault(key[0], []).append((index[key], marked[key]))
        for run in runs:
            fed = readings if run == "clean" else _with_fault(readings, at, plan, run)
            for k, s in enumerate(steps):
                for sc in detectors[k, run].score_readings(fed, min_score=s.threshold):
                    if raises_event(sc, s.threshold):
                        alarms[k, run].setdefault(sc.sensor_id, set()).add(index[sc.sensor_id, sc.ts])
    if not seen:  # nothing to judge: say why, rather than that no step is within the budget
        where = f" of [anomaly.groups.{group}]" if group else ""
        raise InputError(f"no sensor readings{where} in {', '.join(paths)} (captures: under the sensors prefix "
                         f"{cfg.mqtt.sensors_prefix!r} of the configuration; give the agent's own with --config)")
    hours = sum((last - first).total_seconds() for first, last in span.values()) / 3600.0
    rows = []
    for k, s in enumerate(steps):
        clean = alarms[k, "clean"]
        n = sum(map(len, clean.values()))
        findings, raised = _labelled(clean, at_label)
        row = {"step": k, "tail_floor": s.tail_floor, "change_z": s.change_z, "spatial_z": s.spatial_z,
               "spike_z": s.spike_z, "alarms": n,
               "per_sensor_hour": round((n - findings) / hours, 4) if hours > 0 else None,
               "sensors_alarming": len(clean)}
        if labels is not None:
            row |= {f"{label}_raised": count for label, count in raised.items()}
        for kind, (_, length) in FAULTS.items() if faults else ():
            found = [sensor for sensor, (_, start, _) in plan.items()
                     if any(start <= i < start + length + AFTER for i in alarms[k, kind].get(sensor, set())
                            - clean.get(sensor, set()))]
            row[f"{kind}_found"] = round(len(found) / len(plan), 3) if plan else None
        rows.append(row)
    chosen = next((r["step"] for r in rows if r["per_sensor_hour"] is not None and r["per_sensor_hour"] <= budget),
                  None)
    found = [label for marks in at_label.values() for _, label in marks]
    return {"group": group, "sensors": len(span), "sensor_hours": round(hours, 3), "budget": budget,
            "readings": sum(seen.values()), "faults": len(plan), "steps": rows, "chosen": chosen,
            "loudest": _loudest(alarms[0, "clean"], span),
            "labels": None if labels is None else {"given": len(marked), "real": found.count("real"),
                                                   "false": found.count("false")}}



def _labelled(alarms: dict[str, set[int]], at_label: dict[str, list[tuple[int, str]]]) -> tuple[int, dict]:
    """How many of `alarms` (sensor -> reading indices) fall at or within AFTER readings after a reading labelled
    real (findings, not false alarms); and per label, how many labelled readings have an alarm there."""
    findings = 0
    raised = dict.fromkeys(LABELS, 0)
    for sensor, marks in at_label.items():
        hits = alarms.get(sensor, set())
        real = [m for m, label in marks if label == "real"]
        findings += sum(any(m <= i < m + AFTER for m in real) for i in hits)
        for m, label in marks:
            raised[label] += any(m <= i < m + AFTER for i in hits)
    return findings, raised


def _loudest(alarms: dict[str, set[int]], span: dict[str, list], n: int = LOUDEST) -> list[dict]:
    """The `n` sensors that raise the most alarms at the settings as they are (most per hour first): when a few
    raise most of them, a group of their own serves better than stricter settings for all."""
    rows = []
    for sensor, hits in alarms.items():
        hours = (span[sensor][1] - span[sensor][0]).total_seconds() / 3600.0
        rate = round(len(hits) / hours, 4) if hours > 0 else None
        rows.append({"sensor": sensor, "alarms": len(hits), "per_hour": rate})
    rows.sort(key=lambda r: (-(r["per_hour"] or 0.0), -r["alarms"], r["sensor"]))
    return rows[:n]


def _is_table(path: str) -> bool:
    return path.lower().endswith(".csv") and Path(path).is_file()


def table_batches(path: str, fmt: TableFormat = PLAIN) -> Iterator[list[SensorReading]]:
    """A CSV in `edge-agent score`'s format as the readings of one sensor, named after the file (its path as
    given), or of the sensors its `fmt.sensor_column` names, in batches of BATCH, read as they go; an unreadable
    file or row raises InputError naming the file."""
    with reading(path), open(path, newline="", encoding="utf-8") as f:
        columns, rows = iter_table(f, fmt=fmt)
        batch = []
        for _, _, when, xs, sensor in rows:
            if metrics := metrics_of(columns, xs):
                batch.append(SensorReading(sensor_id=sensor or path, ts=when, metrics=metrics, attrs={}))
            if len(batch) == BATCH:
                yield batch
                batch = []
        if batch:
            yield batch


def _fault_plan(batches: Iterator[list[SensorReading]]) -> dict[str, tuple[str, int, float]]:
    """sensor -> (its first metric by name, the reading index its faults start at, that metric's standard
    deviation over the captures); a sensor whose metric never moves gets none."""
    metric_of: dict[str, str] = {}
    counts: dict[str, int] = {}
    moments: dict[str, list[float]] = {}  # sensor -> [count, mean, sum of squared deviations] (Welford)
    for readings in batches:
        for r in readings:
            counts[r.sensor_id] = counts.get(r.sensor_id, 0) + 1
            x = r.metrics.get(metric_of.setdefault(r.sensor_id, min(r.metrics)))
            if x is None or not math.isfinite(x):
                continue
            m = moments.setdefault(r.sensor_id, [0.0, 0.0, 0.0])
            m[0] += 1.0
            d = x - m[1]
            m[1] += d / m[0]
            m[2] += d * (x - m[1])
    plan = {}
    for sensor, (n, _, m2) in moments.items():
        if n > 1 and m2 > 0.0:
            plan[sensor] = (metric_of[sensor], int(FAULT_AT * counts[sensor]), math.sqrt(m2 / n))
    return plan


def _with_fault(readings: list[SensorReading], at: list[int], plan: dict, kind: str) -> list[SensorReading]:
    """`readings` with the `kind` fault of each sensor's plan added where its reading index falls in it."""
    k, length = FAULTS[kind]
    out = []
    for r, i in zip(readings, at):
        fault = plan.get(r.sensor_id)
        if fault is not None and fault[1] <= i < fault[1] + length and fault[0] in r.metrics:
            metric, _, sigma = fault
            r = SensorReading(sensor_id=r.sensor_id, ts=r.ts, attrs=r.attrs,
                              metrics={**r.metrics, metric: r.metrics[metric] + k * sigma})
        out.append(r)
    return out


def _text(rep: dict) -> str:
    table = f"[anomaly.groups.{rep['group']}]" if rep["group"] else "[anomaly]"
    marked = rep["labels"]
    if marked is None:
        said = "every alarm on normal operation is a false one"
    else:
        said = (f"every alarm but those at readings labelled real is a false one ({marked['given']} labels in the "
                f"log, {marked['real']} real and {marked['false']} false at these readings)")
    labelled = LABELS if marked is not None else ()
    lines = [f"{rep['sensors']} sensors of {table}, {rep['sensor_hours']:.1f} sensor-hours of readings; {said}",
             f"{'step':>4} {'tail_floor':>10} {'change_z':>8} {'spatial_z':>9} {'alarms':>7} "
             f"{'false per sensor-hour':>21} {'sensors':>7}"
             + "".join(f" {kind + 's found':>12}" for kind in FAULTS if rep["faults"])
             + "".join(f" {label + ' raised':>12}" for label in labelled)]
    for r in rep["steps"]:
        rate = "-" if r["per_sensor_hour"] is None else f"{r['per_sensor_hour']:.3f}"
        found = "".join(f" {r[kind + '_found']:>12.0%}" for kind in FAULTS if rep["faults"])
        raised = "".join(f" {str(r[label + '_raised']) + ' of ' + str(marked[label]):>12}" for label in labelled)
        lines.append(f"{r['step']:>4} {r['tail_floor']:>10.3g} {r['change_z']:>8.3g} {r['spatial_z']:>9.3g} "
                     f"{r['alarms']:>7} {rate:>21} {r['sensors_alarming']:>7}{found}{raised}")
    if rep["loudest"]:
        share = sum(r["alarms"] for r in rep["loudest"]) / max(rep["steps"][0]["alarms"], 1)
        lines.append(f"loudest at the settings as they are ({share:.0%} of all alarms): " + ", ".join(
            f"{r['sensor']} {r['alarms']}" for r in rep["loudest"]))
    if rep["faults"]:
        lines.append(f"faults injected into copies of the readings of {rep['faults']} sensors: a step of 4 sigma for "
                     "60 readings, a single reading 6 sigma off")
    if rep["chosen"] is None:
        lines.append(f"no step stays within {rep['budget']:g} alarms per sensor-hour: the data is not normal "
                     "operation, or these sensors need settings of their own (docs/tuning.md)")
    elif rep["chosen"] == 0:
        lines.append(f"the settings as they are stay within {rep['budget']:g} alarms per sensor-hour")
    else:
        s = rep["steps"][rep["chosen"]]
        lines += [f"the least strict step within {rep['budget']:g} alarms per sensor-hour is {s['step']}:",
                  table, f"tail_floor = {s['tail_floor']:g}", f"change_z = {s['change_z']:g}",
                  f"spatial_z = {s['spatial_z']:g}", f"spike_z = {s['spike_z']:g}"]
    return "\n".join(lines)


def calibrate_command(args) -> int:
    """`edge-agent calibrate CAPTURE|CSV... [--config PATH] [--group NAME] [--budget R] [--faults] [--labels]
    [--db URL|PATH] [--time-column NAME] [--ignore NAME]... [--sensor-column NAME] [--json]`."""
    cfg = config.load(args.config)
    if args.group:
        config.group_named(cfg, args.group, ("anomaly",))
    missing = [p for p in args.captures if not Path(p).exists()]
    if missing:
        raise ConfigError(f"{missing[0]}: no such capture file, CSV or directory")
    if not args.budget > 0:
        raise ConfigError(f"--budget {args.budget:g}: must be above 0 (alarms per sensor-hour)")
    labels = None
    if args.labels:
        labels = []
        if code := with_log("calibrate", args, lambda store: labels.extend(store.labels(kinds=["anomaly"]))):
            return code
    try:
        rep = calibrate(args.captures, cfg, args.group, args.budget, args.faults, labels, TableFormat.of(args))
    except InputError as e:
        print(f"edge-agent calibrate: {e}", file=sys.stderr)
        return 2
    print(json.dumps(rep) if args.json else _text(rep), file=sys.stdout)
    return 0
