"""The event log's schema version: logs of 0.2.0 upgraded with every row kept, agents starting together on one
empty log, and a log from a newer release refused. On SQLite and on the local PostgreSQL."""

from __future__ import annotations

import multiprocessing
import shutil
import threading
import traceback
from pathlib import Path

import pytest
import sqlalchemy as sa
import structlog
from alembic import command
from edgewatch.agent.cli import main
from edgewatch.agent.eventlog import migrations
from edgewatch.agent.eventlog.store import Store
from edgewatch.agent.records import make_event
from edgewatch.agent.timeutil import utcnow

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def _default_logging():
    """`edge-agent migrate` sets logging up for itself: give the next test structlog's defaults back."""
    yield
    structlog.reset_defaults()



@pytest.fixture
def log_0_2_0(url) -> str:
    """`url` holding the log that edgewatch 0.2.0 wrote (tests/agent/fixtures)."""
    if "://" not in url:
        shutil.copyfile(FIXTURES / "log-0.2.0.db", url)
    else:
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.exec_driver_sql((FIXTURES / "log-0.2.0.postgresql.sql").read_text())
        engine.dispose()
    return url


def _rows(url: str) -> dict[str, list[tuple]]:
    """Every row of the three tables, by plain SQL: what the log holds, whatever code reads it."""
    engine = sa.create_engine(url if "://" in url else f"sqlite:///{url}")
    with engine.connect() as conn:
        rows = {
            table: [tuple(r) for r in conn.exec_driver_sql(f"SELECT {cols} FROM {table} ORDER BY id")]
            for table, cols in (
                ("events", "id, event_id, ts, logged_at, kind, key, severity, message, published_at"),
                ("deadletters", "id, topic, payload, reason, received_at"),
                ("bars", 'id, symbol, start, "end", open, high, low, close, volume, vwap, trades'),
            )
        }
    engine.dispose()
    return rows


def _stamp(url: str, revision: str) -> None:
    engine = sa.create_engine(url if "://" in url else f"sqlite:///{url}")
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE alembic_version SET version_num = '{revision}'")
    engine.dispose()


def test_a_log_of_0_2_0_is_upgraded_with_every_row_kept(log_0_2_0):
    before = _rows(log_0_2_0)
    assert [len(before[t]) for t in ("events", "deadletters", "bars")] == [7, 11, 6]
    store = Store(log_0_2_0)
    try:
        assert store.migrated == (migrations.BASELINE, migrations.head())
        assert _rows(log_0_2_0) == before  # every row, every value
        events = store.events()
        assert [e["id"] for e in events] == [r[0] for r in before["events"]]
        assert events[5]["message"] == "health 0.00 ✓ ünïcode" and events[5]["data"]["nan"] == "nan"
        assert [e["id"] for e in store.unpublished()] == [3, 4, 5, 6, 7]  # the two published stay published
        # 0002: each dead letter gets the code its 0.2.0 reason text stands for; logged bars count as published
        assert [d["code"] for d in store.dead_letters()] == [
            "bad_json", "not_utf8", "bad_field", "unknown_metric", "too_large", "bad_field", "bad_topic",
            "bad_timestamp", "not_object", "non_finite", "no_metric"]
        assert store.unpublished_rows("bars") == [] and len(store.bars()) == 6
        assert store.unpublished_rows("deadletters") == []  # 0005: dead letters logged before were published then
        new = store.write([make_event("anomaly", "s9", utcnow(), "info", "after the upgrade", {}, 1)])
        assert new[0]["id"] == 8  # the sequence goes on; no id is reused
    finally:
        store.close()
    again = Store(log_0_2_0)  # the next start finds nothing to do
    assert again.migrated == (migrations.head(), migrations.head())
    again.close()


def test_the_migrations_build_exactly_the_schema_the_code_uses(url):
    """Alembic compares the migrated log with the code's tables: any difference fails `check`."""
    Store(url).close()
    engine = sa.create_engine(url if "://" in url else f"sqlite:///{url}")
    with engine.connect() as conn:
        command.check(migrations._alembic_config(conn))
    engine.dispose()


def test_agents_starting_together_on_an_empty_log_all_succeed(url):
    """Each opens the log at the same moment; exactly one creates the tables, the others find them made."""
    n = 4
    barrier = threading.Barrier(n)
    results: list[tuple | BaseException] = []

    def agent() -> None:
        barrier.wait()
        try:
            store = Store(url)
            results.append(store.migrated)
            store.close()
        except BaseException as e:  # noqa: BLE001 - the assertion below shows it
            results.append(e)

    threads = [threading.Thread(target=agent) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    head = migrations.head()
    assert sorted(results, key=repr) == [(head, head)] * (n - 1) + [(None, head)]  # exactly one migrated


def _agent_process(url: str, barrier, results) -> None:
    barrier.wait()
    try:
        store = Store(url)
        results.put(store.migrated)
        store.close()
    except BaseException:  # noqa: BLE001 - the test shows it
        results.put(traceback.format_exc())


def test_agents_starting_together_as_processes(url):
    """The same as separate processes, where only the database's own lock makes them take turns. (Before it, the
    second agent on an empty PostgreSQL log died on UniqueViolation while both created the tables.)"""
    ctx = multiprocessing.get_context("fork")  # forked after the imports, so that they all start at once
    n = 4
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_agent_process, args=(url, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    got = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    head = migrations.head()
    assert sorted(got, key=repr) == [(head, head)] * (n - 1) + [(None, head)], got


def test_migrate_command_prints_the_revision(capsys, url):
    assert main(["migrate", "--db", url]) == 0
    assert main(["migrate", "--db", url]) == 0
    shown = url if "://" not in url else sa.make_url(url).render_as_string(hide_password=True)
    head = migrations.head()
    assert capsys.readouterr().out.splitlines() == [
        f"{shown}: migrated from an empty database to schema revision {head}",
        f"{shown}: already at schema revision {head}",
    ]


def test_a_log_from_a_newer_release_is_refused_untouched(capsys, url):
    Store(url).close()
    _stamp(url, "9999_future")
    before = _rows(url)
    capsys.readouterr()
    for argv in (["migrate"], ["events"], ["deadletters"]):
        rc = main([*argv, "--db", url])
        out, err = capsys.readouterr()
        assert rc == 2 and out == "", argv
        assert len(err.strip().splitlines()) == 1
        assert "the log's schema (revision 9999_future) is newer than this edge-agent knows" in err
        assert "upgrade edge-agent" in err
    with pytest.raises(migrations.SchemaVersionError):
        Store(url)  # what `run` opens: the CLI turns it into the same line and exit 2
    assert _rows(url) == before
    engine = sa.create_engine(url if "://" in url else f"sqlite:///{url}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "9999_future"
    engine.dispose()


def test_queries_ask_for_a_migration_that_they_cannot_run(capsys, log_0_2_0):
    """A read-only query never migrates: it names the command that does, then works once it has run."""
    rc = main(["events", "--db", log_0_2_0])
    _, err = capsys.readouterr()
    assert rc == 2 and "run `edge-agent migrate`" in err and len(err.strip().splitlines()) == 1
    assert main(["migrate", "--db", log_0_2_0]) == 0
    out, _ = capsys.readouterr()
    assert f"schema revision {migrations.head()}" in out
    assert main(["events", "--db", log_0_2_0, "--format", "json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 7
