"""Sensors with anomaly settings of their own: the readings of each `[anomaly.groups.NAME]` go to a detector
of their own, the rest to the one of `[anomaly]`.

A fleet is rarely one kind of machine: a compressor that cycles between regimes wants `change_hold = 0`, a
pump fleet beside it the default. A sensor takes the first group, in the file's order, whose filters
match its id; the answer is cached (bounded: anyone who can publish can invent sensor ids).
"""

from __future__ import annotations

import functools

import csp
from csp import ts
from edgewatch.agent.config import AnomalyGroup, topic_matches
from edgewatch.agent.records import SensorReading


class GroupOf:
    """sensor id -> index of its group in `groups` (len(groups): none, the `[anomaly]` settings)."""

    def __init__(self, groups: list[AnomalyGroup], cache: int):
        self.filters = [group.sensors for group in groups]
        self.index = functools.lru_cache(maxsize=cache)(self._match)

    def _match(self, sensor_id: str) -> int:
        for i, filters in enumerate(self.filters):
            if any(topic_matches(sensor_id, f) for f in filters):
                return i
        return len(self.filters)


@csp.node
def split_by_group(readings: ts[list[SensorReading]], group_of: object,
                   n: int) -> csp.OutputBasket(list[ts[list[SensorReading]]], shape="n"):
    """The readings of each group, in arrival order (`n`: the groups and the rest, the last)."""
    if csp.ticked(readings):
        parts: dict[int, list[SensorReading]] = {}
        for rd in readings:
            parts.setdefault(group_of.index(rd.sensor_id), []).append(rd)
        csp.output(parts)
