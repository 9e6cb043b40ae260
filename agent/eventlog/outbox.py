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

Bars and dead letters take the same path at their own pace (a `Stream` each): a commit that logged
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
# unacknowledged event publishes at most; the rest waits in the log. Small on purpose: the broker reads our
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
    """The rows of one table (bars, dead letters) that the outbox thread reads from the log and publishes."""

    def __init__(self, table: str, topic: Callable[[dict], str], body: Callable[[dict], bytes], retain: bool):
        self.table, self.topic, self.body, self.retain = table, topic, body, retain
        self.inflight: dict[int, int] = {}  # row id -> mid
        self.by_mid: dict[int, int] = {}  # mid -> row id
        self.marking: set[int] = set()  # acknowledged, their mark not yet committed: not to be sent again
        self.marked: set[int] = set()  # marks committed since the thread's last round (see Outbox._marked)
        self.backlog = True  # something may be unpublished in the log


class Outbox:
    def __init__(self, store, link: Link, *, flush_interval: float = 0.05):
        self.store = store
        self.link = link
        self.prefix = f"{link.cfg.output_prefix}/events"
        bars_prefix = f"{link.cfg.output_prefix}/bars"
        self.flush_interval = flush_interval
        self.writer = None  # the StoreWriter, once it exists: published marks are written by its thread
        self._lock = threading.Lock()
        self._inflight: dict[int, int] = {}  # row id -> mid
        self._by_mid: dict[int, int] = {}  # mid -> row id
        self.streams = {s.table: s for s in (
            Stream("bars", lambda row: f"{bars_prefix}/{row['symbol']}", payload, retain=True),
            Stream("deadletters", lambda row: link.deadletter_topic, dead_letter_payload, retain=False))}
        # marks committed since the outbox thread's last round: a backlog read in this round may have begun
        # before they were, and still show their rows unpublished (cleared at the end of every round)
        self._marked: set[int] = set()
        self._acked: collections.deque[int] = collections.deque()  # mids, appended by paho's thread
        self._unresolved: list[int] = []
        self._marking: set[int] = set()  # acknowledged events whose published mark is not committed yet
        self._refused: collections.deque[int] = collections.deque()  # mids the broker refused (PUBACK >= 0x80)
        self._retry_delay = 0.0  # back-off after a refusal: 0 until one happens, doubling, reset by a success
        self._retry_at = 0.0  # monotonic time before which nothing is republished
        self._backlog = True  # something may be unpublished in the log: check on (re)connect
        self._draining = False  # a backlog drain is under way (logged once)
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
        """Writer thread, right after a commit: publish the new rows now if we can."""
        for row in rows:
            metrics.EVENTS.labels(row["kind"]).inc()
        if rows and self.link.connected.is_set():
            self._publish(rows)
        elif rows:
            self._backlog = True
            self._wake.set()

    def on_rows(self, tables: set[str]) -> None:
        """Writer thread, after a commit that logged bars or dead letters (`tables`): the outbox thread
        publishes them from the log."""
        for table in tables:
            self.streams[table].backlog = True
        self._wake.set()

    def on_connect(self) -> None:
        """paho's thread: defer the backlog queries to the outbox thread."""
        self._backlog = True
        for stream in self.streams.values():
            stream.backlog = True
        self._wake.set()

    def backlog(self) -> int:
        """Rows published and not yet acknowledged."""
        return len(self._inflight) + sum(len(s.inflight) for s in self.streams.values())

    def _publish(self, rows: list[dict]) -> bool:
        """Publish the rows not in flight yet; False when the window filled first (the rest waits in the log)."""
        with self._lock:
            for row in rows:
                rid = row["id"]
                if rid in self._inflight:
                    continue
                if len(self._inflight) >= MAX_INFLIGHT or time.monotonic() < self._retry_at:
                    self._backlog = True  # the rest waits in the log for the backlog drain
                    return False
                mid = self.link.publish(f"{self.prefix}/{row['kind']}/{row['key']}", payload(row))
                self._inflight[rid] = mid
                self._by_mid[mid] = rid
        return True

    def _publish_rows(self, stream: Stream) -> None:
        """Outbox thread: the log's unpublished rows of `stream` not already in flight, oldest first, one page
        per call, at most MAX_INFLIGHT in flight (a flood of dead letters waits in the log, not on the wire)."""
        rows = self.store.unpublished_rows(stream.table, limit=PAGE)
        with self._lock:
            for row in rows:
                rid = row["id"]
                if rid in stream.inflight or rid in stream.marking or rid in stream.marked:
                    continue
                if len(stream.inflight) >= MAX_INFLIGHT:
                    return  # the backlog stays set: the rest goes once acknowledgements free the window
                mid = self.link.publish(stream.topic(row), stream.body(row), retain=stream.retain)
                stream.inflight[rid] = mid
                stream.by_mid[mid] = rid
        if len(rows) < PAGE:
            stream.backlog = False

    def _mark_acked(self) -> int:
        """Resolve PUBACKed mids to row ids and mark them published, one statement per table."""
        mids = self._unresolved
        while self._acked:
            mids.append(self._acked.popleft())
        if not mids:
            return 0
        self._unresolved = []
        done: dict[str, list[int]] = {"events": [], **{table: [] for table in self.streams}}  # acknowledged row ids
        self._take_refusals()
        with self._lock:
            for mid in mids:
                if not (_resolve(mid, self._by_mid, self._inflight, done["events"])
                        or any(_resolve(mid, s.by_mid, s.inflight, done[s.table]) for s in self.streams.values())):
                    self._unresolved.append(mid)  # PUBACK won the race with publish() returning
            if len(self._unresolved) > 65535:  # acks for messages we never sent (status)
                self._unresolved.clear()
            self._marking.update(done["events"])
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
        try:
            self.store.mark_published(ids, table)
            marked = True
        finally:  # marked, or else unmarked in the log: the next drain may send it again (at least once)
            stream = self.streams.get(table)
            with self._lock:
                (self._marking if stream is None else stream.marking).difference_update(ids)
                if marked:  # a backlog read under way may have begun before this commit
                    (self._marked if stream is None else stream.marked).update(ids)

    def _take_refusals(self) -> None:
        """Refused publishes leave flight unmarked; the drain sends them again after a doubling back-off."""
        if not self._refused:
            return
        with self._lock:
            while self._refused:
                mid = self._refused.popleft()
                for by_mid, inflight in ((self._by_mid, self._inflight),
                                         *((s.by_mid, s.inflight) for s in self.streams.values())):
                    rid = by_mid.pop(mid, None)
                    if rid is not None and inflight.get(rid) == mid:
                        del inflight[rid]
        self._retry_delay = min(RETRY_MAX, max(RETRY_MIN, 2 * self._retry_delay))
        self._retry_at = time.monotonic() + self._retry_delay
        self.on_connect()  # everything unmarked is sent again after the back-off
        log.warning("outbox_publish_refused_retry", seconds=self._retry_delay)

    def _drain_backlog(self) -> None:
        """Republish unpublished rows that are not already in flight, one page per call."""
        rows = self.store.unpublished(limit=PAGE)
        with self._lock:
            fresh = [r for r in rows
                     if r["id"] not in self._inflight and r["id"] not in self._marking and r["id"] not in self._marked]
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
                ready = self.link.connected.is_set() and time.monotonic() >= self._retry_at
                if self._backlog and ready:
                    self._drain_backlog()
                for stream in self.streams.values():
                    if stream.backlog and ready:
                        self._publish_rows(stream)
                with self._lock:  # no read is under way: the next one sees these marks in the log
                    self._marked.clear()
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
