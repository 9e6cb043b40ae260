"""The `StoreWriter`: the event log's one writer thread, so the csp engine and the MQTT thread never wait on disk.

A database error never kills it and never drops rows: it logs, backs off and retries the batch; a row the
database refuses is written alone, cleaned if it can be, and logged in full if not.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable

import sqlalchemy as sa
import structlog
from edgewatch.agent.eventlog.schema import BAR_FIELDS, DEADLETTER_FIELDS, EVENT_FIELDS
from edgewatch.agent.eventlog.store import Store, get_field

log = structlog.get_logger("edgewatch.agent.eventlog.writer")

CHECKPOINT_EVERY = 1.0  # seconds between background WAL checkpoints (`Store(checkpoint_in_background=True)`)


def _clean_text(value: object, dialect: str) -> object:
    """Last resort for a row the database refused: lone surrogates escaped, NUL spelled out on PostgreSQL."""
    if isinstance(value, str):
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value.replace("\x00", "\\x00") if dialect == "postgresql" else value
    if isinstance(value, dict):
        return {_clean_text(k, dialect): _clean_text(v, dialect) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean_text(v, dialect) for v in value]
    return value


_FIELDS = {"events": EVENT_FIELDS, "dead_letters": DEADLETTER_FIELDS, "bars": BAR_FIELDS}


def _clean_row(table: str, row: object, dialect: str) -> dict:
    return {f: _clean_text(get_field(row, f), dialect) for f in _FIELDS[table]}


def _transient(exc: BaseException) -> bool:
    """A database that is down, locked, full or missing a table: retry. A row it refuses: not transient."""
    return isinstance(exc, sa.exc.DBAPIError) and not isinstance(exc, (sa.exc.IntegrityError, sa.exc.DataError))


class _Item:
    __slots__ = ("events", "dead_letters", "bars", "on_durable")

    def __init__(self, events: list, dead_letters: list, bars: list, on_durable: Callable[[], None] | None):
        self.events, self.dead_letters, self.bars, self.on_durable = events, dead_letters, bars, on_durable

    def __len__(self) -> int:
        return len(self.events) + len(self.dead_letters) + len(self.bars)


_STOP = object()


class StoreWriter:
    """Writes submitted rows off the caller's thread: the csp engine and the MQTT thread never wait on disk.

    The loop blocks for the first item, then drains whatever else is queued (up to `batch_size` rows) into
    ONE transaction, so a burst costs one commit and a lone event is written at once, with no fixed wait.
    A database error never kills it and never drops rows: it logs, backs off and retries the same batch.
    """

    def __init__(
        self,
        store: Store,
        *,
        batch_size: int = 5000,
        on_commit: Callable[[list[dict]], None] | None = None,
        on_rows: Callable[[set[str]], None] | None = None,
        retention: tuple[float, int, int] = (0.0, 0, 0),
        retention_every: float = 60.0,
    ):
        self.store = store
        self.batch_size = max(1, batch_size)
        self.on_commit = on_commit  # the newly logged events, right after their commit
        self.on_rows = on_rows  # after a commit that logged bars or dead letters: which tables ("bars", "deadletters")
        self.retention = retention
        self.retention_every = retention_every
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._committed = threading.Condition(self._lock)
        self._submitted_n = 0  # items submitted
        self._done_n = 0  # items committed (or, for a row the database refuses forever, logged and given up)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._checkpointer = (threading.Thread(target=self._checkpoints, name="store-checkpoint", daemon=True)
                              if store.checkpoint_in_background else None)
        self._stopped = threading.Event()
        self._submitted_at: collections.deque[float] = collections.deque()  # monotonic, per uncommitted item
        self._deadline: float | None = None  # set by close(): past it, what is left is shed, not written
        # observable state, for metrics and health
        self.pending_rows = 0  # submitted, not yet committed
        self.commits = 0
        self.rows_written = 0  # committed
        self.errors = 0  # failed transactions (each retried, or its rows written one by one)
        self.dropped = 0  # rows the database refused even after cleaning; each is logged in full
        self.last_commit_seconds = 0.0

    def start(self) -> None:
        self._thread.start()
        if self._checkpointer is not None:
            self._checkpointer.start()

    @property
    def alive(self) -> bool:
        """The writer thread runs (for health and readiness)."""
        return self._thread.is_alive()

    def submit(self, events=(), dead_letters=(), bars=(), on_durable: Callable[[], None] | None = None) -> None:
        """Queue rows for the next transaction; `on_durable` runs once they are committed. Never blocks."""
        item = _Item(list(events), list(dead_letters), list(bars), on_durable)
        with self._lock:
            self._submitted_n += 1
            self.pending_rows += len(item)
            self._submitted_at.append(time.monotonic())
            if not self._closed:
                self._queue.put(item)
                return
        log.error("store_submit_after_close", rows=len(item))  # the service is stopping: write it here
        self._write_batch([item])

    def backlog_age(self) -> float:
        """Seconds the oldest uncommitted submission has waited; 0 when everything is committed."""
        try:
            return max(0.0, time.monotonic() - self._submitted_at[0])
        except IndexError:
            return 0.0

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is committed; False on timeout."""
        with self._lock:
            target = self._submitted_n
            return self._committed.wait_for(lambda: self._done_n >= target, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Commit what was submitted, for at most `timeout` seconds; then shed the rest (logged) and stop.

        Shed rows are never acknowledged to the broker (their `on_durable` does not run), so the input
        messages behind them are redelivered next session and their events logged then.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._deadline = time.monotonic() + timeout
        self._queue.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout + 1.0)  # the deadline is checked between transactions: one may be running
            if self._thread.is_alive():
                log.error("store_writer_close_timeout", pending_rows=self.pending_rows, timeout=timeout)
        self._stopped.set()
        if self._checkpointer is not None and self._checkpointer.is_alive():
            self._checkpointer.join(timeout)
            self._checkpoint()  # what the last commits left in the WAL

    def _checkpoints(self) -> None:
        """The checkpointer thread: the writer's commits only append to the WAL."""
        while not self._stopped.wait(CHECKPOINT_EVERY):
            self._checkpoint()

    def _checkpoint(self) -> None:
        try:
            self.store.checkpoint()
        except Exception as e:  # noqa: BLE001 - a busy or briefly locked log: the next round catches up
            log.warning("store_checkpoint_failed", error=str(e).splitlines()[0])

    # -- the writer thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        next_retention = time.monotonic() + self.retention_every
        stopping = False
        while not stopping:
            wait = next_retention - time.monotonic() if any(self.retention) else None
            try:
                first = self._queue.get(timeout=max(0.0, wait)) if wait is not None else self._queue.get()
            except queue.Empty:
                first = None
            batch: list[_Item] = []
            rows = 0
            item = first
            while item is not None:
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
                rows += len(item)
                if rows >= self.batch_size:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            if batch and self._deadline is not None and time.monotonic() >= self._deadline:
                self._shed(batch, stopping)
                return
            if batch:
                self._write_batch(batch)
            if any(self.retention) and time.monotonic() >= next_retention:
                self._retain()
                next_retention = time.monotonic() + self.retention_every

    def _shed(self, batch: list[_Item], stopped: bool) -> None:
        """Past the stop deadline: drop `batch` and everything queued behind it, saying how much."""
        while not stopped:
            item = self._queue.get()
            stopped = item is _STOP
            if not stopped:
                batch.append(item)
        rows = sum(map(len, batch))
        unacked = sum(it.on_durable is not None for it in batch)
        log.error("store_writer_shed", rows=rows, submissions=len(batch), input_batches_unacknowledged=unacked,
                  hint="not committed before the stop deadline; their input messages are redelivered next start")
        self._settle(batch, rows)

    def _settle(self, batch: list[_Item], rows: int) -> None:
        """`batch` is behind us, written or shed: what waits for it (flush, backlog age) moves on."""
        with self._lock:
            self.pending_rows -= rows
            self._done_n += len(batch)
            for _ in batch:
                self._submitted_at.popleft()
            self._committed.notify_all()

    def _write_batch(self, batch: list[_Item]) -> None:
        t0 = time.perf_counter()
        if not any(map(len, batch)):  # only acknowledgements waiting for what came before: nothing to write
            self._done(batch, [])
            return
        try:
            new = self._retrying(
                events=[e for it in batch for e in it.events],
                dead_letters=[d for it in batch for d in it.dead_letters],
                bars=[b for it in batch for b in it.bars],
            )
        except Exception as e:  # noqa: BLE001 - nothing may kill the writer
            dropped = self.dropped
            new = self._write_apart(batch, e)
            self.rows_written -= self.dropped - dropped  # _done counts the batch
        self.last_commit_seconds = time.perf_counter() - t0
        self._done(batch, new)

    def _retrying(self, **rows: list) -> list[dict]:
        """`Store.write`, retried with backoff for as long as the database itself is the problem."""
        delay = 0.05
        while True:
            try:
                return self.store.write(**rows)
            except Exception as e:
                if not _transient(e):
                    raise
                self.errors += 1
                log.warning("store_write_failed", error=str(e).splitlines()[0], retry_in=delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _write_apart(self, batch: list[_Item], first_error: Exception) -> list[dict]:
        """The database refused a row: write each row alone, so only that one is affected; clean it, else log it."""
        self.errors += 1
        log.warning("store_batch_refused", error=str(first_error).splitlines()[0], rows=sum(map(len, batch)))
        new: list[dict] = []
        for it in batch:
            for table, rows in (("events", it.events), ("dead_letters", it.dead_letters), ("bars", it.bars)):
                for row in rows:
                    try:
                        new += self._retrying(**{table: [row]})
                    except Exception:  # noqa: BLE001
                        try:
                            new += self._retrying(**{table: [_clean_row(table, row, self.store.dialect)]})
                        except Exception as e:  # noqa: BLE001
                            self.dropped += 1
                            log.error("store_row_refused", table=table, row=repr(row)[:4096], error=str(e).splitlines()[0])
        return new

    def _done(self, batch: list[_Item], new: list[dict]) -> None:
        rows = sum(map(len, batch))
        self.commits += rows > 0
        self.rows_written += rows
        # acknowledgements before events: a broker reads each client's packets in order (Mosquitto one per
        # turn of its loop, a full save between turns when it persists every change), so PUBACKs queued
        # behind event publishes keep the receive window shut and the broker stops delivering to us
        for it in batch:
            if it.on_durable is not None:
                try:
                    it.on_durable()
                except Exception:  # noqa: BLE001
                    log.exception("store_on_durable_failed")
        if new and self.on_commit is not None:
            try:
                self.on_commit(new)
            except Exception:  # noqa: BLE001
                log.exception("store_on_commit_failed")
        tables = {table for table, logged in (("bars", any(it.bars for it in batch)),
                                              ("deadletters", any(it.dead_letters for it in batch))) if logged}
        if self.on_rows is not None and tables:
            try:
                self.on_rows(tables)
            except Exception:  # noqa: BLE001
                log.exception("store_on_rows_failed")
        self._settle(batch, rows)

    def _retain(self) -> None:
        try:
            t0 = time.perf_counter()
            deleted = self.store.apply_retention(*self.retention)
            if deleted:
                log.info("store_retention", deleted=deleted, seconds=round(time.perf_counter() - t0, 3))
        except Exception as e:  # noqa: BLE001 - retention failing must not stop writing
            log.warning("store_retention_failed", error=str(e).splitlines()[0])

