"""Sensors with settings of their own: the readings of each `[anomaly.groups.NAME]` go to a detector of their
own, those of each `[health.groups.NAME]` to a health node of their own, the rest to the section's.

A fleet is rarely one kind of machine: a compressor that cycles between regimes wants `change_hold = 0`, a
pump fleet beside it the default; one plant reports pressure in bar, another in kPa. A sensor takes the
first group, in the file's order, whose filters match its id; the answer is cached (bounded: anyone who
can publish can invent sensor ids).
"""

from __future__ import annotations

import functools
import re

import csp
from csp import ts
from edgewatch.agent.analytics.snapshot import state_name
from edgewatch.agent.config import AnomalyConfig, Config, HealthConfig, topic_pattern


class GroupOf:
    """sensor id -> index of its group among a section's `groups`, in file order (the last index: none, the
    section's own settings); `settings` holds (group name, its settings) at those indices ("" for the section)."""

    def __init__(self, section: AnomalyConfig | HealthConfig, cache: int):
        self.settings = [(name, group.settings) for name, group in section.groups.items()] + [("", section)]
        self.patterns = [re.compile("|".join(map(topic_pattern, group.sensors))) for group in section.groups.values()]
        self.index = functools.lru_cache(maxsize=cache)(self._match)

    def _match(self, sensor_id: str) -> int:
        return next((i for i, pattern in enumerate(self.patterns) if pattern.match(sensor_id)), len(self.patterns))


class StatesOf:
    """sensor id -> the names of the states its readings shape under `cfg`: its anomaly detector's (and its
    counters' last totals), its health node's and, with drift judged against peers, its peers' (a start that must
    warm some states up replays only the sensors that shape them)."""

    def __init__(self, cfg: Config):
        self.anomaly = GroupOf(cfg.anomaly, cfg.anomaly.max_series)
        self.health = GroupOf(cfg.health, cfg.health.max_sensors)
        self.reference = cfg.drift.reference

    def __call__(self, sensor_id: str) -> tuple[str, ...]:
        name, settings = self.anomaly.settings[self.anomaly.index(sensor_id)]
        group, health = self.health.settings[self.health.index(sensor_id)]
        states = (state_name("anomaly", name), state_name("health", group))
        if settings.counters:
            states += (state_name("counters", name),)
        peers = (health.drift_reference or self.reference) == "peers"
        return states + (state_name("drift_peers", group),) if peers else states


@csp.node
def split_by_group(items: ts[list["T"]], group_of: object, n: int) -> csp.OutputBasket(list[ts[list["T"]]], shape="n"):
    """The readings (or scores: anything with a `sensor_id`) of each group, in arrival order (`n`: the groups
    and the rest, the last)."""
    if csp.ticked(items):
        parts: dict[int, list] = {}
        for item in items:
            parts.setdefault(group_of.index(item.sensor_id), []).append(item)
        csp.output(parts)
