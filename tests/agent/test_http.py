"""The agent's /metrics and /health endpoint, over real HTTP on a free loopback port."""

from __future__ import annotations

import time

import httpx
import pytest
from edgewatch.agent.config import ConfigError
from edgewatch.agent.ops.heartbeat import Heartbeat
from edgewatch.agent.ops.http import parse_listen, serve
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families


@pytest.fixture
def registry():
    reg = CollectorRegistry()
    Counter("edgewatch_test_messages", "messages in", ["kind"], registry=reg).labels("sensor").inc(3)
    return reg


def test_metrics_and_health_follow_the_heartbeat(registry):
    hb = Heartbeat(max_age=0.2)
    server = serve("127.0.0.1:0", registry, hb.fresh)
    base = "http://%s:%d" % server.address
    try:
        r = httpx.get(base + "/metrics")
        assert r.status_code == 200
        families = {f.name: f for f in text_string_to_metric_families(r.text)}
        sample = families["edgewatch_test_messages"].samples[0]
        assert sample.labels == {"kind": "sensor"} and sample.value == 3

        r = httpx.get(base + "/health")
        assert r.status_code == 503 and r.json()["status"] == "unhealthy"  # engine not beating yet
        hb.beat()
        r = httpx.get(base + "/health")
        assert r.status_code == 200 and r.json() == {"ok": True, "status": "ok"}
        time.sleep(0.3)  # the engine stalls
        assert httpx.get(base + "/health").status_code == 503
    finally:
        server.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(base + "/health")


def test_health_details_and_a_failing_check(registry):
    checks = iter([{"ok": True, "heartbeat_age": 0.5, "mqtt": "connected"}, RuntimeError("boom")])

    def health():
        item = next(checks)
        if isinstance(item, Exception):
            raise item
        return item

    server = serve("[::1]:0" if _has_ipv6() else "localhost:0", registry, health)
    host, port = server.address
    base = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    try:
        r = httpx.get(base + "/health")
        assert r.status_code == 200 and r.json()["mqtt"] == "connected"
        r = httpx.get(base + "/health")  # the check itself failed: unhealthy, and the server lives on
        assert r.status_code == 503 and "boom" in r.json()["error"]
        assert httpx.get(base + "/metrics").status_code == 200
    finally:
        server.close()


def _has_ipv6() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize(
    ("listen", "expected"),
    [("127.0.0.1:9108", ("127.0.0.1", 9108)), ("[::1]:9108", ("::1", 9108)), ("", None), ("  ", None)],
)
def test_parse_listen(listen, expected):
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9108", "127.0.0.1", "127.0.0.1:http", ":9108", "127.0.0.1:70000"])
def test_bad_listen_names_the_key(listen):
    with pytest.raises(ConfigError, match="metrics.listen"):
        parse_listen(listen)


def test_off_and_port_in_use(registry):
    assert serve("", registry, lambda: True) is None
    server = serve("127.0.0.1:0", registry, lambda: True)
    try:
        with pytest.raises(ConfigError, match="metrics.listen.*in use"):
            serve("127.0.0.1:%d" % server.address[1], registry, lambda: True)
    finally:
        server.close()
