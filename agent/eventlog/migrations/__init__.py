"""The event log's schema version: Alembic migrations, applied under a lock, checked before use.

Every writable `Store` brings its log to the newest revision when it opens it (and `edge-agent migrate`
does only that). Agents starting together on one log take turns: on PostgreSQL the migration runs in one
transaction holding an advisory lock, on SQLite inside `BEGIN IMMEDIATE` (the file's write lock), and
each reads the version only once it holds the lock, so the second finds the work done. A log stamped
with a revision this code does not know was written by a newer release: it is refused, never touched.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import sqlalchemy as sa
import structlog
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from edgewatch.agent.config import ConfigError

log = structlog.get_logger("edgewatch.agent.eventlog.migrations")
# Alembic narrates every connection at INFO ("Context impl SQLiteImpl." ...); the upgrades it runs are logged
# below, once, in the agent's own words
logging.getLogger("alembic").setLevel(logging.WARNING)

BASELINE = "0001"  # the schema of 0.2.0, whose logs carry no version
SQLITE_LOCK_WAIT = 120.0  # seconds to wait for another process's migration of the same file
_LOCK_KEY = "edgewatch.eventlog.migrate"
_IN_PROCESS = threading.Lock()  # Alembic's `context` is one global per process: one migration at a time


class SchemaVersionError(ConfigError):
    """The log's schema is not the one this code reads: newer (upgrade edge-agent) or older (migrate it)."""


def _alembic_config(conn: sa.Connection | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(Path(__file__).parent))
    cfg.attributes["connection"] = conn
    return cfg


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(_alembic_config())


def head() -> str:
    """The newest revision this code knows."""
    return _script().get_current_head()


def current(conn: sa.Connection) -> str | None:
    """The log's revision; BASELINE for an unversioned log of 0.2.0; None for an empty database."""
    heads = MigrationContext.configure(conn).get_current_heads()
    if heads:
        return heads[0]
    return BASELINE if sa.inspect(conn).has_table("events") else None


def check(conn: sa.Connection, where: str) -> str | None:
    """The log's revision, after making sure this code knows it (SchemaVersionError if the log is newer)."""
    revision = current(conn)
    if revision is not None and revision not in {script.revision for script in _script().walk_revisions()}:
        raise SchemaVersionError(
            f"{where}: the log's schema (revision {revision}) is newer than this edge-agent knows "
            f"(up to {head()}): upgrade edge-agent"
        )
    return revision


def check_readable(conn: sa.Connection, where: str) -> None:
    """For read-only use: the log must be at this code's revision, since a query cannot migrate it."""
    revision = check(conn, where)
    if revision != head():
        raise SchemaVersionError(
            f"{where}: the log's schema (revision {revision}) is older than this edge-agent's ({head()}): "
            "run `edge-agent migrate` (or start the agent, which migrates it)"
        )


def upgrade(engine: sa.Engine, where: str) -> tuple[str | None, str]:
    """Bring the log to the newest revision, under the lock; returns (revision before, revision after)."""
    with _IN_PROCESS, engine.connect() as conn, conn.begin():
        _lock(conn)
        before = check(conn, where)
        stamped = bool(MigrationContext.configure(conn).get_current_heads())
        if stamped and before == head():
            return before, before
        cfg = _alembic_config(conn)
        if before == BASELINE and not stamped:
            command.stamp(cfg, BASELINE)  # a 0.2.0 log: it has the baseline tables, without the stamp
        command.upgrade(cfg, "head")
        after = head()
    if before is not None:  # a new log is not news; an upgraded one is
        log.info("eventlog_migrated", log=where, before=before, after=after)
    return before, after


def _lock(conn: sa.Connection) -> None:
    """Hold the migration lock until `conn`'s transaction ends."""
    if conn.dialect.name == "postgresql":
        # per schema, so that logs in other schemas of the same database do not wait on each other
        conn.exec_driver_sql(
            "SELECT pg_advisory_xact_lock(hashtext(%(key)s), hashtext(coalesce(current_schema(), '')))",
            {"key": _LOCK_KEY},
        )
        return
    deadline = time.monotonic() + SQLITE_LOCK_WAIT
    while True:
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # waits busy_timeout for the write lock, then raises
            return
        except sa.exc.OperationalError as e:
            if "locked" not in str(e.orig) or time.monotonic() > deadline:
                raise
            log.warning("eventlog_migration_waits", reason=str(e.orig))
