"""Maintenance flags: reasons raised and cleared with hysteresis, so a flag does not flap.

Each reason watches one measure from the sensor's health state (bigger = worse,
battery is negated). It is raised when the measure reaches its raise level and
cleared only after `clear_readings` consecutive evaluations at or below the
lower clear level: a value wobbling around the raise level keeps the flag up.
"""

from __future__ import annotations

from datetime import datetime

from edgewatch.agent.analytics.snapshot import persisted
from edgewatch.agent.config import HealthConfig, MaintenanceConfig
from edgewatch.agent.records import Event, make_event

REASONS = ("stale", "stuck", "drift", "noisy", "out_of_range", "anomaly_burst", "low_battery")
STALE, STUCK, DRIFT, NOISY, OUT_OF_RANGE, ANOMALY_BURST, LOW_BATTERY = range(len(REASONS))
# a sensor already flagged for one of these produces anomalies because of it (a drift that snaps back, a
# stuck value that moves again): they explain the burst, so it is not raised as a separate reason, and
# health does not count them toward the anomaly rate (else the burst rises as the explaining reason clears)
EXPLAINS_ANOMALIES = frozenset((STUCK, DRIFT, NOISY, OUT_OF_RANGE))


class Rules:
    """Raise and clear levels per reason, derived once from the configuration."""

    __slots__ = ("raise_at", "clear_at", "clear_count")

    def __init__(self, h: HealthConfig, m: MaintenanceConfig):
        # measures: stale = age / stale_after, stuck = identical run, drift = z, noisy = ratio,
        # out_of_range = recent rate, anomaly_burst = recent rate, low_battery = -battery
        self.raise_at = (1.0, h.stuck_readings, h.drift_z, h.noise_ratio, m.out_of_range_rate, h.anomaly_rate,
                         -h.low_battery)
        self.clear_at = (1.0, 0, m.drift_clear_z, m.noise_clear_ratio, m.out_of_range_clear_rate,
                         m.anomaly_clear_rate, -(h.low_battery + m.battery_clear_margin))
        # a stale sensor is back as soon as it reports: only a long gap raises it, so it cannot flap
        self.clear_count = (1,) + (max(1, m.clear_readings),) * (len(REASONS) - 1)


@persisted
class Flags:
    """One sensor's raised reasons and, per raised reason, how long it has looked fine."""

    __slots__ = ("calm",)

    def __init__(self):
        self.calm = {}  # raised reason index -> consecutive calm evaluations

    def update(self, measures: tuple, rules: Rules, only: range | tuple = range(len(REASONS))) -> tuple[list, list]:
        """Apply the measures (None = not judged yet); return (newly raised, newly cleared) reason indexes."""
        raised, cleared = [], []
        calm = self.calm
        for i in only:
            m = measures[i]
            if m is None:
                continue
            if i in calm:
                if m <= rules.clear_at[i]:
                    calm[i] += 1
                    if calm[i] >= rules.clear_count[i]:
                        del calm[i]
                        cleared.append(i)
                else:
                    calm[i] = 0
            elif m >= rules.raise_at[i] and not (i == ANOMALY_BURST and not EXPLAINS_ANOMALIES.isdisjoint(calm)):
                calm[i] = 0
                raised.append(i)
        return raised, cleared

    def active(self) -> list[str]:
        return [REASONS[i] for i in sorted(self.calm)]


def maintenance_events(sensor_id: str, when: datetime, flags: Flags, raised: list, cleared: list,
                       evidence: dict) -> list[Event]:
    """`maintenance` events for one evaluation: one `raised` and/or one `cleared`, each listing its reasons."""
    out = []
    active = flags.active()
    for state, idx in (("raised", raised), ("cleared", cleared)):
        if not idx:
            continue
        reasons = [REASONS[i] for i in sorted(idx)]
        severity = "warning" if state == "raised" else "info"
        verb = "needs maintenance" if state == "raised" else "recovered"
        msg = f"{sensor_id} {verb}: {', '.join(reasons)}"
        data = {"state": state, "reasons": reasons, "active": active, **evidence}
        out.append(make_event("maintenance", sensor_id, when, severity, msg, data, state, *reasons))
    return out
