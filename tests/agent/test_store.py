"""The event log: one suite, run on SQLite and on the local PostgreSQL."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from edgewatch.agent.eventlog.store import Store, StoreNotFound
from edgewatch.agent.eventlog.writer import StoreWriter
from edgewatch.agent.records import Bar, DeadLetter, make_event
from edgewatch.agent.timeutil import utcnow

T0 = datetime(2026, 3, 1, 12, 0, 0)



@pytest.fixture
def store(url):
    s = Store(url)
    yield s
    s.close()


def ev(i: int, kind: str = "anomaly", key: str = "s1", ts: datetime | None = None, **data):
    return make_event(kind, key, ts or T0 + timedelta(seconds=i), "warning", f"reading {i}", {"i": i, **data}, i)


def count(store: Store, table: str = "events") -> int:
    with store.engine.connect() as conn:
        return conn.execute(sa.text(f"select count(*) from {table}")).scalar()


def test_write_returns_new_rows_as_spec_dicts(store):
    rows = store.write([ev(1, score=0.5), ev(2)])
    assert [r["event_id"] for r in rows] == [ev(1).event_id, ev(2).event_id]
    first = rows[0]
    assert set(first) == {"id", "event_id", "ts", "logged_at", "kind", "key", "severity", "message", "data", "agent_id"}
    assert first["ts"] == "2026-03-01T12:00:01Z" and first["logged_at"].endswith("Z")
    assert first["data"] == {"i": 1, "score": 0.5}
    assert rows[1]["id"] > first["id"]
    assert store.events() == rows  # what write returns is exactly what the log holds


def test_insert_or_ignore_on_event_id(store):
    store.write([ev(1), ev(2)])
    assert store.write([ev(1), ev(2)]) == []
    again = store.write([ev(2), ev(3), ev(1), ev(3)])  # duplicates of the log and inside the batch
    assert [r["event_id"] for r in again] == [ev(3).event_id]
    logged = {r["event_id"]: r["id"] for r in store.events()}
    assert logged[again[0]["event_id"]] == again[0]["id"]  # ids match when some rows were skipped
    assert count(store) == 3


def test_timestamps_are_utc_and_sort_and_filter_across_microseconds(store):
    aware = datetime(2026, 3, 1, 14, 0, 0, 500000, tzinfo=timezone(timedelta(hours=2)))  # 12:00:00.5 UTC
    store.write([ev(10, ts=T0), ev(11, ts=aware), ev(12, ts=T0 + timedelta(seconds=1))])
    assert [r["ts"] for r in store.events()] == ["2026-03-01T12:00:00Z", "2026-03-01T12:00:00.500000Z", "2026-03-01T12:00:01Z"]
    got = store.events(since=T0 + timedelta(microseconds=1), until=T0 + timedelta(seconds=1))
    assert [r["data"]["i"] for r in got] == [11]


def test_dead_letters_and_bars_in_the_same_transaction(store):
    dl = DeadLetter(topic="sensors/x", payload="not json", reason="invalid JSON: Expecting value", received_at=T0,
                    code="bad_json")
    bar = Bar(symbol="AAPL", start=T0, end=T0 + timedelta(seconds=1), open=1.0, high=2.0, low=0.5, close=1.5,
              volume=10.0, vwap=1.2, trades=3)
    store.write([ev(1)], [dl], [bar])
    store.write(bars=[bar])  # a bar is unique per (symbol, start)
    assert store.dead_letters() == [
        {"id": store.dead_letters()[0]["id"], "topic": "sensors/x", "payload": "not json",
         "reason": "invalid JSON: Expecting value", "code": "bad_json", "received_at": "2026-03-01T12:00:00Z", "agent_id": ""}
    ]
    assert count(store, "bars") == 1 and count(store) == 1


def test_outbox_unpublished_oldest_first_then_marked(store):
    store.write([ev(i) for i in range(5)])
    pending = store.unpublished(limit=3)
    assert [r["data"]["i"] for r in pending] == [0, 1, 2]
    store.mark_published([r["id"] for r in pending])
    assert [r["data"]["i"] for r in store.unpublished()] == [3, 4]
    store.mark_published([r["id"] for r in store.unpublished()])
    assert store.unpublished() == []


def test_event_filters_are_bound_parameters(store):
    store.write([ev(1, kind="anomaly", key="s1"), ev(2, kind="risk", key="portfolio"), ev(3, kind="anomaly", key="s2")])
    assert [r["data"]["i"] for r in store.events(kinds=["anomaly"])] == [1, 3]
    assert [r["data"]["i"] for r in store.events(kinds=["anomaly", "risk"], key="portfolio")] == [2]
    assert store.events(key="'; DROP TABLE events; --") == []
    assert store.events(kinds=["anomaly' OR '1'='1"]) == []
    assert count(store) == 3
    assert [r["data"]["i"] for r in store.events(limit=2)] == [2, 3]  # the most recent, newest last
    first = store.events()[0]["id"]
    assert [r["data"]["i"] for r in store.events(after_id=first, limit=1)] == [2]  # follow: oldest new first


def test_retention_by_age_and_by_rows(store):
    store.write([ev(i) for i in range(15)], [DeadLetter("t", "p", "r", utcnow() - timedelta(days=3), "bad_json")])
    store.write([ev(i) for i in range(5)])  # redelivered: may leave gaps in the ids
    store.write([ev(i) for i in range(15, 30)])
    with store.engine.begin() as conn:  # the first ten were logged four days ago
        ids = [r[0] for r in conn.execute(sa.text("select id from events order by id limit 10"))]
        conn.execute(sa.text(f"update events set logged_at = :t where id <= {ids[-1]}"), {"t": utcnow() - timedelta(days=4)})
    assert store.apply_retention(max_age_days=2, max_rows=0) == 11  # ten events, one dead letter
    assert [r["data"]["i"] for r in store.events()] == list(range(10, 30))
    assert store.apply_retention(max_age_days=0, max_rows=5) == 15
    assert [r["data"]["i"] for r in store.events()] == list(range(25, 30))
    assert store.apply_retention(max_age_days=2, max_rows=5) == 0
    store.write([ev(99)])
    assert store.events()[-1]["id"] > store.events()[-2]["id"]  # ids are never reused


def test_dead_letters_have_a_row_limit_of_their_own(store):
    """Anyone who can publish can make dead letters: they are kept to `retention_dead_letters`, events to
    `retention_rows`."""
    now = utcnow()
    store.write([ev(i) for i in range(8)], [DeadLetter("t", f"p{i}", "r", now, "bad_json") for i in range(8)])
    assert store.apply_retention(0, 6, 3) == 2 + 5
    assert len(store.events()) == 6 and [d["payload"] for d in store.dead_letters()] == ["p5", "p6", "p7"]
    assert store.apply_retention(0, 4) == 2 + 0  # without a limit of their own: retention_rows


def test_text_the_database_refuses_is_cleaned_not_lost(store):
    """NUL (PostgreSQL refuses it) and a lone surrogate (not encodable) still reach the log."""
    writer = StoreWriter(store, batch_size=100)
    writer.start()
    bad = DeadLetter("sensors/\ud800", "a\x00b", "invalid JSON", T0, "bad_json")
    odd = {"event_id": "e-odd", "ts": T0, "kind": "anomaly", "key": "k\ud800", "severity": "info",
           "message": "m", "data": {"text": "\x00"}}  # a dict: csp Structs cannot even hold a surrogate
    writer.submit(events=[odd], dead_letters=[bad, DeadLetter("sensors/ok", "x", "r", T0, "bad_field")])
    writer.close()
    assert writer.dropped == 0
    assert [d["topic"] for d in store.dead_letters()] == ["sensors/\\ud800", "sensors/ok"]
    assert store.dead_letters()[0]["payload"] in ("a\x00b", "a\\x00b")
    assert [r["key"] for r in store.events()] == ["k\\ud800"]


def test_a_row_that_can_never_be_written_does_not_take_the_batch_with_it(store, caplog):
    writer = StoreWriter(store, batch_size=100)
    writer.start()
    broken = {"event_id": "e-broken", "ts": "yesterday", "kind": "anomaly", "key": "s1", "severity": "info",
              "message": "m", "data": {}}  # ts is not a time: no cleaning can save it
    writer.submit(events=[ev(1), broken, ev(2)])
    assert writer.flush(5)
    writer.close()
    assert writer.dropped == 1
    assert [r["data"]["i"] for r in store.events()] == [1, 2]


def test_writer_drains_the_queue_into_one_transaction(store):
    committed: list[list[dict]] = []
    durable = []
    writer = StoreWriter(store, batch_size=5000, on_commit=committed.append)
    for i in range(50):  # queued before the thread starts: one drain takes all of them
        writer.submit(events=[ev(i * 10 + j) for j in range(10)], on_durable=lambda i=i: durable.append(i))
    writer.start()
    assert writer.flush(10)
    writer.close()
    assert writer.commits == 1 and writer.rows_written == 500 and writer.pending_rows == 0
    assert durable == list(range(50))
    assert [len(c) for c in committed] == [500]
    writer2 = StoreWriter(store, batch_size=5000, on_commit=committed.append)
    writer2.start()
    writer2.submit(events=[ev(0)])  # already logged: durable, but nothing new to publish
    writer2.close()
    assert len(committed) == 1


def test_writer_respects_batch_size(store):
    writer = StoreWriter(store, batch_size=100)
    for i in range(10):
        writer.submit(events=[ev(i * 50 + j) for j in range(50)])
    writer.start()
    writer.close()
    assert writer.commits == 5 and count(store) == 500


def test_writer_survives_a_transient_db_error_and_keeps_the_rows(store):
    """The events table vanishes (a real DB error on every write), then comes back: nothing is lost."""
    writer = StoreWriter(store, batch_size=100)
    writer.start()
    writer.submit(events=[ev(0)])
    assert writer.flush(5)
    with store.engine.begin() as conn:
        conn.execute(sa.text("alter table events rename to events_away"))
    t = time.perf_counter()
    for i in range(1, 200):
        writer.submit(events=[ev(i)], dead_letters=[DeadLetter("t", "p", "r", T0, "bad_field")])
    submit_seconds = time.perf_counter() - t
    assert not writer.flush(0.3)  # stuck while the table is gone ...
    assert writer.errors > 0
    with store.engine.begin() as conn:
        conn.execute(sa.text("alter table events_away rename to events"))
    assert writer.flush(10)  # ... and everything arrives once it is back
    writer.close()
    assert submit_seconds < 0.5  # 199 submits while the database failed: the caller never waited on it
    assert count(store) == 200 and count(store, "deadletters") == 199


def test_submit_never_blocks_while_the_database_is_locked(tmp_path):
    path = tmp_path / "events.db"
    store = Store(str(path))
    writer = StoreWriter(store, batch_size=1000)
    writer.start()
    locker = sa.create_engine(f"sqlite:///{path}").connect()
    locker.exec_driver_sql("BEGIN EXCLUSIVE")  # another process holds the write lock
    try:
        writer.submit(events=[ev(0)])
        t = time.perf_counter()
        for i in range(1, 1000):
            writer.submit(events=[ev(i)])
        assert time.perf_counter() - t < 0.5
        assert not writer.flush(0.2)
    finally:
        locker.exec_driver_sql("ROLLBACK")
        locker.close()
    assert writer.flush(10)
    writer.close()
    assert count(store) == 1000


def test_writer_applies_retention_periodically(store):
    writer = StoreWriter(store, batch_size=1000, retention=(0, 10), retention_every=0.05)
    writer.start()
    writer.submit(events=[ev(i) for i in range(50)])
    assert writer.flush(5)
    deadline = time.monotonic() + 5
    while count(store) > 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    writer.close()
    assert [r["data"]["i"] for r in store.events()] == list(range(40, 50))


def _fill_wal(writer: StoreWriter, start: int) -> None:
    """Commit > 1,000 WAL pages (SQLite's autocheckpoint threshold) in 10 transactions."""
    for b in range(10):
        writer.submit(events=[ev(start + b * 1000 + j, key=f"s{j}", pad="x" * 400) for j in range(1000)])
        assert writer.flush(10)


def test_sqlite_commits_leave_checkpoints_to_the_writers_own_thread(tmp_path, monkeypatch):
    """A checkpoint (WAL copied into the database, with fsyncs) inside a commit stalled every event
    behind it; with `checkpoint_in_background` commits only append to the WAL and the writer's
    checkpointer thread copies it, every CHECKPOINT_EVERY and once more at close."""
    db, wal = tmp_path / "events.db", tmp_path / "events.db-wal"
    auto = Store(str(tmp_path / "auto.db"))  # SQLite's default, for contrast: commits checkpoint
    writer = StoreWriter(auto)
    writer.start()
    before = (tmp_path / "auto.db").stat().st_size
    _fill_wal(writer, 0)
    assert (tmp_path / "auto.db").stat().st_size > before + 1_000_000
    writer.close()
    auto.close()

    monkeypatch.setattr("edgewatch.agent.eventlog.writer.CHECKPOINT_EVERY", 3600.0)
    store = Store(str(db), checkpoint_in_background=True)
    writer = StoreWriter(store)
    writer.start()
    before = db.stat().st_size
    _fill_wal(writer, 0)
    assert db.stat().st_size == before and wal.stat().st_size > 1000 * 4096  # no commit checkpointed
    writer.close()
    assert db.stat().st_size > before + 4_000_000  # the checkpoint at close
    assert count(store) == 10_000

    monkeypatch.setattr("edgewatch.agent.eventlog.writer.CHECKPOINT_EVERY", 0.05)
    writer = StoreWriter(store)
    writer.start()
    before = db.stat().st_size
    _fill_wal(writer, 10_000)
    deadline = time.monotonic() + 5
    while db.stat().st_size < before + 4_000_000 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert db.stat().st_size > before + 4_000_000  # the periodic checkpoint, the writer still running
    writer.close()
    store.close()


def test_readonly_reader_while_a_writer_writes(url):
    store = Store(url)
    writer = StoreWriter(store, batch_size=50)
    writer.start()
    stop = threading.Event()

    def produce():
        for i in range(0, 3000, 10):
            if stop.is_set():
                return
            writer.submit(events=[ev(i + j) for j in range(10)])
            time.sleep(0.002)

    producer = threading.Thread(target=produce)
    producer.start()
    reader = Store(url, readonly=True)
    try:
        newest = []
        while producer.is_alive():
            rows = reader.events(kinds=["anomaly"], key="s1", limit=50)
            assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)
            newest.append(rows[-1]["id"] if rows else 0)
        assert newest == sorted(newest) and len(set(newest)) >= 2  # saw the log grow, never go back
        with pytest.raises(sa.exc.DBAPIError):
            reader.write([ev(10**9)])  # read-only really means read-only
    finally:
        stop.set()
        producer.join()
        writer.close()
        reader.close()
        store.close()


def test_readonly_never_creates_a_database(tmp_path):
    missing = tmp_path / "nope" / "events.db"
    with pytest.raises(StoreNotFound):
        Store(str(missing), readonly=True)
    assert not missing.parent.exists()


def test_a_reader_in_the_agent_keeps_its_locks_while_another_process_writes(tmp_path):
    """The agent holds a writer and the status page's reader on one SQLite log. Opening the reader must not
    close any descriptor of the file in the agent's process: POSIX drops all of a process's locks on a file when
    it closes any descriptor of it, and another process (`edge-agent label`, `replay`) that then finds no lock
    takes itself for the last user and deletes the WAL the agent still writes to, which corrupts the log."""
    path = tmp_path / "events.db"
    agent = Store(str(path))
    agent.write([ev(1)])
    reader = Store(str(path), readonly=True)
    assert len(reader.events()) == 1
    label = ("import sys; from edgewatch.agent.eventlog.store import Store; s = Store(sys.argv[1]); "
             "s.label(s.events()[0]['event_id'], 'false'); s.close()")  # `edge-agent label`, in another process
    other = subprocess.run([sys.executable, "-c", label, str(path)], check=False, capture_output=True, text=True)
    assert other.returncode == 0, other.stderr
    assert Path(f"{path}-wal").exists(), "the other process deleted the agent's WAL"
    agent.write([ev(2)])
    assert [e["event_id"] for e in reader.events()] == [ev(1).event_id, ev(2).event_id]
    reader.close()
    agent.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (2,)


@pytest.mark.parametrize("umask", [0o077, 0o002, 0o022])
def test_sqlite_files_are_0640_whatever_the_umask(tmp_path, umask):
    """Operators in the service's group can read the log (and its WAL); nobody else can."""
    old = os.umask(umask)
    try:
        path = tmp_path / "state" / "events.db"
        store = Store(str(path))
        store.write([ev(1)])
        reader = Store(str(path), readonly=True)
        assert len(reader.events()) == 1
        modes = {p.name: p.stat().st_mode & 0o777 for p in path.parent.iterdir()}
        reader.close()
        store.close()
    finally:
        os.umask(old)
    assert modes == {"events.db": 0o640, "events.db-wal": 0o640, "events.db-shm": 0o640}


def test_an_existing_world_readable_log_is_tightened(tmp_path):
    path = tmp_path / "events.db"
    Store(str(path)).close()
    path.chmod(0o644)
    Store(str(path)).close()
    assert path.stat().st_mode & 0o777 == 0o640


def test_acknowledgements_without_rows_wait_for_earlier_rows_only(store):
    order = []
    writer = StoreWriter(store, batch_size=10)
    writer.submit(events=[ev(i) for i in range(10)], on_durable=lambda: order.append(("rows", count(store))))
    writer.submit(on_durable=lambda: order.append(("ack", count(store))))  # a cycle that produced nothing
    writer.start()
    assert writer.flush(5) and writer.alive
    writer.close()
    assert order == [("rows", 10), ("ack", 10)] and writer.commits == 1 and not writer.alive


def test_two_agents_sharing_one_log_each_event_is_new_exactly_once(url):
    """Two writers (two agents on one PostgreSQL log, or replay into a live SQLite log) racing on the same ids."""
    stores = [Store(url), Store(url)]
    returned: list[list[dict]] = [[], []]

    errors = []

    def run(n: int) -> None:
        try:
            for start in range(0, 600, 50):
                batch = [ev(i) for i in range(start, start + 50)]
                returned[n] += stores[n].write(batch[::-1] if n else batch)
        except Exception as e:  # noqa: BLE001 - e.g. a deadlock: reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    new = returned[0] + returned[1]
    assert sorted(r["event_id"] for r in new) == sorted(ev(i).event_id for i in range(600))
    logged = {r["event_id"]: r["id"] for r in stores[0].events()}
    assert all(logged[r["event_id"]] == r["id"] for r in new)  # each returned id is that event's id
    for s in stores:
        s.close()


@pytest.mark.postgres
def test_writer_reconnects_after_the_server_drops_its_connection(postgres_url):
    store = Store(postgres_url)
    writer = StoreWriter(store, batch_size=100)
    writer.start()
    writer.submit(events=[ev(0)])
    assert writer.flush(5)
    with store.engine.connect() as conn:  # the pooled connection the writer uses
        pid = conn.exec_driver_sql("select pg_backend_pid()").scalar()
    admin = sa.create_engine(postgres_url)
    with admin.begin() as conn:  # what a server restart does to the agent's pooled connections
        killed = conn.execute(sa.text("select pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
    admin.dispose()
    for i in range(1, 50):
        writer.submit(events=[ev(i)])
    assert writer.flush(10)
    writer.close()
    assert killed and count(store) == 50
    store.close()


def test_the_writers_counters_and_the_outbox_backlog_are_prometheus_metrics(store):
    from edgewatch.agent.config import Config
    from edgewatch.agent.eventlog.outbox import Outbox
    from edgewatch.agent.ingest.mqtt import Link
    from edgewatch.agent.ops import metrics

    def value(name: str) -> float | None:
        return metrics.REGISTRY.get_sample_value(name)

    writer = StoreWriter(store, batch_size=100)
    outbox = Outbox(store, Link(Config()))  # never connected: what is logged waits in the log
    metrics.watch_event_log(writer, outbox)
    try:
        writer.start()
        bar = Bar(symbol="AAPL", start=T0, end=T0 + timedelta(seconds=1), open=1.0, high=2.0, low=0.5, close=1.5,
                  volume=10.0, vwap=1.2, trades=3)
        broken = {"event_id": "e-broken", "ts": "yesterday", "kind": "anomaly", "key": "s1", "severity": "info",
                  "message": "m", "data": {}}  # refused by the database, cleaned or not
        writer.submit(events=[ev(1), ev(2), ev(3)], bars=[bar])
        writer.submit(events=[broken])
        assert writer.flush(5)
        assert value("edgewatch_log_rows_written_total") == 4
        assert value("edgewatch_log_rows_dropped_total") == 1
        assert value("edgewatch_log_write_errors_total") >= 1
        assert value("edgewatch_log_commits_total") >= 1 and value("edgewatch_log_pending_rows") == 0
        assert value("edgewatch_outbox_backlog") == 4 and value("edgewatch_outbox_inflight") == 0
        store.mark_published([e["id"] for e in store.events()])
        store.mark_published([b["id"] for b in store.bars()], "bars")
        assert value("edgewatch_outbox_backlog") == 0
    finally:
        writer.close()
        metrics.watch_event_log(None, None)
    assert value("edgewatch_log_rows_written_total") is None  # no agent, no samples


def test_mqtt_payloads_are_the_logs_strict_json(store):
    """The outbox encodes what it publishes as the log stores it: no NaN/Infinity literals (invalid JSON)."""
    import json

    from edgewatch.agent.eventlog.outbox import payload

    def refuse(name: str):
        raise ValueError(f"{name} is not JSON")

    new = store.write([ev(1, x=float("nan"), big=float("-inf"))])[0]
    sent = json.loads(payload(new), parse_constant=refuse)
    assert sent == store.events()[0]
    assert sent["data"] == {"i": 1, "x": "nan", "big": "-inf"}


def test_close_sheds_what_it_cannot_commit_before_its_deadline_and_says_so(store):
    """A stop must end within the unit's stop timeout: past the deadline the rest is dropped, logged, and never
    acknowledged (its input is redelivered next start)."""
    from structlog.testing import capture_logs

    release = threading.Event()
    durable = []
    writer = StoreWriter(store, batch_size=10)
    writer.submit(events=[ev(0)], on_durable=lambda: (durable.append(0), release.wait(5)))  # a slow commit
    for i in range(1, 50):
        writer.submit(events=[ev(i * 10 + j) for j in range(10)], on_durable=lambda i=i: durable.append(i))
    writer.start()
    threading.Timer(1.0, release.set).start()
    t0 = time.monotonic()
    with capture_logs() as logs:
        writer.close(timeout=0.5)
    assert time.monotonic() - t0 < 3.0
    [shed] = [e for e in logs if e["event"] == "store_writer_shed"]
    assert shed["rows"] + count(store) == 491 and shed["input_batches_unacknowledged"] == 49 - (len(durable) - 1)
    assert durable == list(range(len(durable))) and writer.pending_rows == 0 and writer.backlog_age() == 0.0


def test_backlog_age_is_the_wait_of_the_oldest_uncommitted_submission(store):
    writer = StoreWriter(store)
    assert writer.backlog_age() == 0.0
    writer.submit(events=[ev(1)])
    time.sleep(0.2)
    writer.submit(events=[ev(2)])
    assert writer.backlog_age() >= 0.2 and writer.pending_rows == 2
    writer.start()
    assert writer.flush(5)
    assert writer.backlog_age() == 0.0
    writer.close()


def test_a_flood_of_dead_letters_goes_out_a_window_at_a_time(mosquitto, tmp_path):
    """600 dead letters waiting in the log (a flood of malformed input, or a broker away) reach MQTT through the
    outbox, all of them, with never more than MAX_INFLIGHT unacknowledged: the rest waits in the log, not ahead
    of the input PUBACKs on the wire."""
    from edgewatch.agent.config import Config
    from edgewatch.agent.eventlog.outbox import MAX_INFLIGHT, Outbox
    from edgewatch.agent.ingest.mqtt import Link
    from edgewatch.agent.testing.plugin import subscribe_collect, wait_for

    cfg = Config()
    cfg.agent.id, cfg.mqtt.client_id = "edge1", "test-outbox-flood"
    cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.protocol = mosquitto.host, mosquitto.port, "5"
    store = Store(str(tmp_path / "log.db"), agent_id="edge1")
    store.write([], [DeadLetter("sensors/x", f"{{bad {i}", "not JSON", utcnow(), "bad_json") for i in range(600)])
    link = Link(cfg)
    outbox = Outbox(store, link)
    in_flight, publish = [], link.publish

    def publish_counted(*args, **kwargs) -> int:
        in_flight.append(len(outbox.streams["deadletters"].inflight))
        return publish(*args, **kwargs)

    link.publish = publish_counted
    try:
        with subscribe_collect(mosquitto, "edgewatch/deadletter") as out:
            link.start()
            outbox.start()
            got = out.wait(600, timeout=30)
            wait_for(lambda: store.unpublished_rows("deadletters") == [], 10, what="every dead letter marked")
        assert sorted(json.loads(p)["payload"] for _, p in got) == sorted(f"{{bad {i}" for i in range(600))
        assert len(in_flight) == 600 and max(in_flight) == MAX_INFLIGHT - 1
    finally:
        outbox.close()
        link.close()
        store.close()
