"""The event log's tables, and the objects its rows become for users (queries, MQTT payloads).

Every datetime is naive UTC, stored as the backend's timestamp type (SQLite: fixed-width ISO text), so it
sorts and filters correctly in both. The tables here are the newest revision of the schema; the
migrations (`migrations/versions`) build them, and a test checks that the two agree.
"""

from __future__ import annotations

import sqlalchemy as sa
from edgewatch.agent.kinds import LEGACY_CODE
from edgewatch.agent.timeutil import isoformat

metadata = sa.MetaData()

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite: INTEGER PRIMARY KEY = the rowid


def _agent_id() -> sa.Column:
    """The agent that logged the row (`agent.id`); "" on rows logged before agents had ids."""
    return sa.Column("agent_id", sa.String(64), nullable=False, server_default="")


def _unpublished(name: str) -> sa.Index:
    """The outbox's small partial index, so finding an agent's unpublished rows never scans the log."""
    where = sa.text("published_at IS NULL")
    return sa.Index(name, "agent_id", "id", sqlite_where=where, postgresql_where=where)

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
    _agent_id(),
    _unpublished("ix_events_unpublished"),
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
    sa.Column("code", sa.String(32), nullable=False, server_default=LEGACY_CODE),  # the reason's class: kinds.REASON_CODES
    sa.Column("published_at", sa.DateTime, nullable=True),  # as for events: NULL until the broker has it
    _agent_id(),
    _unpublished("ix_deadletters_unpublished"),
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
    sa.Column("published_at", sa.DateTime, nullable=True),  # as for events: NULL until the broker has it
    _agent_id(),
    sa.UniqueConstraint("symbol", "start", name="uq_bars_symbol_start"),
    _unpublished("ix_bars_unpublished"),
)

# the analytics' state, saved periodically and at a clean stop, restored at start (agent/analytics/snapshot.py);
# the newest few per agent are kept
state_snapshots = sa.Table(
    "state_snapshots",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("agent", sa.Text, nullable=False),  # the agent that took it (agent.id)
    sa.Column("taken_at", sa.DateTime, nullable=False),  # received_at of the newest input the state includes
    sa.Column("saved_at", sa.DateTime, nullable=False),
    sa.Column("version", sa.String(32), nullable=False),  # snapshot.version(): format and layout of the state
    sa.Column("config", sa.JSON, nullable=False),  # section (and section:GROUP) -> hash of its state-shaping settings
    sa.Column("keys", sa.JSON, nullable=False),  # state name -> keys (sensors, series, symbols) it holds
    sa.Column("size", sa.Integer, nullable=False),  # bytes of `state` (compressed)
    sa.Column("state", sa.LargeBinary, nullable=False),  # zlib-compressed pickle
    sa.Column("restored_at", sa.DateTime, nullable=True),  # when a start last resumed from it
    sa.Index("ix_state_snapshots_agent", "agent", "id"),
)

# operators' verdicts on events (`edge-agent label`): a finding that was real or a false alarm, one per event.
# The event's kind, key and time are copied in, so a label outlives the event's retention: it is what
# `edge-agent calibrate --labels` weighs settings against
labels = sa.Table(
    "labels",
    metadata,
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("ts", sa.DateTime, nullable=False),
    sa.Column("label", sa.String(16), nullable=False),  # kinds.LABELS
    sa.Column("note", sa.Text, nullable=False, server_default=""),
    sa.Column("labelled_at", sa.DateTime, nullable=False),
)

BAR_FIELDS = ("symbol", "start", "end", "open", "high", "low", "close", "volume", "vwap", "trades")
EVENT_FIELDS = ("event_id", "ts", "kind", "key", "severity", "message", "data")  # what a producer sets
DEADLETTER_FIELDS = ("topic", "payload", "reason", "received_at", "code")


def event_dict(id_: int, event_id: str, ts, logged_at, kind: str, key: str, severity: str, message: str,
               data: object, agent_id: str) -> dict:
    """One logged event as users see it (queries, MQTT; docs/reference/events.md): times as ISO-8601 UTC text."""
    return {
        "id": id_,
        "event_id": event_id,
        "ts": isoformat(ts),
        "logged_at": isoformat(logged_at),
        "kind": kind,
        "key": key,
        "severity": severity,
        "message": message,
        "data": data,
        "agent_id": agent_id,
    }


def bar_dict(row) -> dict:
    """A row of `bars` -> the object users see (`edge-agent bars`, the retained `bars/{symbol}` message)."""
    return {
        "id": row.id,
        "symbol": row.symbol,
        "start": isoformat(row.start),
        "end": isoformat(row.end),
        **{f: getattr(row, f) for f in ("open", "high", "low", "close", "volume", "vwap", "trades")},
        "agent_id": row.agent_id,
    }
