"""Dead letters carry a reason code; bars are published from the log, so they get `published_at`.

Dead letters already in the log get their code from their reason's text (the only place it was), by the
rules below, frozen as the validator of 0.2.0 worded its reasons. Bars already in the log count as
published: they were logged before bars went out on MQTT, and an upgrade must not flood the broker.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# (text in a 0.2.0 reason, its code), first match wins; SQL LIKE patterns
_CODES_OF_0_2_0 = (
    ("%: internal validation error%", "internal"),
    ("%: payload is not UTF-8%", "not_utf8"),
    ("%: payload contains %, which is not a finite number%", "non_finite"),
    ("%: payload is not JSON%", "bad_json"),
    ("%: payload is not acceptable JSON%", "bad_json"),
    ("%: payload is nested too deeply%", "bad_json"),
    ("%: payload must be a JSON object%", "not_object"),
    ("%: payload of % bytes exceeds the %", "too_large"),
    ("%: unknown topic shape%", "bad_topic"),
    ("%: topic has no %", "bad_topic"),
    ("%has an empty topic segment%", "bad_topic"),
    ("%contains a wildcard or NUL character%", "bad_topic"),
    ("%must be one topic segment%", "bad_topic"),
    ("%: field 'ts'%", "bad_timestamp"),
    ("%contains a NUL character%", "bad_text"),
    ("%contains a lone surrogate%", "bad_text"),
    ("%must be a finite number%", "non_finite"),
    ("%: missing required field%", "missing_field"),
    ("%is not a metric name%", "unknown_metric"),
    ("%: no metric: %", "no_metric"),
    ("%: field 'headline' is % characters (limit%", "too_large"),
    ("%: field%", "bad_field"),
)


def upgrade() -> None:
    with op.batch_alter_table("deadletters") as batch:
        batch.add_column(sa.Column("code", sa.String(32), nullable=False, server_default="unknown"))
    deadletters = sa.table("deadletters", sa.column("reason", sa.Text), sa.column("code", sa.String))
    op.execute(
        deadletters.update()
        .where(deadletters.c.code == "unknown")
        .values(code=sa.case(*((deadletters.c.reason.like(p), c) for p, c in _CODES_OF_0_2_0), else_="unknown"))
    )
    with op.batch_alter_table("bars") as batch:
        batch.add_column(sa.Column("published_at", sa.DateTime, nullable=True))
    bars = sa.table("bars", sa.column("end", sa.DateTime), sa.column("published_at", sa.DateTime))
    op.execute(bars.update().values(published_at=bars.c.end))
    op.create_index(
        "ix_bars_unpublished", "bars", ["id"],
        sqlite_where=sa.text("published_at IS NULL"), postgresql_where=sa.text("published_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_bars_unpublished", table_name="bars")
    with op.batch_alter_table("bars") as batch:
        batch.drop_column("published_at")
    with op.batch_alter_table("deadletters") as batch:
        batch.drop_column("code")
