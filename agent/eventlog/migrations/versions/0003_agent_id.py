"""Several agents share one log: each event, dead letter and bar names the agent that logged it.

Rows already in the log get "" (the agent of a single-agent log). The outbox's partial indexes lead with
the agent id, so each agent finds its own unpublished rows without reading the others'.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_UNPUBLISHED = {"events": "ix_events_unpublished", "bars": "ix_bars_unpublished"}


def _partial_index(table: str, columns: list[str]) -> None:
    op.create_index(
        _UNPUBLISHED[table], table, columns,
        sqlite_where=sa.text("published_at IS NULL"), postgresql_where=sa.text("published_at IS NULL"),
    )


def upgrade() -> None:
    for table in ("events", "deadletters", "bars"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("agent_id", sa.String(64), nullable=False, server_default=""))
    for table, index in _UNPUBLISHED.items():
        op.drop_index(index, table_name=table)
        _partial_index(table, ["agent_id", "id"])


def downgrade() -> None:
    for table, index in _UNPUBLISHED.items():
        op.drop_index(index, table_name=table)
        _partial_index(table, ["id"])
    for table in ("events", "deadletters", "bars"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("agent_id")
