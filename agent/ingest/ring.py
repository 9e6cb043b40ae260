"""The latest readings per sensor, in memory, for the status page's chart.

Filled by the MQTT pump thread once per push batch (never by the csp engine),
read by the page's HTTP threads. Every bound is fixed: `length` readings per
sensor and `sensors` sensors, the least recently heard one dropped first, so a
flood of new sensor ids cannot grow it; and of a reading only its time and
first CHART_METRICS metrics, never its attributes, so a flood of large messages
cannot either (a message may carry 64 KiB of them).
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from datetime import datetime
from itertools import islice

from edgewatch.agent.records import SensorReading

Point = tuple[datetime, dict]  # (reading time, metric name -> value)
CHART_METRICS = 32  # metrics of a reading the chart can show; the rest are not held


class ReadingRing:
    """Per sensor, its last `length` readings; at most `sensors` sensors."""

    def __init__(self, length: int, sensors: int):
        self.length = length
        self.sensors = sensors
        self._rings: OrderedDict[str, deque[SensorReading]] = OrderedDict()
        self._lock = threading.Lock()

    def extend(self, sensor_ids: list[str], readings: list[SensorReading]) -> None:
        """Pump thread, once per batch (`sensor_ids[i]` is `readings[i].sensor_id`, read once by the caller):
        one lock per batch; a usual reading is held as it is (no copy), a large one as a slim copy."""
        if not self.length or not self.sensors:
            return
        rings, get, touch = self._rings, self._rings.get, self._rings.move_to_end
        with self._lock:
            for sensor_id, r in zip(sensor_ids, readings):
                ring = get(sensor_id)
                if ring is None:
                    ring = rings[sensor_id] = deque(maxlen=self.length)
                    if len(rings) > self.sensors:
                        rings.popitem(last=False)
                else:
                    touch(sensor_id)
                m = r.metrics
                if r.attrs or len(m) > CHART_METRICS:  # what the chart shows of it, nothing more
                    m = dict(islice(m.items(), CHART_METRICS))
                    r = SensorReading(sensor_id=sensor_id, ts=r.ts, metrics=m, attrs={})
                ring.append(r)

    def readings(self, sensor_id: str) -> list[Point]:
        """The sensor's ring as (ts, metrics), oldest first (empty when unknown or dropped)."""
        with self._lock:
            ring = self._rings.get(sensor_id)
            held = list(ring) if ring is not None else []
        return [(r.ts, r.metrics) for r in held]

    def last_seen(self) -> dict[str, datetime]:
        """Sensor -> time of its latest reading, for every sensor held."""
        with self._lock:
            return {sid: ring[-1].ts for sid, ring in self._rings.items()}
