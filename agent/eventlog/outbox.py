"""The event log is the outbox: events and VWAP bars reach MQTT from the log, never around it.

After each commit the writer hands the newly logged rows to `on_commit`, which
publishes them at once (QoS 1) when the broker is connected. PUBACKs mark their
rows published in one statement per `flush_interval` (from the outbox thread,
never from paho's thread): one UPDATE per commit would double the writer's work. On
start and after every reconnect the outbox republishes whatever the log still
holds unpublished, so an event logged while the broker was away, or before an
agent crash, is published later; rows already in flight are skipped, because
paho itself resends those on reconnect.

Bars take the same path at their own pace (one per symbol and interval): a commit that logged bars
wakes the outbox thread, which publishes the log's unpublished bars, each retained on
`{output_prefix}/bars/{symbol}` so that a subscriber joining later gets every symbol's latest bar.
"""

from __future__ import annotations

import collections
import functools
import threading

from edgewatch.agent.ingest.mqtt import Link
from edgewatch.agent.ops import metrics
from edgewatch.agent.encoding import json_dumps
from edgewatch.common.logs import get

log = get("edgewatch.agent.eventlog.outbox")

PAGE = 1000  # unpublished rows read per query while draining the backlog
MAX_INFLIGHT = 20_000  # unacknowledged publishes at most: paho's message ids wrap at 65535


def payload(row: dict) -> bytes:
    """One event or bar as its MQTT payload: the object `edge-agent events` / `bars` print, in the log's encoding."""
    return json_dumps(row).encode("ascii")


class Outbox:
    def __init__(self, store, link: Link, *, flush_interval: float = 0.05):
        self.store = store
        self.link = link
        self.prefix = f"{link.cfg.output_prefix}/events"
        self.bars_prefix = f"{link.cfg.output_prefix}/bars"
        self.flush_interval = flush_interval
        self.writer = None  # the StoreWriter, once it exists: published marks are written by its thread
        self._lock = threading.Lock()
        self._inflight: dict[int, int] = {}  # row id -> mid
        self._by_mid: dict[int, int] = {}  # mid -> row id
        self._bars_inflight: dict[int, int] = {}  # the same for bars
        self._bar_by_mid: dict[int, int] = {}
        self._bars_marking: set[int] = set()  # acknowledged, their mark not yet committed: not to be sent again
        self._bars_backlog = True
        self._acked: collections.deque[int] = collections.deque()  # mids, appended by paho's thread
        self._unresolved: list[int] = []
        self._backlog = True  # something may be unpublished in the log: check on (re)connect
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        link.on_connect.append(self.on_connect)
        link.on_published.append(self._acked.append)

    def start(self) -> None:
        self._thread.start()

    def on_commit(self, rows: list[dict]) -> None:
        """Writer thread, right after a commit: publish the new rows now if we can."""
        for row in rows:
            metrics.EVENTS.labels(row["kind"]).inc()
        if rows and self.link.connected.is_set():
            self._publish(rows)
        elif rows:
            self._backlog = True
            self._wake.set()

    def on_bars(self) -> None:
        """Writer thread, after a commit that logged bars: the outbox thread publishes them from the log."""
        self._bars_backlog = True
        self._wake.set()

    def on_connect(self) -> None:
        """paho's thread: defer the backlog query to the outbox thread."""
        self._backlog = self._bars_backlog = True
        self._wake.set()

    def backlog(self) -> int:
        """Rows published and not yet acknowledged."""
        return len(self._inflight) + len(self._bars_inflight)

    def _publish(self, rows: list[dict]) -> None:
        with self._lock:
            for row in rows:
                rid = row["id"]
                if rid in self._inflight:
                    continue
                if len(self._inflight) >= MAX_INFLIGHT:  # the rest waits in the log for the backlog drain
                    self._backlog = True
                    break
                mid = self.link.publish(f"{self.prefix}/{row['kind']}/{row['key']}", payload(row))
                self._inflight[rid] = mid
                self._by_mid[mid] = rid

    def _publish_bars(self) -> None:
        """Outbox thread: the log's unpublished bars not already in flight, oldest first, one page per call."""
        rows = self.store.unpublished_bars(limit=PAGE)
        with self._lock:
            for row in rows:
                if row["id"] not in self._bars_inflight and row["id"] not in self._bars_marking:
                    mid = self.link.publish(f"{self.bars_prefix}/{row['symbol']}", payload(row), retain=True)
                    self._bars_inflight[row["id"]] = mid
                    self._bar_by_mid[mid] = row["id"]
        if len(rows) < PAGE:
            self._bars_backlog = False

    def _mark_acked(self) -> int:
        """Resolve PUBACKed mids to row ids and mark them published, one statement per table."""
        mids = self._unresolved
        while self._acked:
            mids.append(self._acked.popleft())
        if not mids:
            return 0
        ids, bar_ids, self._unresolved = [], [], []
        with self._lock:
            for mid in mids:
                if not (_resolve(mid, self._by_mid, self._inflight, ids)
                        or _resolve(mid, self._bar_by_mid, self._bars_inflight, bar_ids)):
                    self._unresolved.append(mid)  # PUBACK won the race with publish() returning
        if len(self._unresolved) > 65535:  # acks for messages we never sent (status, dead letters)
            self._unresolved.clear()
        self._bars_marking.update(bar_ids)
        for table, done in (("events", ids), ("bars", bar_ids)):
            if not done:
                continue
            mark = functools.partial(self._mark_published, done, table)
            if self.writer is not None:  # in the writer's thread: SQLite lock waits would stall the writer
                self.writer.submit(on_durable=mark)
            else:
                mark()
        metrics.EVENTS_PUBLISHED.inc(len(ids))
        return len(ids) + len(bar_ids)

    def _mark_published(self, ids: list[int], table: str) -> None:
        try:
            self.store.mark_published(ids, table)
        finally:  # marked, or else unmarked in the log: the next drain may send it again (at least once)
            self._bars_marking.difference_update(ids)

    def _drain_backlog(self) -> None:
        """Republish unpublished rows that are not already in flight, one page per call."""
        rows = self.store.unpublished(limit=PAGE)
        with self._lock:
            fresh = [r for r in rows if r["id"] not in self._inflight]
        if fresh:
            log.info("outbox_republish", rows=len(fresh))
            self._publish(fresh)
        if len(rows) < PAGE:
            self._backlog = False

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                self._mark_acked()
                if self._backlog and self.link.connected.is_set():
                    self._drain_backlog()
                if self._bars_backlog and self.link.connected.is_set():
                    self._publish_bars()
            except Exception:  # noqa: BLE001 - the log may be briefly locked; retry next round
                log.exception("outbox_error")
                self._wake.wait(0.5)

    def close(self, timeout: float = 2.0) -> None:
        """Wait (bounded) for outstanding PUBACKs, record them, stop the thread."""
        deadline = threading.Event()
        waited = 0.0
        while self.backlog() and self.link.connected.is_set() and waited < timeout:
            deadline.wait(0.02)
            waited += 0.02
            self._wake.set()
        self._closed = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=max(1.0, timeout))
        self.writer = None  # closed by now: mark the last acknowledgements directly
        self._mark_acked()


def _resolve(mid: int, by_mid: dict[int, int], inflight: dict[int, int], done: list[int]) -> bool:
    """If `mid` is one of this table's publishes, take it out of flight (into `done` when current)."""
    rid = by_mid.pop(mid, None)
    if rid is None:
        return False
    if inflight.get(rid) == mid:
        del inflight[rid]
        done.append(rid)
    return True
