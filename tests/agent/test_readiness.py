"""`/health` readiness of a real service object: it fails, naming the check, when the log writer falls behind
(rows or age past `store.max_backlog_*`) or a delivered message waits past `mqtt.ack_deadline`."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from edgewatch.agent.commands.run import Service
from edgewatch.agent.config import Config
from edgewatch.agent.records import make_event
from edgewatch.agent.timeutil import utcnow


def _service(tmp_path, **store) -> Service:
    cfg = Config()
    cfg.store.url = str(tmp_path / "events.db")
    cfg.metrics.listen = ""
    for key, value in store.items():
        setattr(cfg.store, key, value)
    svc = Service(cfg)
    svc.writer.start()
    svc.hb.beat()
    return svc


def _events(first: int, n: int) -> list:
    return [make_event("anomaly", "s1", utcnow(), "info", "m", {"i": i}, i) for i in range(first, first + n)]


def test_health_fails_while_the_writer_backlog_is_past_its_bounds(tmp_path):
    svc = _service(tmp_path, max_backlog_rows=50, max_backlog_age=0.5)
    try:
        assert svc.health()["ok"], svc.health()
        release = threading.Event()
        svc.writer.submit(events=_events(0, 1), on_durable=lambda: release.wait(10))  # the writer is stuck
        svc.writer.submit(events=_events(1, 100))
        health = svc.health()
        assert not health["ok"] and health["failing"] == ["writer_backlog"] and health["writer_pending_rows"] >= 100
        release.set()
        assert svc.writer.flush(10)
        svc.writer.submit(events=_events(200, 1), on_durable=lambda: time.sleep(0.8))  # a slow commit
        time.sleep(0.1)
        svc.writer.submit(events=_events(300, 1))  # few rows, but waiting longer than max_backlog_age
        time.sleep(0.6)
        health = svc.health()
        assert health["failing"] == ["writer_backlog"] and health["writer_backlog_age"] > 0.5
        assert svc.writer.flush(10) and svc.health()["ok"]
    finally:
        svc.writer.close()
        svc.store.close()


def test_health_fails_when_a_delivered_message_waits_past_the_ack_deadline(tmp_path):
    svc = _service(tmp_path)
    svc.cfg.mqtt.ack_deadline = 5.0
    try:
        svc.link.inbox.append((utcnow() - timedelta(seconds=2), object()))
        health = svc.health()
        assert health["ok"] and health["unacked_messages"] == 1 and 2.0 <= health["oldest_unacked_age"] < 5.0
        svc.link.inbox.appendleft((utcnow() - timedelta(seconds=30), object()))
        health = svc.health()
        assert not health["ok"] and health["failing"] == ["acknowledgements"] and health["oldest_unacked_age"] >= 30
        svc.link.inbox.clear()
        svc.manager._register(1, 3, [1, 2, 3], utcnow() - timedelta(seconds=60))  # pushed, not yet committed
        assert svc.health()["failing"] == ["acknowledgements"] and svc.health()["unacked_messages"] == 3
    finally:
        svc.writer.close()
        svc.store.close()
