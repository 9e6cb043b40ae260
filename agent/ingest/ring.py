"""The latest readings per sensor, in memory, for the status page's chart.

Filled by the MQTT pump thread once per push batch (never by the csp engine),
read by the page's HTTP threads. Both bounds are fixed: `length` readings per
sensor and `sensors` sensors, the least recently heard one dropped first, so a
flood of new sensor ids cannot grow it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Iterable
from datetime import datetime

from edgewatch.agent.records import SensorReading

Point = tuple[datetime, dict]  # (reading time, metric name -> value)


class ReadingRing:
    """Per sensor, its last `length` readings as (ts, metrics); at most `sensors` sensors."""

    def __init__(self, length: int, sensors: int):
        self.length = length
        self.sensors = sensors
        self._rings: OrderedDict[str, deque[Point]] = OrderedDict()
        self._lock = threading.Lock()

    def extend(self, readings: Iterable[SensorReading]) -> None:
        """Pump thread, once per batch: one lock for the whole batch."""
        if not self.length or not self.sensors:
            return
        rings = self._rings
        with self._lock:
            for r in readings:
                ring = rings.get(r.sensor_id)
                if ring is None:
                    ring = rings[r.sensor_id] = deque(maxlen=self.length)
                    if len(rings) > self.sensors:
                        rings.popitem(last=False)
                else:
                    rings.move_to_end(r.sensor_id)
                ring.append((r.ts, r.metrics))

    def readings(self, sensor_id: str) -> list[Point]:
        """A copy of the sensor's ring, oldest first (empty when unknown or dropped)."""
        with self._lock:
            ring = self._rings.get(sensor_id)
            return list(ring) if ring is not None else []

    def last_seen(self) -> dict[str, datetime]:
        """Sensor -> time of its latest reading, for every sensor held."""
        with self._lock:
            return {sid: ring[-1][0] for sid, ring in self._rings.items()}
