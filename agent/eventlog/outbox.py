"""The event log is the outbox: events reach MQTT from the log, never around it.

After each commit the writer hands the newly logged rows to `on_commit`, which
publishes them at once (QoS 1) when the broker is connected. PUBACKs mark their
rows published in one statement per `flush_interval` (from the outbox thread,
never from paho's thread): one UPDATE per commit would double the writer's work. On
start and after every reconnect the outbox republishes whatever the log still
holds unpublished, so an event logged while the broker was away, or before an
agent crash, is published later; rows already in flight are skipped, because
paho itself resends those on reconnect.
"""

from __future__ import annotations

import collections
import functools
import json
import threading

from edgewatch.agent.ingest.mqtt import Link
from edgewatch.agent.ops import metrics
from edgewatch.common.logs import get

log = get("edgewatch.agent.eventlog.outbox")

PAGE = 1000  # unpublished rows read per query while draining the backlog
# unacknowledged event publishes at most; the rest waits in the log. Small on purpose: the broker reads our
# packets in order, so every event in flight can sit ahead of an input PUBACK on the wire (a restarted agent
# once queued its whole unpublished backlog there, and the broker's receive window for us stayed full)
MAX_INFLIGHT = 256


def event_payload(row: dict) -> bytes:
    """One event as its MQTT payload: the object of docs/reference/events.md."""
    return json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "backslashreplace")


class Outbox:
    def __init__(self, store, link: Link, *, flush_interval: float = 0.05):
        self.store = store
        self.link = link
        self.prefix = f"{link.cfg.output_prefix}/events"
        self.flush_interval = flush_interval
        self.writer = None  # the StoreWriter, once it exists: published marks are written by its thread
        self._lock = threading.Lock()
        self._inflight: dict[int, int] = {}  # row id -> mid
        self._by_mid: dict[int, int] = {}  # mid -> row id
        self._acked: collections.deque[int] = collections.deque()  # mids, appended by paho's thread
        self._unresolved: list[int] = []
        self._marking: set[int] = set()  # acknowledged rows whose published mark is not committed yet
        self._backlog = True  # something may be unpublished in the log: check on (re)connect
        self._draining = False  # a backlog drain is under way (logged once)
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

    def on_connect(self) -> None:
        """paho's thread: defer the backlog query to the outbox thread."""
        self._backlog = True
        self._wake.set()

    def backlog(self) -> int:
        return len(self._inflight)

    def _publish(self, rows: list[dict]) -> bool:
        """Publish the rows not in flight yet; False when the window filled first (the rest waits in the log)."""
        with self._lock:
            for row in rows:
                rid = row["id"]
                if rid in self._inflight:
                    continue
                if len(self._inflight) >= MAX_INFLIGHT:  # the rest waits in the log for the backlog drain
                    self._backlog = True
                    return False
                mid = self.link.publish(f"{self.prefix}/{row['kind']}/{row['key']}", event_payload(row))
                self._inflight[rid] = mid
                self._by_mid[mid] = rid
            metrics.OUTBOX_BACKLOG.set(len(self._inflight))
        return True

    def _mark_acked(self) -> int:
        """Resolve PUBACKed mids to row ids and mark them published in one statement."""
        mids = self._unresolved
        while self._acked:
            mids.append(self._acked.popleft())
        if not mids:
            return 0
        ids, self._unresolved = [], []
        with self._lock:
            for mid in mids:
                rid = self._by_mid.pop(mid, None)
                if rid is None:
                    self._unresolved.append(mid)  # PUBACK won the race with publish() returning
                elif self._inflight.get(rid) == mid:
                    del self._inflight[rid]
                    ids.append(rid)
            metrics.OUTBOX_BACKLOG.set(len(self._inflight))
        if len(self._unresolved) > 65535:  # acks for messages we never sent (status, dead letters)
            self._unresolved.clear()
        if ids:
            with self._lock:
                self._marking.update(ids)
            if self.writer is not None:  # in the writer's thread: SQLite lock waits would stall the writer
                self.writer.submit(on_durable=functools.partial(self._mark_published, ids))
            else:
                self._mark_published(ids)
            metrics.EVENTS_PUBLISHED.inc(len(ids))
        return len(ids)

    def _mark_published(self, ids: list[int]) -> None:
        try:
            self.store.mark_published(ids)
        finally:
            with self._lock:
                self._marking.difference_update(ids)

    def _drain_backlog(self) -> None:
        """Republish unpublished rows that are not already in flight, one page per call."""
        rows = self.store.unpublished(limit=PAGE)
        with self._lock:
            fresh = [r for r in rows if r["id"] not in self._inflight and r["id"] not in self._marking]
        if fresh and not self._draining:  # once per backlog: the drain runs a page per round until it is done
            self._draining = True
            log.info("outbox_republish", rows=len(rows), more=len(rows) == PAGE)
        if self._publish(fresh) and len(rows) < PAGE:
            self._backlog = self._draining = False

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                self._mark_acked()
                if self._backlog and self.link.connected.is_set():
                    self._drain_backlog()
            except Exception:  # noqa: BLE001 - the log may be briefly locked; retry next round
                log.exception("outbox_error")
                self._wake.wait(0.5)

    def close(self, timeout: float = 2.0) -> None:
        """Wait (bounded) for outstanding PUBACKs, record them, stop the thread."""
        deadline = threading.Event()
        waited = 0.0
        while self._inflight and self.link.connected.is_set() and waited < timeout:
            deadline.wait(0.02)
            waited += 0.02
            self._wake.set()
        self._closed = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=max(1.0, timeout))
        self.writer = None  # closed by now: mark the last acknowledgements directly
        self._mark_acked()
