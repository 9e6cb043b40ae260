"""Alembic's entry point for the event log's migrations.

The agent runs them through `edgewatch.agent.eventlog.migrations.upgrade`, which hands over a connection
already inside a locked transaction (`config.attributes["connection"]`). A developer may also run the
`alembic` command from the repository (`alembic -x url=events.db check`): then the URL comes from `-x url=`.
"""

import sqlalchemy as sa
from alembic import context
from edgewatch.agent.eventlog.schema import metadata
from edgewatch.agent.eventlog.store import resolve_url


def _configure_and_run(connection: sa.Connection) -> None:
    # batch mode: SQLite alters a table by copying it, which Alembic's batch operations do for us
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _configure_and_run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option("sqlalchemy.url")
    engine = sa.create_engine(resolve_url(url))
    with engine.connect() as conn:
        _configure_and_run(conn)
        conn.commit()
    engine.dispose()
