"""Proof that the csp engine is cycling, for the systemd watchdog and the /health endpoint.

A timer node inside the graph beats a `Heartbeat`; each beat also feeds the
systemd watchdog, so the pings come from the engine thread itself: a hung graph
stops beating, the pings stop, and systemd restarts the service.
"""

from __future__ import annotations

import time
from datetime import timedelta

import csp
from edgewatch.common.notify import Notifier


class Heartbeat:
    """The engine's last sign of life; each `beat()` also feeds the systemd watchdog."""

    def __init__(self, notifier: Notifier | None = None, max_age: float = 5.0):
        self.notifier = notifier
        self.max_age = max_age  # seconds without a beat after which the engine counts as stalled
        self.beats = 0
        self._last: float | None = None

    def beat(self) -> None:
        self._last = time.monotonic()
        self.beats += 1
        if self.notifier is not None:
            self.notifier.keepalive()

    def age(self) -> float:
        """Seconds since the last beat (infinite before the first)."""
        return float("inf") if self._last is None else time.monotonic() - self._last

    def fresh(self) -> bool:
        return self.age() <= self.max_age


@csp.node
def heartbeat(hb: Heartbeat, interval: timedelta):
    """Beat `hb` every `interval` while the engine runs (a sink node: csp keeps it without consumers)."""
    with csp.alarms():
        tick = csp.alarm(bool)
    with csp.start():
        csp.schedule_alarm(tick, timedelta(), True)
    if csp.ticked(tick):
        hb.beat()
        csp.schedule_alarm(tick, interval, True)
