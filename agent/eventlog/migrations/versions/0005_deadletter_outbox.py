"""Dead letters reach MQTT through the outbox, like events and bars, so they get `published_at`.

Rows already in the log were published when they were logged: they are stamped with their receive time,
so the outbox does not send the whole history again after the upgrade.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deadletters") as batch:
        batch.add_column(sa.Column("published_at", sa.DateTime, nullable=True))
    deadletters = sa.table("deadletters", sa.column("received_at", sa.DateTime),
                           sa.column("published_at", sa.DateTime))
    op.execute(deadletters.update().values(published_at=deadletters.c.received_at))
    op.create_index(
        "ix_deadletters_unpublished", "deadletters", ["agent_id", "id"],
        sqlite_where=sa.text("published_at IS NULL"), postgresql_where=sa.text("published_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_deadletters_unpublished", table_name="deadletters")
    with op.batch_alter_table("deadletters") as batch:
        batch.drop_column("published_at")
