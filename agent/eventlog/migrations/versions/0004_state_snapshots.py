"""The analytics' state snapshots, so that a restart resumes where the last run left off."""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "state_snapshots",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("agent", sa.Text, nullable=False),
        sa.Column("taken_at", sa.DateTime, nullable=False),
        sa.Column("saved_at", sa.DateTime, nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("keys", sa.JSON, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("state", sa.LargeBinary, nullable=False),
        sa.Column("restored_at", sa.DateTime, nullable=True),
    )
    op.create_index("ix_state_snapshots_agent", "state_snapshots", ["agent", "id"])


def downgrade() -> None:
    op.drop_index("ix_state_snapshots_agent", table_name="state_snapshots")
    op.drop_table("state_snapshots")
