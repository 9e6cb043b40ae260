"""`edge-agent calibrate`: how many `anomaly` events recorded data raises at stricter settings, and the least
strict setting that stays within an alarm budget.

The detector's defaults were chosen on public benchmarks; a site's own machines alarm at their own rate (a
counter of a few events a minute raises about ten times the false alarms of Gaussian noise, a pump with
spiky vibration more than a calm one). Given captures of normal operation (`[record] path`), every alarm on
them is a false one: this runs the live detector over their sensor readings once per step of a ladder from
the settings as they are to the strictest, counts the events each step would have raised per sensor-hour,
and names the first step within `--budget`. With `--group NAME` only that group's sensors, with its settings;
without, the sensors outside every group, with `[anomaly]`.

Each step asks for ten times rarer evidence: `tail_floor` divided by 10 (the tail probability a score of 1
stands for, so a score at `threshold` needs a rarer surprise: the per-metric verdicts and the correlation
channels), `change_z` up by 0.4 (a multi-metric sensor's change channels: about a tenth of the tail at these
values) and `spatial_z` up by 1 (how far from its forecast a reading that breaks the range seen must be). The
event threshold stays: what a score means changes, not where events start. A stricter step finds fewer real
faults too: choose the budget an operator can act on.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from edgewatch.agent import config
from edgewatch.agent.analytics.anomaly import Detector, PartScore
from edgewatch.agent.analytics.sensor_groups import GroupOf
from edgewatch.agent.commands.replay import CaptureSource
from edgewatch.agent.config import AnomalyConfig, Config, ConfigError

STEPS = 6  # the settings as they are, then five stricter
CHANGE_Z_STEP = 0.4
SPATIAL_Z_STEP = 1.0


def ladder(s: AnomalyConfig, steps: int = STEPS) -> list[AnomalyConfig]:
    """`s`, then ever stricter: `tail_floor` a tenth a step, `change_z` up by 0.4 and `spatial_z` by 1."""
    return [dataclasses.replace(s, tail_floor=float(f"{s.tail_floor * 10.0 ** -k:.3g}"),
                                change_z=round(s.change_z + k * CHANGE_Z_STEP, 2),
                                spatial_z=s.spatial_z + k * SPATIAL_Z_STEP) for k in range(steps)]


def calibrate(paths: list[str], cfg: Config, group: str | None = None, budget: float = 1.0) -> dict:
    """The alarms each step of `ladder` raises on the sensor readings of `paths` (those of `group`, or outside
    every group), per sensor-hour of data time, and the first step within `budget` (None: none is)."""
    section = cfg.anomaly
    group_of = GroupOf(section, cache=section.max_series)
    names = [name for name, _ in group_of.settings]
    wanted = names.index(group or "")
    steps = ladder(group_of.settings[wanted][1])
    detectors = [Detector(s) for s in steps]
    alarms = [0] * len(steps)
    alarming: list[set[str]] = [set() for _ in steps]
    span: dict[str, list] = {}  # sensor -> [first, last] reading time
    source = CaptureSource(paths, cfg)
    while (item := source.next_batch()) is not None:
        readings = [r for r in item[1].get("sensor", ()) if group_of.index(r.sensor_id) == wanted]
        if not readings:
            continue
        for r in readings:
            seen = span.setdefault(r.sensor_id, [r.ts, r.ts])
            seen[0], seen[1] = min(seen[0], r.ts), max(seen[1], r.ts)
        for k, (s, d) in enumerate(zip(steps, detectors)):
            for sc in d.score_readings(readings, min_score=s.threshold):
                if sc.score >= s.threshold and not isinstance(sc, PartScore):  # what anomaly_events raises
                    alarms[k] += 1
                    alarming[k].add(sc.sensor_id)
    hours = sum((last - first).total_seconds() for first, last in span.values()) / 3600.0
    rows = [{"step": k, "tail_floor": s.tail_floor, "change_z": s.change_z, "spatial_z": s.spatial_z, "alarms": n,
             "per_sensor_hour": round(n / hours, 4) if hours > 0 else None, "sensors_alarming": len(who)}
            for k, (s, n, who) in enumerate(zip(steps, alarms, alarming))]
    chosen = next((r["step"] for r in rows if r["per_sensor_hour"] is not None and r["per_sensor_hour"] <= budget),
                  None)
    return {"group": group, "sensors": len(span), "sensor_hours": round(hours, 3), "budget": budget,
            "readings": sum(source.accepted.values()), "steps": rows, "chosen": chosen}


def _text(rep: dict) -> str:
    table = f"[anomaly.groups.{rep['group']}]" if rep["group"] else "[anomaly]"
    lines = [f"{rep['sensors']} sensors of {table}, {rep['sensor_hours']:.1f} sensor-hours of captured readings; "
             f"every alarm on normal operation is a false one",
             f"{'step':>4} {'tail_floor':>10} {'change_z':>8} {'spatial_z':>9} {'alarms':>7} {'per sensor-hour':>15} "
             f"{'sensors':>7}"]
    for r in rep["steps"]:
        rate = "-" if r["per_sensor_hour"] is None else f"{r['per_sensor_hour']:.3f}"
        lines.append(f"{r['step']:>4} {r['tail_floor']:>10.3g} {r['change_z']:>8.3g} {r['spatial_z']:>9.3g} "
                     f"{r['alarms']:>7} {rate:>15} {r['sensors_alarming']:>7}")
    if rep["chosen"] is None:
        lines.append(f"no step stays within {rep['budget']:g} alarms per sensor-hour: the data is not normal "
                     "operation, or these sensors need settings of their own (docs/reference/configuration.md)")
    elif rep["chosen"] == 0:
        lines.append(f"the settings as they are stay within {rep['budget']:g} alarms per sensor-hour")
    else:
        s = rep["steps"][rep["chosen"]]
        lines += [f"the least strict step within {rep['budget']:g} alarms per sensor-hour is {s['step']}:",
                  table, f"tail_floor = {s['tail_floor']:g}", f"change_z = {s['change_z']:g}",
                  f"spatial_z = {s['spatial_z']:g}"]
    return "\n".join(lines)


def calibrate_command(args) -> int:
    """`edge-agent calibrate CAPTURE... [--config PATH] [--group NAME] [--budget R] [--json]`."""
    cfg = config.load(args.config)
    if args.group:
        config.group_named(cfg, args.group, ("anomaly",))
    missing = [p for p in args.captures if not Path(p).exists()]
    if missing:
        raise ConfigError(f"{missing[0]}: no such capture file or directory")
    if not args.budget > 0:
        raise ConfigError(f"--budget {args.budget:g}: must be above 0 (alarms per sensor-hour)")
    rep = calibrate(args.captures, cfg, args.group, args.budget)
    print(json.dumps(rep) if args.json else _text(rep), file=sys.stdout)
    return 0
