"""The event log (docs/reference/events.md): SQLAlchemy Core tables, the `Store`, and the background `StoreWriter`.

The log is also the outbox: events are published from it, so `published_at`
stays NULL until the broker has acknowledged an event. SQLite (one file, WAL,
synchronous=NORMAL) is the default; any SQLAlchemy URL works, and PostgreSQL is
tested. Every datetime is naive UTC, stored as the backend's timestamp type
(SQLite: fixed-width ISO text), so it sorts and filters correctly in both.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import operator
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote

import sqlalchemy as sa
import structlog
from edgewatch.agent.config import ConfigError
from edgewatch.agent.timeutil import isoformat, utcnow
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url

log = structlog.get_logger("edgewatch.agent.eventlog.store")

FILE_MODE = 0o640  # owner writes, the service's group (operators) reads, nobody else
SQLITE_BUSY_TIMEOUT_MS = 5000
SQLITE_CACHE_KIB = 32768  # page cache of the writer's connection (SQLite's default is 2 MiB)
CHECKPOINT_EVERY = 1.0  # seconds between background WAL checkpoints (`Store(checkpoint_in_background=True)`)

metadata = sa.MetaData()

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite: INTEGER PRIMARY KEY = the rowid

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),  # the log sequence; never reused
    sa.Column("event_id", sa.String(64), nullable=False, unique=True),
    sa.Column("ts", sa.DateTime, nullable=False, index=True),
    sa.Column("logged_at", sa.DateTime, nullable=False),  # no index: retention searches it by id
    sa.Column("kind", sa.String(32), nullable=False, index=True),
    sa.Column("key", sa.Text, nullable=False, index=True),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("published_at", sa.DateTime, nullable=True),
    # the outbox: a small partial index, so finding unpublished events never scans the log
    sa.Index(
        "ix_events_unpublished",
        "id",
        sqlite_where=sa.text("published_at IS NULL"),
        postgresql_where=sa.text("published_at IS NULL"),
    ),
    sqlite_autoincrement=True,
)

deadletters = sa.Table(
    "deadletters",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("topic", sa.Text, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("received_at", sa.DateTime, nullable=False, index=True),
    sqlite_autoincrement=True,
)

bars = sa.Table(
    "bars",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("symbol", sa.Text, nullable=False),
    sa.Column("start", sa.DateTime, nullable=False),
    sa.Column("end", sa.DateTime, nullable=False),
    sa.Column("open", sa.Float, nullable=False),
    sa.Column("high", sa.Float, nullable=False),
    sa.Column("low", sa.Float, nullable=False),
    sa.Column("close", sa.Float, nullable=False),
    sa.Column("volume", sa.Float, nullable=False),
    sa.Column("vwap", sa.Float, nullable=False),
    sa.Column("trades", sa.Integer, nullable=False),
    sa.UniqueConstraint("symbol", "start", name="uq_bars_symbol_start"),
)

_BAR_FIELDS = ("symbol", "start", "end", "open", "high", "low", "close", "volume", "vwap", "trades")


class StoreError(RuntimeError):
    """The log cannot be used (missing tables, unreadable file): a runtime failure."""


class StoreNotFound(ConfigError):
    """A read-only open of a log that does not exist: a usage error, nothing is created."""


def _finite(value: object) -> object:
    """JSON-safe copy: NaN/Inf become strings, other non-JSON values their text (PostgreSQL rejects NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=str).encode


def json_dumps(value: object) -> str:
    """The one JSON encoding of event data, in the log and on MQTT: strict JSON, never raises."""
    try:
        return _encode(value)
    except (ValueError, TypeError):  # NaN/Inf, or keys that are not text
        return _encode(_finite(value))


def resolve_url(url: str) -> URL:
    """A bare path means SQLite; anything with `://` must be an SQLAlchemy URL. ConfigError otherwise."""
    text = str(url).strip()
    if not text:
        raise ConfigError("store.url: empty (a path or an SQLAlchemy URL)")
    if "://" not in text:
        return URL.create("sqlite", database=str(Path(text).expanduser()))
    try:
        parsed = make_url(text)
    except (sa.exc.ArgumentError, ValueError) as e:
        raise ConfigError(f"store.url: not an SQLAlchemy URL: {text!r} ({e})") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(f"store.url: unsupported database {parsed.get_backend_name()!r} (sqlite or postgresql)")
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ConfigError(f"store.url: {text!r} is an in-memory database: every event would be lost at exit")
    _require_driver(parsed)
    return parsed


def _require_driver(url: URL) -> None:
    """ConfigError naming what to install when the URL's database driver is missing (else an ImportError later)."""
    dialect = url.get_dialect()
    try:
        dialect.import_dbapi()
    except ImportError:
        extra = "pip install 'edgewatch[postgres]'"
        if dialect.driver != "psycopg":  # the postgres extra brings psycopg 3: say how to name it
            extra += f" and name its driver in the URL (postgresql+psycopg://...), or install {dialect.driver}"
        raise ConfigError(f"store.url: the {dialect.driver} database driver is not installed: {extra}") from None


def _sqlite_file(url: URL) -> Path | None:
    db = url.database
    if url.get_backend_name() != "sqlite" or not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db)


def _readonly_uri(path: Path) -> str:
    """An SQLite URI that never writes or creates anything, usable by operators of the service's group.

    While the agent runs, its -wal and -shm files exist and `mode=ro` shares them. When it is stopped they
    are gone, and a reader who may not create them in the state directory opens the (then quiescent,
    fully checkpointed) file as `immutable`.
    """
    try:
        if not path.is_file():
            raise StoreNotFound(f"{path}: no such event log")
        with open(path, "rb"):
            pass
    except PermissionError:
        raise ConfigError(f"{path}: permission denied (operators need the service's group)") from None
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    if not Path(f"{path}-wal").exists() and not os.access(path.parent, os.W_OK):
        uri += "&immutable=1"
    return uri


def _create_private(path: Path) -> None:
    """Create the SQLite file 0640 whatever the umask; SQLite gives its -wal/-shm files the same mode."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
    except FileExistsError:
        for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            try:
                mode = p.stat().st_mode & 0o777
                if mode & 0o007:  # an older or hand-made file: take the world's access away
                    p.chmod(mode & ~0o007)
            except (FileNotFoundError, PermissionError):
                pass
        return
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def _first_id_not_older(conn: sa.Connection, table: sa.Table, col: sa.Column, cutoff: datetime, lo: int, hi: int) -> int:
    """Smallest id whose `col` is at or after `cutoff` (hi + 1 when none), by binary search over the primary key.

    Rows are appended in time order (the writer stamps `logged_at` as it inserts), so `col` is sorted by
    id: ~log2(n) key lookups replace an index on `col` that every insert would have to pay for.
    """
    hi += 1
    probe = sa.select(col).where(table.c.id >= sa.bindparam("mid")).order_by(table.c.id).limit(1)
    while lo < hi:
        mid = (lo + hi) // 2
        when = conn.execute(probe, {"mid": mid}).scalar()
        if when is not None and when < cutoff:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _event_dict(row) -> dict:
    """A row of `events` -> the event object of docs/reference/events.md."""
    return {
        "id": row.id,
        "event_id": row.event_id,
        "ts": isoformat(row.ts),
        "logged_at": isoformat(row.logged_at),
        "kind": row.kind,
        "key": row.key,
        "severity": row.severity,
        "message": row.message,
        "data": row.data,
    }


def _naive_utc(dt: datetime) -> datetime:
    return dt.astimezone(timezone.utc).replace(tzinfo=None) if dt.tzinfo else dt


def _get(obj, name: str, default=None):
    return obj.get(name, default) if isinstance(obj, dict) else getattr(obj, name, default)


_EVENT_FIELDS = ("event_id", "ts", "kind", "key", "severity", "message", "data")
_event_attrs = operator.attrgetter(*_EVENT_FIELDS)
_event_items = operator.itemgetter(*_EVENT_FIELDS)
_SQLITE_INSERT = (
    "INSERT OR IGNORE INTO events (event_id, ts, logged_at, kind, \"key\", severity, message, data)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)

_PG_INSERT = (
    "INSERT INTO events (event_id, ts, logged_at, kind, \"key\", severity, message, data)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s::json) ON CONFLICT (event_id) DO NOTHING RETURNING id, event_id"
)


def _event_values(e) -> tuple:
    """An Event struct (or a dict with its fields) -> a tuple in `_EVENT_FIELDS` order, ts naive UTC."""
    try:
        v = _event_items(e) if isinstance(e, dict) else _event_attrs(e)
    except (AttributeError, KeyError):  # data left unset: an event with no evidence
        v = tuple(_get(e, f, {} if f == "data" else None) for f in _EVENT_FIELDS)
    ts = v[1]
    if not isinstance(ts, datetime):
        raise TypeError(f"event {v[0]!r}: ts must be a datetime, got {type(ts).__name__}")
    if ts.tzinfo is not None or v[6] is None:
        v = (*v[:1], _naive_utc(ts), *v[2:6], v[6] if v[6] is not None else {})
    return v


def _sqlite_time(dt: datetime) -> str:
    """SQLAlchemy's SQLite DATETIME text (always with microseconds: fixed width, so it sorts as time)."""
    return dt.isoformat(" ", "microseconds")


class Store:
    """One event log. Thread-safe; `readonly=True` opens it for queries without ever writing or creating it.

    `checkpoint_in_background` (SQLite only): SQLite copies the WAL into the database (a checkpoint, with its fsyncs)
    inside whichever commit crosses 1,000 WAL pages, which stalls that commit and every event behind it
    by milliseconds. With this set, commits never checkpoint; the `StoreWriter` calls `checkpoint()`
    from a thread of its own instead.
    """

    def __init__(self, url: str, *, readonly: bool = False, checkpoint_in_background: bool = False):
        self.url = resolve_url(url)
        self.readonly = readonly
        self.dialect = self.url.get_backend_name()
        self.checkpoint_in_background = checkpoint_in_background and not readonly and self.dialect == "sqlite"
        path = _sqlite_file(self.url)
        connect_args: dict = {}
        engine_url = self.url
        if path is not None:
            if readonly:
                engine_url = URL.create("sqlite", database=_readonly_uri(path), query={"uri": "true"})
            else:
                _create_private(path)
            connect_args["timeout"] = SQLITE_BUSY_TIMEOUT_MS / 1000
        self.path = path
        # a server may restart under a long-running agent: test pooled connections before use
        self.engine = sa.create_engine(
            engine_url, json_serializer=json_dumps, connect_args=connect_args, pool_pre_ping=self.dialect != "sqlite"
        )
        if self.dialect == "sqlite":
            sa.event.listen(self.engine, "connect", self._sqlite_pragmas)
        elif readonly:
            self.engine = self.engine.execution_options(postgresql_readonly=True)
        if readonly:
            missing = {"events", "deadletters"} - set(self._table_names())
            if missing:
                raise StoreError(f"{self.display_url}: not an event log (no table {', '.join(sorted(missing))})")
        else:
            metadata.create_all(self.engine)
        insert = sqlite.insert if self.dialect == "sqlite" else postgresql.insert
        self._insert_bars = insert(bars).on_conflict_do_nothing(index_elements=["symbol", "start"])
        self._write_lock = threading.Lock()
        self._write_conn: sa.Connection | None = None  # see _write_transaction

    @property
    def display_url(self) -> str:
        return str(self.path) if self.path is not None else self.url.render_as_string(hide_password=True)

    def _sqlite_pragmas(self, dbapi_conn, _record) -> None:
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        if self.readonly:
            cur.execute("PRAGMA query_only=1")
        else:
            cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer, nor it them
            cur.execute("PRAGMA synchronous=NORMAL")  # durable at each checkpoint, fast commits in WAL
            if self.checkpoint_in_background:
                cur.execute("PRAGMA wal_autocheckpoint=0")
            cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")  # keeps the event_id index's hot pages in memory
        cur.close()

    def _table_names(self) -> list[str]:
        try:
            return sa.inspect(self.engine).get_table_names()
        except sa.exc.DBAPIError as e:
            raise StoreError(f"{self.display_url}: {e.orig}") from None

    def close(self) -> None:
        with self._write_lock:
            self._drop_write_conn()
        self.engine.dispose()

    def _drop_write_conn(self) -> None:
        """Give the writes' connection back to the pool."""
        if self._write_conn is not None:
            try:
                self._write_conn.close()
            except sa.exc.SQLAlchemyError:
                pass
            self._write_conn = None

    # -- writing -------------------------------------------------------------------------------------------

    def write(self, events: Iterable = (), dead_letters: Iterable = (), bars: Iterable = ()) -> list[dict]:
        """Everything in ONE transaction; an event_id already in the log is skipped.

        Returns the newly inserted events as event dicts (docs/reference/events.md), oldest id first.
        """
        now = utcnow()
        ev_rows = [_event_values(e) for e in events]
        dl_rows = [
            {
                "topic": _get(d, "topic"),
                "payload": _get(d, "payload"),
                "reason": _get(d, "reason"),
                "received_at": _naive_utc(_get(d, "received_at")),
            }
            for d in dead_letters
        ]
        bar_rows = [
            {c: (_naive_utc(_get(b, c)) if c in ("start", "end") else _get(b, c)) for c in _BAR_FIELDS} for b in bars
        ]
        new: list[dict] = []
        with self._write_transaction() as conn:
            if ev_rows:
                insert = self._insert_sqlite if self.dialect == "sqlite" else self._insert_postgresql
                inserted = insert(conn, ev_rows, now)
                if inserted:
                    inserted.sort()
                    if len(inserted) < len(ev_rows) or any(i[1] != r[0] for i, r in zip(inserted, ev_rows)):
                        by_id = {r[0]: r for r in ev_rows}
                        ev_rows = [by_id[eid] for _, eid in inserted]
                    logged_at = isoformat(now)
                    for (id_, _), (eid, ts, kind, key, severity, message, data) in zip(inserted, ev_rows):
                        new.append(
                            {
                                "id": id_,
                                "event_id": eid,
                                "ts": isoformat(ts),
                                "logged_at": logged_at,
                                "kind": kind,
                                "key": key,
                                "severity": severity,
                                "message": message,
                                "data": data,
                            }
                        )
            if dl_rows:
                conn.execute(deadletters.insert(), dl_rows)
            if bar_rows:
                conn.execute(self._insert_bars, bar_rows)
        return new

    @contextlib.contextmanager
    def _write_transaction(self) -> Iterator[sa.Connection]:
        """One transaction on the writes' own connection, kept between writes (a pool checkout and return
        per commit cost more than a small insert); after an error it is given back and the next write
        checks out a fresh, tested one."""
        with self._write_lock:
            if self._write_conn is None:
                self._write_conn = self.engine.connect()
            try:
                with self._write_conn.begin():
                    yield self._write_conn
            except Exception:
                self._drop_write_conn()
                raise

    def _insert_postgresql(self, conn: sa.Connection, rows: list[tuple], now: datetime) -> list[tuple[int, str]]:
        """psycopg's pipelined executemany with RETURNING: one result per row, empty where the row was a duplicate.

        Several agents may write one log: a transaction-scoped advisory lock on the table makes their event
        inserts take turns, so two agents racing on the same ids cannot deadlock, and ids are handed out in
        commit order, so a reader polling for `id > last` (the outbox, `events --follow`) never skips a row
        that committed late. (SQLAlchemy's multi-row VALUES spends most of its time in psycopg re-parsing
        each huge statement; one small statement, pipelined, avoids that.)
        """
        params = [
            (eid, ts, now, kind, key, severity, message, json_dumps(data))
            for eid, ts, kind, key, severity, message, data in rows
        ]
        with self._driver_cursor(conn, _PG_INSERT) as cur:
            cur.execute("SELECT pg_advisory_xact_lock('events'::regclass::oid::bigint)")
            cur.executemany(_PG_INSERT, params, returning=True)
            inserted = []
            while True:
                inserted += cur.fetchall()
                if not cur.nextset():
                    return inserted

    def _insert_sqlite(self, conn: sa.Connection, rows: list[tuple], now: datetime) -> list[tuple[int, str]]:
        """The hot path: one C-level executemany on the driver's cursor, values already in SQLAlchemy's SQLite
        storage format (SQLAlchemy's statement layers cost more than the insert itself on a cold CPU cache).

        The transaction holds SQLite's write lock from the first insert on, and ids only grow
        (AUTOINCREMENT), so the rows this statement inserted are exactly the `rowcount` highest ids.
        """
        logged_at = _sqlite_time(now)
        params = [
            (eid, _sqlite_time(ts), logged_at, kind, key, severity, message, json_dumps(data))
            for eid, ts, kind, key, severity, message, data in rows
        ]
        with self._driver_cursor(conn, _SQLITE_INSERT) as cur:
            n = cur.executemany(_SQLITE_INSERT, params).rowcount
            if n <= 0:
                return []
            return cur.execute("SELECT id, event_id FROM events ORDER BY id DESC LIMIT ?", (n,)).fetchall()

    @contextlib.contextmanager
    def _driver_cursor(self, conn: sa.Connection, statement: str) -> Iterator:
        """A cursor of the driver itself, in `conn`'s transaction; its errors raised as SQLAlchemy raises them,
        so the writer tells a database that is away (retry) from a row it refuses."""
        dbapi = self.engine.dialect.loaded_dbapi
        cur = conn.connection.dbapi_connection.cursor()
        try:
            yield cur
        except dbapi.Error as e:
            raise sa.exc.DBAPIError.instance(statement, None, e, dbapi.Error) from None
        finally:
            cur.close()

    def checkpoint(self) -> None:
        """Copy committed WAL pages into the database file without waiting on readers or the writer."""
        if self.dialect == "sqlite":
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def unpublished(self, limit: int = 1000) -> list[dict]:
        """Events not yet acknowledged by the broker, oldest first (the outbox)."""
        q = sa.select(events).where(events.c.published_at.is_(None)).order_by(events.c.id).limit(limit)
        with self.engine.connect() as conn:
            return [_event_dict(r) for r in conn.execute(q)]

    def mark_published(self, ids: list[int]) -> None:
        if not ids:
            return
        now = utcnow()
        stmt = (
            events.update()
            .where(events.c.id.in_(sa.bindparam("ids", expanding=True)), events.c.published_at.is_(None))
            .values(published_at=now)
        )
        with self.engine.begin() as conn:
            for i in range(0, len(ids), 500):
                conn.execute(stmt, {"ids": list(ids[i : i + 500])})

    def apply_retention(self, max_age_days: float, max_rows: int) -> int:
        """Delete what is older than `max_age_days` (by time logged/received/started) and beyond `max_rows`.

        0 disables either limit. Deletes in id-range chunks so no single transaction holds the log for long.
        Returns the number of rows deleted over all three tables.
        """
        deleted = 0
        cutoff = utcnow() - timedelta(days=max_age_days) if max_age_days > 0 else None
        for table, age_col in ((events, events.c.logged_at), (deadletters, deadletters.c.received_at), (bars, bars.c.start)):
            with self.engine.connect() as conn:
                lo, hi = conn.execute(sa.select(sa.func.min(table.c.id), sa.func.max(table.c.id))).one()
                if lo is None:
                    continue
                keep_from = lo  # delete every id below it
                if cutoff is not None:
                    keep_from = _first_id_not_older(conn, table, age_col, cutoff, lo, hi)
                if max_rows > 0 and hi - lo + 1 > max_rows:  # ids can have gaps: only then count exactly
                    nth_newest = conn.execute(
                        sa.select(table.c.id).order_by(table.c.id.desc()).offset(max_rows - 1).limit(1)
                    ).scalar()
                    keep_from = max(keep_from, nth_newest or lo)
            while lo < keep_from:
                step_end = min(keep_from, lo + 50_000)
                with self.engine.begin() as conn:
                    deleted += conn.execute(table.delete().where(table.c.id >= lo, table.c.id < step_end)).rowcount
                lo = step_end
        return deleted

    # -- reading -------------------------------------------------------------------------------------------

    def events(
        self,
        *,
        kinds: Iterable[str] = (),
        key: str | None = None,
        severity: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after_id: int | None = None,
        limit: int | None = None,
    ) -> list[dict]:
        """Matching events, newest last. `limit` keeps the most recent; `after_id` returns the oldest new ones."""
        q = sa.select(events)
        kinds = list(kinds)
        if kinds:
            q = q.where(events.c.kind.in_(kinds))
        if key is not None:
            q = q.where(events.c.key == key)
        if severity is not None:
            q = q.where(events.c.severity == severity)
        if since is not None:
            q = q.where(events.c.ts >= _naive_utc(since))
        if until is not None:
            q = q.where(events.c.ts < _naive_utc(until))
        if after_id is not None:
            q = q.where(events.c.id > after_id).order_by(events.c.id)
            newest_first = False
        else:
            q = q.order_by(events.c.id.desc())
            newest_first = True
        if limit is not None:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            rows = [_event_dict(r) for r in conn.execute(q)]
        return rows[::-1] if newest_first else rows

    def dead_letters(self, *, since: datetime | None = None, after_id: int | None = None, limit: int | None = None) -> list[dict]:
        """Dead letters, newest last. `limit` keeps the most recent; `after_id` returns the oldest newer ones."""
        q = sa.select(deadletters)
        if since is not None:
            q = q.where(deadletters.c.received_at >= _naive_utc(since))
        if after_id is not None:
            q = q.where(deadletters.c.id > after_id).order_by(deadletters.c.id)
        else:
            q = q.order_by(deadletters.c.id.desc())
        if limit is not None:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            rows = [
                {
                    "id": r.id,
                    "topic": r.topic,
                    "payload": r.payload,
                    "reason": r.reason,
                    "received_at": isoformat(r.received_at),
                }
                for r in conn.execute(q)
            ]
        return rows if after_id is not None else rows[::-1]


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


_FIELDS = {
    "events": _EVENT_FIELDS,
    "dead_letters": ("topic", "payload", "reason", "received_at"),
    "bars": _BAR_FIELDS,
}


def _clean_row(table: str, row: object, dialect: str) -> dict:
    return {f: _clean_text(_get(row, f), dialect) for f in _FIELDS[table]}


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
        retention: tuple[float, int] = (0.0, 0),
        retention_every: float = 60.0,
    ):
        self.store = store
        self.batch_size = max(1, batch_size)
        self.on_commit = on_commit
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
        self.rows_written = 0
        self.errors = 0
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
            new = self._write_apart(batch, e)
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
        with self._lock:
            self.pending_rows -= rows
            self._done_n += len(batch)
            for _ in batch:
                self._submitted_at.popleft()
            self._committed.notify_all()

    def _retain(self) -> None:
        try:
            t0 = time.perf_counter()
            deleted = self.store.apply_retention(*self.retention)
            if deleted:
                log.info("store_retention", deleted=deleted, seconds=round(time.perf_counter() - t0, 3))
        except Exception as e:  # noqa: BLE001 - retention failing must not stop writing
            log.warning("store_retention_failed", error=str(e).splitlines()[0])
