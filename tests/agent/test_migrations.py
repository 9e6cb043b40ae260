"""The event log's schema version: logs of 0.2.0 upgraded with every row kept, agents starting together on one
empty log, and a log from a newer release refused. On SQLite and on the local PostgreSQL."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
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


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "events.db")
    return request.getfixturevalue("postgres_url")


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
        assert {t: rows for t, rows in _rows(log_0_2_0).items()} == before
        events = store.events()
        assert [e["id"] for e in events] == [r[0] for r in before["events"]]
        assert events[5]["message"] == "health 0.00 ✓ ünïcode" and events[5]["data"]["nan"] == "nan"
        assert [e["id"] for e in store.unpublished()] == [3, 4, 5, 6, 7]  # the two published stay published
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
    """Each opens the log at the same moment; before the lock the second died on UniqueViolation (PostgreSQL)."""
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


def test_agents_starting_together_as_processes(tmp_path):
    """The same through the command line, as separate processes on one SQLite file."""
    path = tmp_path / "events.db"
    cmd = [sys.executable, "-m", "edgewatch.agent.cli", "migrate", "--db", str(path)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    lines = sorted(out.strip() for out, _ in outs)
    head = migrations.head()
    assert lines == [f"{path}: already at schema revision {head}"] * 2 + [
        f"{path}: migrated from an empty database to schema revision {head}"]


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
    assert _rows(url)  # and the version stamp is still the newer one
    engine = sa.create_engine(url if "://" in url else f"sqlite:///{url}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "9999_future"
    engine.dispose()
