"""What the status page shows, read from the event log (read-only), the reading ring and the capture files.

Everything here runs on the page's HTTP threads, on a read-only connection of its
own: with SQLite in WAL mode readers never block the writer, so a page left open
costs the csp engine nothing. Every answer is bounded (rows, points, window).
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa
from edgewatch.agent.config import Config
from edgewatch.agent.eventlog.schema import bars, events
from edgewatch.agent.eventlog.store import Store
from edgewatch.agent.ingest.capture import PATTERN, CaptureReader
from edgewatch.agent.ingest.ring import Point, ReadingRing
from edgewatch.agent.ingest.validate import Parsed, Validator
from edgewatch.agent.timeutil import isoformat, utcnow

FLEET_ROWS = 1000  # sensors in the fleet table at most (worst health first)
TAIL_BATCH = 5000  # log rows read per step while catching the fleet up
TAIL_STEPS = 20  # ... and steps per request: a huge backlog is caught up over several requests
MAX_POINTS = 5000  # chart points per sensor at most (the latest kept)
MAX_EVENTS = 2000  # events per chart at most (the latest kept)
MAX_BARS = 5000  # bars per symbol chart at most
RECENT_BARS = 50_000  # the symbol list is read off this many latest bars
MAX_SYMBOLS = 200  # symbols listed at most
MAX_WINDOW = timedelta(days=1)  # longest chart window a request may ask for
SENSOR_KINDS = ("anomaly", "maintenance", "health")


def epoch(dt: datetime) -> float:
    """Naive-UTC datetime -> Unix seconds, the chart's x axis."""
    return dt.replace(tzinfo=timezone.utc).timestamp()


class Fleet:
    """Latest health and open maintenance flags per sensor, kept current by tailing the log by id."""

    def __init__(self, store: Store):
        self.store = store
        self.health: dict[str, dict] = {}
        self.flags: dict[str, list[str]] = {}
        self._after: int | None = None
        self._lock = threading.Lock()

    def refresh(self) -> None:
        with self._lock:
            if self._after is None:
                self._load()
            else:
                self._tail()

    def _load(self) -> None:
        """First call: each sensor's latest health and maintenance event, up to the log's newest id."""
        with self.store.engine.connect() as conn:
            top = conn.execute(sa.select(sa.func.max(events.c.id))).scalar() or 0
            for kind in ("health", "maintenance"):
                latest = (sa.select(sa.func.max(events.c.id)).where(events.c.kind == kind, events.c.id <= top)
                          .group_by(events.c.key))
                for row in conn.execute(sa.select(events.c.key, events.c.data).where(events.c.id.in_(latest))):
                    self._apply(kind, row.key, row.data)
        self._after = top

    def _tail(self) -> None:
        for _ in range(TAIL_STEPS):
            rows = self.store.events(kinds=("health", "maintenance"), after_id=self._after, limit=TAIL_BATCH)
            for e in rows:
                self._apply(e["kind"], e["key"], e["data"])
            if rows:
                self._after = rows[-1]["id"]
            if len(rows) < TAIL_BATCH:
                return

    def _apply(self, kind: str, sensor: str, data: dict) -> None:
        if kind == "health":
            self.health[sensor] = data
        else:
            self.flags[sensor] = list(data.get("active") or [])


class StatusViews:
    """The data behind each part of the page; `close()` releases the log connection."""

    def __init__(self, cfg: Config, ring: ReadingRing | None):
        self.store = Store(cfg.store.url, readonly=True)
        self.ring = ring
        self.capture_dir = Path(cfg.record.path) if cfg.record.path else None
        self.sensor_topic = cfg.mqtt.sensors_prefix + "/"
        self.validator = Validator(cfg)
        self.fleet_state = Fleet(self.store)

    def close(self) -> None:
        self.store.close()

    def fleet(self) -> list[dict]:
        """One row per sensor: health score and band, open maintenance flags, last seen; worst first."""
        state = self.fleet_state
        state.refresh()
        seen = self.ring.last_seen() if self.ring is not None else {}
        rows = []
        for sensor in state.health.keys() | state.flags.keys() | seen.keys():
            health = state.health.get(sensor, {})
            last = seen.get(sensor)
            rows.append({
                "sensor": sensor, "score": health.get("score"), "band": health.get("band"),
                "flags": state.flags.get(sensor, []),
                "last_seen": isoformat(last) if last is not None else health.get("last_reading"),
            })
        rows.sort(key=lambda r: (r["score"] if r["score"] is not None else 2.0, r["sensor"]))
        return rows[:FLEET_ROWS]

    def recent_events(self, after_id: int | None, limit: int) -> list[dict]:
        """The log's newest `limit` events (no `after_id`), else the oldest `limit` after it."""
        return self.store.events(after_id=after_id, limit=limit)

    def sensor(self, sensor_id: str, window: timedelta) -> dict:
        """The sensor's readings in the window (ring, then capture files before it) and its events."""
        since = utcnow() - min(window, MAX_WINDOW)
        ring = self.ring.readings(sensor_id) if self.ring is not None else []
        points = [p for p in ring if p[0] >= since]
        if self.capture_dir is not None and (not ring or ring[0][0] > since):
            points = self._captured(sensor_id, since, ring[0][0] if ring else None) + points
        points = sorted(points[-MAX_POINTS:], key=lambda p: p[0])  # arrival order is not always data order
        names = sorted({name for _, metrics in points for name in metrics})
        return {
            "sensor": sensor_id,
            "t": [epoch(ts) for ts, _ in points],
            "series": {name: [metrics.get(name) for _, metrics in points] for name in names},
            "events": self.store.events(kinds=SENSOR_KINDS, key=sensor_id, since=since, limit=MAX_EVENTS),
        }

    def _captured(self, sensor_id: str, since: datetime, before: datetime | None) -> list[Point]:
        """Readings of one sensor from the capture files, received from `since` until `before` (the ring's
        oldest reading): the files are in arrival order, so reading stops where the ring takes over."""
        topic = self.sensor_topic + sensor_id
        files = sorted(self.capture_dir.glob(PATTERN))
        # a file holds what arrived from its name's time until the next file's: skip those ending before `since`
        starts = [_file_start(f) for f in files[1:]] + [None]
        keep = [f for f, end in zip(files, starts) if end is None or end >= since]
        out: list[Point] = []
        for received_at, msg_topic, payload in CaptureReader(keep, topic):
            if before is not None and received_at >= before:
                break
            if msg_topic != topic or received_at < since:
                continue
            parsed = self.validator.parse(msg_topic, payload, received_at)
            if type(parsed) is Parsed and (before is None or parsed.record.ts < before):
                out.append((parsed.record.ts, parsed.record.metrics))
                if len(out) > 2 * MAX_POINTS:
                    del out[:MAX_POINTS]
        return out

    def symbols(self) -> list[str]:
        """Symbols among the latest RECENT_BARS bars (a range of the primary key: no scan of a month of bars)."""
        newest = sa.select(sa.func.max(bars.c.id)).scalar_subquery()
        q = (sa.select(bars.c.symbol).where(bars.c.id > newest - RECENT_BARS).distinct()
             .order_by(bars.c.symbol).limit(MAX_SYMBOLS))
        with self.store.engine.connect() as conn:
            return list(conn.execute(q).scalars())

    def symbol(self, symbol: str, window: timedelta) -> dict:
        """The symbol's VWAP bars in the window and its events (signals, price alerts, news, advice)."""
        since = utcnow() - min(window, MAX_WINDOW)
        q = (sa.select(bars).where(bars.c.symbol == symbol, bars.c.start >= since)
             .order_by(bars.c.start.desc()).limit(MAX_BARS))
        with self.store.engine.connect() as conn:
            rows = list(conn.execute(q))[::-1]
        return {
            "symbol": symbol,
            "t": [epoch(r.end) for r in rows],
            "series": {name: [getattr(r, name) for r in rows] for name in ("vwap", "high", "low", "close", "volume")},
            "events": self.store.events(key=symbol, since=since, limit=MAX_EVENTS),
        }


def _file_start(path: Path) -> datetime | None:
    """`capture-20250101T120000123456-000.jsonl` -> its first write time; None for a foreign name."""
    try:
        return datetime.strptime(path.name.split("-")[1], "%Y%m%dT%H%M%S%f")
    except (IndexError, ValueError):
        return None
