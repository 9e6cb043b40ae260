"""The event log is the outbox: events, VWAP bars and dead letters reach MQTT from the log, never around it.

After each commit the writer hands the newly logged rows to `on_commit`, which
publishes them at once (QoS 1) when the broker is connected. PUBACKs mark their
rows published in one statement per `flush_interval` (from the outbox thread,
never from paho's thread): one UPDATE per commit would double the writer's work. On
start and after every reconnect the outbox republishes whatever the log still
holds unpublished, so an event logged while the broker was away, or before an
agent crash, is published later; rows already in flight are skipped, because
paho itself resends those on reconnect.

Several agents may share one log: each row carries the id of the agent that logged it, and an outbox
reads and publishes only its own agent's rows (`Store.unpublished`), so no agent republishes another's.

Bars and dead letters take the same path (a `Stream` per table) at their own pace: a commit that logged
some wakes the outbox thread, which publishes the log's unpublished rows of that table. A bar is retained on
`{output_prefix}/bars/{symbol}`, so that a subscriber joining later gets every symbol's latest bar; a dead
letter goes to `{output_prefix}/deadletter`.
"""

from __future__ import annotations

import collections
import functools
import threading
import time
from collections.abc import Callable

from edgewatch.agent.ingest.mqtt import Link
from edgewatch.agent.ops import metrics
from edgewatch.agent.encoding import json_dumps
from edgewatch.common.logs import get

log = get("edgewatch.agent.eventlog.outbox")

PAGE = 1000  # unpublished rows read per query while draining the backlog
# unacknowledged publishes of a table at most; the rest waits in the log. Small on purpose: the broker reads our
# packets in order, so every event in flight can sit ahead of an input PUBACK on the wire (a restarted agent
# once queued its whole unpublished backlog there, and the broker's receive window for us stayed full)
MAX_INFLIGHT = 256
RETRY_MIN, RETRY_MAX = 1.0, 60.0  # seconds before republishing after the broker refused a message (doubling)


def payload(row: dict) -> bytes:
    """One event or bar as its MQTT payload: the object `edge-agent events` / `bars` print, in the log's encoding."""
    return json_dumps(row).encode("ascii")


def dead_letter_payload(row: dict) -> bytes:
    """A dead letter as its MQTT payload: the row without the log's own id."""
    return json_dumps({k: v for k, v in row.items() if k != "id"}).encode("ascii")


class Stream:
    """The rows of one table (events, bars, dead letters) on their way from the log to the broker."""

    def __init__(self, table: str, topic: Callable[[dict], str], body: Callable[[dict], bytes], retain: bool = False,
                 at_commit: bool = False):
        self.table, self.topic, self.body, self.retain = table, topic, body, retain
        self.at_commit = at_commit  # published as they are committed: reading them from the log is a republish
        self.inflight: dict[int, int] = {}  # row id -> mid
        self.by_mid: dict[int, int] = {}  # mid -> row id
        self.marking: set[int] = set()  # acknowledged, their mark not yet committed: not to be sent again
        # marks committed since the outbox thread's last round: a read of the log in this round may have begun
        # before they were, and still show their rows unpublished (cleared at the end of every round)
        self.marked: set[int] = set()
        self.backlog = True  # something may be unpublished in the log: read it (on start, reconnect, a full window)
        self.draining = False  # a republish under way (logged once)


class Outbox:
    def __init__(self, store, link: Link, *, flush_interval: float = 0.05):
        self.store = store
        self.link = link
        out = link.cfg.output_prefix
        self.flush_interval = flush_interval
        self.writer = None  # the StoreWriter, once it exists: published marks are written by its thread
        self._lock = threading.Lock()
        self.events = Stream("events", lambda row: f"{out}/events/{row['kind']}/{row['key']}", payload, at_commit=True)
        self.streams = {s.table: s for s in (
            self.events,
            Stream("bars", lambda row: f"{out}/bars/{row['symbol']}", payload, retain=True),
            Stream("deadletters", lambda row: link.deadletter_topic, dead_letter_payload))}
        self._acked: collections.deque[int] = collections.deque()  # mids, appended by paho's thread
        self._unresolved: list[int] = []
        self._refused: collections.deque[int] = collections.deque()  # mids the broker refused (PUBACK >= 0x80)
        self._retry_delay = 0.0  # back-off after a refusal: 0 until one happens, doubling, reset by a success
        self._retry_at = 0.0  # monotonic time before which nothing is republished
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        link.on_connect.append(self.on_connect)
        link.on_published.append(self._acked.append)
        link.on_publish_refused.append(lambda mid, reason: self._refused.append(mid))

    def start(self) -> None:
        adopted = self.store.adopt_unowned()
        if adopted:  # rows logged before agents had ids: published by the first agent to start on the log
            log.info("outbox_adopted", rows=adopted, agent_id=self.store.agent_id)
        self._thread.start()

    def on_commit(self, rows: list[dict]) -> None:
        """Writer thread, right after a commit: publish the new events now if we can."""
        for row in rows:
            metrics.EVENTS.labels(row["kind"]).inc()
        if rows and self.link.connected.is_set():
            self._publish(self.events, rows)
        elif rows:
            self.events.backlog = True
            self._wake.set()

    def on_rows(self, tables: set[str]) -> None:
        """Writer thread, after a commit that logged bars or dead letters (`tables`): the outbox thread
        publishes them from the log."""
        for table in tables:
            self.streams[table].backlog = True
        self._wake.set()

    def on_connect(self) -> None:
        """paho's thread: defer the backlog queries to the outbox thread."""
        for stream in self.streams.values():
            stream.backlog = True
        self._wake.set()

    def backlog(self) -> int:
        """Rows published and not yet acknowledged."""
        return sum(len(s.inflight) for s in self.streams.values())

    def _publish(self, stream: Stream, rows: list[dict]) -> bool:
        """Publish the rows not in flight yet, at most MAX_INFLIGHT of the stream in flight; False when the window
        filled first or a refusal's back-off is not over (the rest waits in the log)."""
        with self._lock:
            for row in rows:
                rid = row["id"]
                if rid in stream.inflight:
                    continue
                if len(stream.inflight) >= MAX_INFLIGHT or time.monotonic() < self._retry_at:
                    stream.backlog = True  # the rest waits in the log for the next read
                    return False
                mid = self.link.publish(stream.topic(row), stream.body(row), retain=stream.retain)
                stream.inflight[rid] = mid
                stream.by_mid[mid] = rid
        return True

    def _drain(self, stream: Stream) -> None:
        """Outbox thread: publish the log's unpublished rows of `stream` that are neither in flight nor being
        marked, oldest first, one page per call."""
        rows = self.store.unpublished_rows(stream.table, limit=PAGE)
        with self._lock:
            fresh = [r for r in rows
                     if r["id"] not in stream.inflight and r["id"] not in stream.marking and r["id"] not in stream.marked]
        if fresh and stream.at_commit and not stream.draining:  # once per backlog: a page per round until done
            stream.draining = True
            log.info("outbox_republish", table=stream.table, rows=len(rows), more=len(rows) == PAGE)
        if self._publish(stream, fresh) and len(rows) < PAGE:
            stream.backlog = stream.draining = False

    def _mark_acked(self) -> int:
        """Resolve PUBACKed mids to row ids and mark them published, one statement per table."""
        mids = self._unresolved
        while self._acked:
            mids.append(self._acked.popleft())
        if not mids:
            return 0
        self._unresolved = []
        done: dict[str, list[int]] = {table: [] for table in self.streams}  # acknowledged row ids
        self._take_refusals()
        with self._lock:
            for mid in mids:
                if not any(_resolve(mid, s.by_mid, s.inflight, done[s.table]) for s in self.streams.values()):
                    self._unresolved.append(mid)  # PUBACK won the race with publish() returning
            if len(self._unresolved) > 65535:  # acks for messages we never sent (status)
                self._unresolved.clear()
            for stream in self.streams.values():
                stream.marking.update(done[stream.table])
        if any(done.values()):
            self._retry_delay = 0.0  # the broker takes messages again
        for table, rows in done.items():
            if not rows:
                continue
            mark = functools.partial(self._mark_published, rows, table)
            if self.writer is not None:  # in the writer's thread: SQLite lock waits would stall the writer
                self.writer.submit(on_durable=mark)
            else:
                mark()
        metrics.EVENTS_PUBLISHED.inc(len(done["events"]))
        return sum(map(len, done.values()))

    def _mark_published(self, ids: list[int], table: str) -> None:
        marked = False
        stream = self.streams[table]
        try:
            self.store.mark_published(ids, table)
            marked = True
        finally:  # marked, or else unmarked in the log: the next drain may send it again (at least once)
            with self._lock:
                stream.marking.difference_update(ids)
                if marked:  # a read of the log under way may have begun before this commit
                    stream.marked.update(ids)

    def _take_refusals(self) -> None:
        """Refused publishes leave flight unmarked; the drain sends them again after a doubling back-off."""
        if not self._refused:
            return
        with self._lock:
            while self._refused:
                mid = self._refused.popleft()
                for s in self.streams.values():
                    rid = s.by_mid.pop(mid, None)
                    if rid is not None and s.inflight.get(rid) == mid:
                        del s.inflight[rid]
        self._retry_delay = min(RETRY_MAX, max(RETRY_MIN, 2 * self._retry_delay))
        self._retry_at = time.monotonic() + self._retry_delay
        self.on_connect()  # everything unmarked is sent again after the back-off
        log.warning("outbox_publish_refused_retry", seconds=self._retry_delay)

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                self._mark_acked()
                if self.link.connected.is_set() and time.monotonic() >= self._retry_at:
                    for stream in self.streams.values():
                        if stream.backlog:
                            self._drain(stream)
                with self._lock:  # no read is under way: the next one sees these marks in the log
                    for stream in self.streams.values():
                        stream.marked.clear()
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
