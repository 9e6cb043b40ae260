"""The `Store`: one event log opened (URL, file mode, migrations), written, queried and trimmed.

The log is also the outbox: events are published from it, so `published_at`
stays NULL until the broker has acknowledged an event. SQLite (one file, WAL,
synchronous=NORMAL) is the default; any SQLAlchemy URL works, and PostgreSQL is
tested. The tables are in `schema`; the thread that writes to a `Store` is `writer.StoreWriter`.
"""

from __future__ import annotations

import contextlib
import operator
import os
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote

import sqlalchemy as sa
import structlog
from edgewatch.agent.config import ConfigError, topic_pattern
from edgewatch.agent.eventlog import migrations
from edgewatch.agent.eventlog.schema import (
    BAR_FIELDS,
    DEADLETTER_FIELDS,
    EVENT_FIELDS,
    bar_dict,
    bars,
    deadletters,
    event_dict,
    events,
    labels,
    state_snapshots,
)
from edgewatch.agent.encoding import json_dumps
from edgewatch.agent.timeutil import isoformat, utcnow
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url

log = structlog.get_logger("edgewatch.agent.eventlog.store")

FILE_MODE = 0o640  # owner writes, the service's group (operators) reads, nobody else
SQLITE_BUSY_TIMEOUT_MS = 5000
SQLITE_CACHE_KIB = 32768  # page cache of the writer's connection (SQLite's default is 2 MiB)
EVENT_ID_DIGITS = 24  # an event_id's hex digits: a reference shorter than that and all digits is a log id


class StoreError(RuntimeError):
    """The log cannot be used (a database server that fails or refuses): a runtime failure."""


class StoreNotFound(ConfigError):
    """A read-only open of a log that does not exist, or of a file or database without its tables: a usage error,
    nothing is created."""


def resolve_url(url: str) -> URL:
    """A bare path means SQLite; anything with `://` must be an SQLAlchemy URL. ConfigError otherwise."""
    text = str(url).strip()
    if not text:
        raise ConfigError("store.url: empty (a path or an SQLAlchemy URL)")
    if "://" not in text:
        parsed = URL.create("sqlite", database=str(Path(text).expanduser()))
    else:
        try:
            parsed = make_url(text)
        except (sa.exc.ArgumentError, ValueError) as e:
            raise ConfigError(f"store.url: not an SQLAlchemy URL: {text!r} ({e})") from None
        if parsed.get_backend_name() not in ("sqlite", "postgresql"):
            raise ConfigError(f"store.url: unsupported database {parsed.get_backend_name()!r} (sqlite or postgresql)")
        _require_driver(parsed)
    # an SQLite URL of no file (no name, `:memory:`, a `file:` URI of `:memory:` or `mode=memory`): each
    # connection would get a fresh, empty database, without tables, and every event would be lost
    if parsed.get_backend_name() == "sqlite":
        db = (parsed.database or "").strip()
        name, _, query = db[len("file:"):].partition("?") if db.startswith("file:") else (db, "", "")
        if name in ("", ":memory:") or parsed.query.get("mode") == "memory" or "mode=memory" in query.split("&"):
            raise ConfigError(f"store.url: {text!r} is an in-memory database: every event would be lost "
                              "(give a file: a path, or sqlite:///PATH)")
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
    if not path.is_file():
        raise StoreNotFound(f"{path}: {'is a directory, not an event log' if path.is_dir() else 'no such event log'}")
    # a permission check that opens nothing: closing a descriptor of the file would drop every SQLite lock
    # this process holds on it (POSIX), and the agent's status page opens its own log this way while it writes
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{path}: permission denied (operators need the service's group)")
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
    """A row of `events` -> the object users see."""
    return event_dict(row.id, row.event_id, row.ts, row.logged_at, row.kind, row.key, row.severity, row.message,
                      row.data, row.agent_id)


def _key_matches(column: sa.ColumnElement, topic_filter: str) -> sa.ColumnElement:
    if "+" in topic_filter or "#" in topic_filter:
        return column.regexp_match(topic_pattern(topic_filter))
    return column == topic_filter


def _naive_utc(dt: datetime) -> datetime:
    return dt.astimezone(timezone.utc).replace(tzinfo=None) if dt.tzinfo else dt


def get_field(obj, name: str, default=None):
    """A field of a record: a csp.Struct's attribute or a dict's item."""
    return obj.get(name, default) if isinstance(obj, dict) else getattr(obj, name, default)


_event_attrs = operator.attrgetter(*EVENT_FIELDS)
_event_items = operator.itemgetter(*EVENT_FIELDS)
_SQLITE_INSERT = (
    "INSERT OR IGNORE INTO events (event_id, ts, logged_at, kind, \"key\", severity, message, data, agent_id)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

_PG_INSERT = (
    "INSERT INTO events (event_id, ts, logged_at, kind, \"key\", severity, message, data, agent_id)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s::json, %s) ON CONFLICT (event_id) DO NOTHING RETURNING id, event_id"
)


def _event_values(e) -> tuple:
    """An Event struct (or a dict with its fields) -> a tuple in `EVENT_FIELDS` order, ts naive UTC."""
    try:
        v = _event_items(e) if isinstance(e, dict) else _event_attrs(e)
    except (AttributeError, KeyError):  # data left unset: an event with no evidence
        v = tuple(get_field(e, f, {} if f == "data" else None) for f in EVENT_FIELDS)
    ts = v[1]
    if not isinstance(ts, datetime):
        raise TypeError(f"event {v[0]!r}: ts must be a datetime, got {type(ts).__name__}")
    if ts.tzinfo is not None or v[6] is None:
        v = (*v[:1], _naive_utc(ts), *v[2:6], v[6] if v[6] is not None else {})
    return v


def _sqlite_wal(cur) -> None:
    """Switch to WAL. On a new file, agents starting together race to switch it, and SQLite may answer
    "database is locked" at once rather than through the busy timeout: try again for a while."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except Exception as e:  # noqa: BLE001 - the driver's OperationalError; anything else is raised below
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _sqlite_time(dt: datetime) -> str:
    """SQLAlchemy's SQLite DATETIME text (always with microseconds: fixed width, so it sorts as time)."""
    return dt.isoformat(" ", "microseconds")


class Store:
    """One event log. Thread-safe; `readonly=True` opens it for queries without ever writing or creating it.

    `agent_id` (`agent.id`): every row this store writes carries it, and its outbox queries
    (`unpublished`, `unpublished_rows`, `unpublished_count`) see only rows that carry it, so agents sharing a
    log each publish their own rows and none of another's.

    `checkpoint_in_background` (SQLite only): SQLite copies the WAL into the database (a checkpoint, with its fsyncs)
    inside whichever commit crosses 1,000 WAL pages, which stalls that commit and every event behind it
    by milliseconds. With this set, commits never checkpoint; the `StoreWriter` calls `checkpoint()`
    from a thread of its own instead.
    """

    def __init__(self, url: str, *, readonly: bool = False, checkpoint_in_background: bool = False,
                 agent_id: str = ""):
        self.url = resolve_url(url)
        self.agent_id = agent_id
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
                raise StoreNotFound(f"{self.display_url}: not an event log (no table {', '.join(sorted(missing))})")
            with self.engine.connect() as conn:
                migrations.check_readable(conn, self.display_url)
        # (revision before, after) of the migration this open ran; None when read-only
        self.migrated = None if readonly else migrations.upgrade(self.engine, self.display_url)
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
            _sqlite_wal(cur)  # readers never block the writer, nor it them
            cur.execute("PRAGMA synchronous=NORMAL")  # durable at each checkpoint, fast commits in WAL
            if self.checkpoint_in_background:
                cur.execute("PRAGMA wal_autocheckpoint=0")
            cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")  # keeps the event_id index's hot pages in memory
        cur.close()

    def _table_names(self) -> list[str]:
        try:
            return sa.inspect(self.engine).get_table_names()
        except sa.exc.DBAPIError as e:
            raise StoreError(f"{self.display_url}: {str(e.orig).splitlines()[0]}") from None

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

        Returns the newly inserted events as the objects users see (`schema.event_dict`), oldest id first.
        """
        now = utcnow()
        ev_rows = [_event_values(e) for e in events]
        agent_id = self.agent_id
        dl_rows = [
            {**{f: get_field(d, f) for f in DEADLETTER_FIELDS}, "received_at": _naive_utc(get_field(d, "received_at")),
             "agent_id": agent_id}
            for d in dead_letters
        ]
        bar_rows = [
            {**{c: (_naive_utc(get_field(b, c)) if c in ("start", "end") else get_field(b, c)) for c in BAR_FIELDS},
             "agent_id": agent_id}
            for b in bars
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
                    new = [event_dict(id_, *row[:2], now, *row[2:], agent_id)
                           for (id_, _), row in zip(inserted, ev_rows)]
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
        agent_id = self.agent_id
        params = [
            (eid, ts, now, kind, key, severity, message, json_dumps(data), agent_id)
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
        (AUTOINCREMENT), so the rows this statement inserted are exactly the `rowcount` highest ids: when
        that is every row, they are the last id and those below it, in the rows' order (no query needed).
        """
        logged_at = _sqlite_time(now)
        agent_id = self.agent_id
        params = [
            (eid, _sqlite_time(ts), logged_at, kind, key, severity, message, json_dumps(data), agent_id)
            for eid, ts, kind, key, severity, message, data in rows
        ]
        with self._driver_cursor(conn, _SQLITE_INSERT) as cur:
            n = cur.executemany(_SQLITE_INSERT, params).rowcount
            if n <= 0:
                return []
            if n == len(params):
                last = cur.execute("SELECT last_insert_rowid()").fetchone()[0]
                return [(last - n + 1 + i, p[0]) for i, p in enumerate(params)]
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

    def _own_unpublished(self, table: sa.Table) -> list:
        """This agent's rows of `table` not yet acknowledged by the broker (its partial index holds just these)."""
        return [table.c.published_at.is_(None), table.c.agent_id == self.agent_id]

    def unpublished(self, limit: int = 1000) -> list[dict]:
        """This agent's events not yet acknowledged by the broker, oldest first."""
        return self.unpublished_rows("events", limit)

    def unpublished_rows(self, table: str, limit: int = 1000) -> list[dict]:
        """This agent's rows of `events`, `bars` or `deadletters` not yet acknowledged by the broker, oldest first
        (the outbox)."""
        t = _PUBLISHED[table]
        q = sa.select(t).where(*self._own_unpublished(t)).order_by(t.c.id).limit(limit)
        with self.engine.connect() as conn:
            return [_ROW_DICTS[table](r) for r in conn.execute(q)]

    def unpublished_count(self) -> int:
        """This agent's events, bars and dead letters the broker has not acknowledged yet."""
        with self.engine.connect() as conn:
            return sum(
                conn.execute(sa.select(sa.func.count()).select_from(t).where(*self._own_unpublished(t))).scalar()
                for t in _PUBLISHED.values()
            )

    def adopt_unowned(self) -> int:
        """Make the unpublished events, bars and dead letters that carry no agent id (logged before agents had ids) this agent's,
        so that its outbox publishes them. One statement per table: of agents starting together on an upgraded
        log, each row goes to exactly one. Returns the number of rows adopted."""
        if not self.agent_id:
            return 0
        with self.engine.begin() as conn:
            return sum(
                conn.execute(t.update().where(t.c.published_at.is_(None), t.c.agent_id == "")
                             .values(agent_id=self.agent_id)).rowcount
                for t in _PUBLISHED.values()
            )

    def mark_published(self, ids: list[int], table: str = "events") -> None:
        """Stamp rows of `events` (or `bars`, `deadletters`) as acknowledged by the broker."""
        if not ids:
            return
        t = _PUBLISHED[table]
        now = utcnow()
        stmt = (
            t.update()
            .where(t.c.id.in_(sa.bindparam("ids", expanding=True)), t.c.published_at.is_(None))
            .values(published_at=now)
        )
        with self.engine.begin() as conn:
            for i in range(0, len(ids), 500):
                conn.execute(stmt, {"ids": list(ids[i : i + 500])})

    def apply_retention(self, max_age_days: float, max_rows: int, max_dead_letters: int = 0) -> int:
        """Delete what is older than `max_age_days` (by time logged/received/started) and beyond `max_rows`
        (dead letters: beyond `max_dead_letters`, else `max_rows`: whoever can publish can make them).

        0 disables a limit. Deletes in id-range chunks so no single transaction holds the log for long.
        Returns the number of rows deleted over all three tables.
        """
        deleted = 0
        cutoff = utcnow() - timedelta(days=max_age_days) if max_age_days > 0 else None
        for table, age_col in ((events, events.c.logged_at), (deadletters, deadletters.c.received_at), (bars, bars.c.start)):
            rows = max_dead_letters if table is deadletters and max_dead_letters > 0 else max_rows
            with self.engine.connect() as conn:
                lo, hi = conn.execute(sa.select(sa.func.min(table.c.id), sa.func.max(table.c.id))).one()
                if lo is None:
                    continue
                keep_from = lo  # delete every id below it
                if cutoff is not None:
                    keep_from = _first_id_not_older(conn, table, age_col, cutoff, lo, hi)
                if rows > 0 and hi - lo + 1 > rows:  # ids can have gaps: only then count exactly
                    nth_newest = conn.execute(
                        sa.select(table.c.id).order_by(table.c.id.desc()).offset(rows - 1).limit(1)
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
        keys: Iterable[str] = (),
        severity: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        agent: str | None = None,
        after_id: int | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[dict]:
        """Matching events, newest last. `limit` keeps the most recent (skipping `offset` newer ones);
        `after_id` returns the oldest newer ones; `agent` keeps one agent's; `keys`: topic filters on the key
        (`plant1/#`, `plant1/+/pump`; a filter without wildcards is one key), any of which may match."""
        kinds, keys = list(kinds), list(keys)
        where = [
            events.c.kind.in_(kinds) if kinds else None,
            events.c.key == key if key is not None else None,
            sa.or_(*(_key_matches(events.c.key, f) for f in keys)) if keys else None,
            events.c.severity == severity if severity is not None else None,
            events.c.ts >= _naive_utc(since) if since is not None else None,
            events.c.ts < _naive_utc(until) if until is not None else None,
            events.c.agent_id == agent if agent is not None else None,
        ]
        return self._select(events, _event_dict, where, after_id, limit, offset)

    def dead_letters(
        self,
        *,
        code: str | None = None,
        since: datetime | None = None,
        agent: str | None = None,
        after_id: int | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[dict]:
        """Dead letters, newest last; `limit`, `offset` and `after_id` as for `events`."""
        where = [
            deadletters.c.code == code if code is not None else None,
            deadletters.c.received_at >= _naive_utc(since) if since is not None else None,
            deadletters.c.agent_id == agent if agent is not None else None,
        ]
        return self._select(deadletters, _dead_letter_dict, where, after_id, limit, offset)

    def bars(
        self,
        *,
        symbol: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        agent: str | None = None,
        after_id: int | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[dict]:
        """VWAP bars in the order they were logged, newest last; `since`/`until` bound their start;
        `limit`, `offset` and `after_id` as for `events`."""
        where = [
            bars.c.symbol == symbol if symbol is not None else None,
            bars.c.start >= _naive_utc(since) if since is not None else None,
            bars.c.start < _naive_utc(until) if until is not None else None,
            bars.c.agent_id == agent if agent is not None else None,
        ]
        return self._select(bars, bar_dict, where, after_id, limit, offset)

    # -- labels (edge-agent label) -------------------------------------------------------------------------

    def label(self, ref: str, label: str | None, note: str = "") -> dict | None:
        """Label the event `ref` (its log id, as `events` shows it, or its event_id) a real finding or a false
        alarm (`label` one of kinds.LABELS; None takes its label off); a new label replaces the old. Returns the
        event with its `label` and `note`, None when the log holds no such event."""
        match = events.c.id == int(ref) if ref.isdigit() and len(ref) < EVENT_ID_DIGITS else events.c.event_id == ref
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(events).where(match)).first()
            if row is None:
                return None
            conn.execute(labels.delete().where(labels.c.event_id == row.event_id))
            if label is not None:
                conn.execute(labels.insert().values(event_id=row.event_id, kind=row.kind, key=row.key, ts=row.ts,
                                                    label=label, note=note, labelled_at=utcnow()))
        return _event_dict(row) | {"label": label, "note": note if label is not None else ""}

    def labels(self, *, kinds: Iterable[str] = (), since: datetime | None = None,
               until: datetime | None = None) -> list[dict]:
        """The labels given (of events of `kinds`, at or after `since` and before `until`), oldest event first."""
        kinds = list(kinds)
        q = sa.select(labels).where(*(w for w in (
            labels.c.kind.in_(kinds) if kinds else None,
            labels.c.ts >= _naive_utc(since) if since is not None else None,
            labels.c.ts < _naive_utc(until) if until is not None else None,
        ) if w is not None)).order_by(labels.c.ts, labels.c.event_id)
        with self.engine.connect() as conn:
            return [{"event_id": r.event_id, "kind": r.kind, "key": r.key, "ts": isoformat(r.ts), "label": r.label,
                     "note": r.note, "labelled_at": isoformat(r.labelled_at)} for r in conn.execute(q)]

    # -- state snapshots (agent/analytics/snapshot.py) -----------------------------------------------------

    def save_snapshot(self, agent: str, taken_at: datetime, version: str, config: dict, keys: dict, size: int,
                      state: bytes, keep: int) -> int:
        """Add one snapshot of `agent` and delete its older ones beyond the newest `keep`, in one transaction;
        returns its id."""
        with self.engine.begin() as conn:
            new = conn.execute(state_snapshots.insert().values(
                agent=agent, taken_at=_naive_utc(taken_at), saved_at=utcnow(), version=version, config=config,
                keys=keys, size=size, state=state)).inserted_primary_key[0]
            old = conn.execute(sa.select(state_snapshots.c.id).where(state_snapshots.c.agent == agent)
                               .order_by(state_snapshots.c.id.desc()).offset(max(1, keep))).scalars().all()
            if old:
                conn.execute(state_snapshots.delete().where(state_snapshots.c.id.in_(old)))
        return new

    def snapshots(self, agent: str | None = None) -> list[dict]:
        """The snapshots (of `agent`, or of every agent), newest first, without their state."""
        cols = [c for c in state_snapshots.c if c.name != "state"]
        q = sa.select(*cols).order_by(state_snapshots.c.id.desc())
        if agent is not None:
            q = q.where(state_snapshots.c.agent == agent)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def snapshot_state(self, id_: int) -> bytes | None:
        """The compressed state of snapshot `id_` (None when it was pruned meanwhile)."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(state_snapshots.c.state).where(state_snapshots.c.id == id_)).scalar()

    def mark_restored(self, id_: int, at: datetime) -> None:
        """Record that a start resumed from snapshot `id_`."""
        with self.engine.begin() as conn:
            conn.execute(state_snapshots.update().where(state_snapshots.c.id == id_).values(restored_at=at))

    def _select(self, table: sa.Table, to_dict, where: list, after_id: int | None, limit: int | None,
                offset: int) -> list[dict]:
        """Rows matching every condition in `where` (None: no condition), by id: the oldest after `after_id`,
        or else the newest `limit` (after skipping `offset`), returned oldest first either way."""
        q = sa.select(table).where(*(w for w in where if w is not None))
        if after_id is not None:
            q = q.where(table.c.id > after_id).order_by(table.c.id)
        else:
            q = q.order_by(table.c.id.desc()).offset(offset or None)
        if limit is not None:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            rows = [to_dict(r) for r in conn.execute(q)]
        return rows if after_id is not None else rows[::-1]


def _dead_letter_dict(row) -> dict:
    return {f: getattr(row, f) for f in ("id", "topic", "payload", "reason", "code")} | {
        "received_at": isoformat(row.received_at), "agent_id": row.agent_id}


_PUBLISHED = {"events": events, "bars": bars, "deadletters": deadletters}  # the tables the outbox publishes from
_ROW_DICTS = {"events": _event_dict, "bars": bar_dict, "deadletters": _dead_letter_dict}  # a row as users see it
