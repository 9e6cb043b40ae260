"""The event log as edgewatch 0.2.0 created it (events, deadletters, bars), before logs carried a version.

A log made by 0.2.0 has these tables and no version: `migrations.upgrade` stamps it at this revision
instead of running it. The tables are spelled out here, never taken from today's `metadata`, so that
this revision keeps creating what 0.2.0 created.
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite: INTEGER PRIMARY KEY = the rowid


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(64), nullable=False, unique=True),
        sa.Column("ts", sa.DateTime, nullable=False, index=True),
        sa.Column("logged_at", sa.DateTime, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False, index=True),
        sa.Column("key", sa.Text, nullable=False, index=True),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("published_at", sa.DateTime, nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_events_unpublished", "events", ["id"],
        sqlite_where=sa.text("published_at IS NULL"), postgresql_where=sa.text("published_at IS NULL"),
    )
    op.create_table(
        "deadletters",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("received_at", sa.DateTime, nullable=False, index=True),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "bars",
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


def downgrade() -> None:
    for table in ("bars", "deadletters", "events"):
        op.drop_table(table)
