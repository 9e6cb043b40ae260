"""Running totals as rates: the metrics named in `anomaly.counters` are judged by how fast they grow.

An energy meter publishes its kWh so far, a switch its packets so far. As values they only grow: the
forecast follows them with its trend, a doubling of consumption shows late, and a meter that resets to
zero breaks the range seen. What an operator watches is the rate, so before the detector each such
metric is replaced by its change per second since the sensor's previous reading, named `<metric>_rate`.
A reading with no rate yet (the sensor's first, one out of order, one after a reset: the total fell) goes
to the detector without that metric; the next one has a rate again.
"""

from __future__ import annotations

from datetime import datetime

import csp
from csp import ts
from edgewatch.agent.analytics.snapshot import keep, state_name
from edgewatch.agent.analytics.states import RecentStates
from edgewatch.agent.config import AnomalyConfig
from edgewatch.agent.records import SensorReading

SUFFIX = "_rate"


class CounterRates:
    """(sensor, counter) -> its last (time, total), at most `cap` of them (the longest-silent forgotten: that
    counter's next reading then has no rate)."""

    def __init__(self, cfg: AnomalyConfig, totals: RecentStates | None = None):
        self.counters = frozenset(cfg.counters)
        self.totals = totals if totals is not None else RecentStates(cfg.max_series, "counters")

    def __call__(self, readings: list[SensorReading]) -> list[SensorReading]:
        """`readings` with each counter replaced by its rate; a reading left with no metric is dropped."""
        out = []
        for r in readings:
            if self.counters.isdisjoint(r.metrics):
                out.append(r)
                continue
            metrics = {}
            for name, x in r.metrics.items():
                if name not in self.counters:
                    metrics[name] = x
                elif (rate := self._rate(r.sensor_id, name, r.ts, x)) is not None:
                    metrics[name + SUFFIX] = rate
            if metrics:
                out.append(SensorReading(sensor_id=r.sensor_id, ts=r.ts, metrics=metrics, attrs=r.attrs))
        return out

    def _rate(self, sensor_id: str, name: str, when: datetime, total: float) -> float | None:
        key = (sensor_id, name)
        last = self.totals.get(key)
        if last is not None and when <= last[0]:
            return None  # out of order: neither a rate nor the new last total
        self.totals[key] = (when, total)
        if last is None or total < last[1]:
            return None  # the first total, or a reset
        return (total - last[1]) / (when - last[0]).total_seconds()


@csp.node(memoize=False)
def counter_rates(readings: ts[list[SensorReading]], cfg: AnomalyConfig, states: object = None,
                  group: str = "") -> ts[list[SensorReading]]:
    """The readings with `cfg.counters` as rates; the last totals are kept in `states` (`counters:NAME` for a
    group), so a restart does not lose a rate."""
    with csp.state():
        name = state_name("counters", group)
        s_rates = CounterRates(cfg, keep(states, name, RecentStates(cfg.max_series, name)))
    if csp.ticked(readings):
        out = s_rates(readings)
        if out:
            return out
