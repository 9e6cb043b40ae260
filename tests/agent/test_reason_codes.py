"""MQTT 5 reason codes are honoured: a broker that refuses the agent's subscriptions is loud.

Mosquitto's dynamic-security plugin (it ships with Debian's mosquitto) answers a SUBSCRIBE to
a filter its ACL denies with SUBACK 0x87 "Not authorized"; the agent must not run "healthy"
while it receives nothing, and `doctor` must say which filters and what to grant.
"""

from __future__ import annotations

import argparse
import glob
import json
import urllib.error
import urllib.request

from edgewatch.agent.commands import doctor
from edgewatch.agent.testing.harness import AgentProcess, Mosquitto, free_port, wait_for, write_config
from edgewatch.agent.testing.plugin import require

# anonymous clients may subscribe to sensors and to the agent's own topics (the test watches its status there),
# and publish those; market, portfolio and news subscriptions are denied
DYNSEC = {
    "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": True, "subscribe": False,
                         "unsubscribe": True},
    "clients": [], "groups": [{"groupname": "anonymous", "roles": [{"rolename": "agent"}]}],
    "anonymousGroup": "anonymous",
    "roles": [{"rolename": "agent", "acls": [
        {"acltype": "subscribePattern", "topic": "sensors/#", "priority": 0, "allow": True},
        {"acltype": "subscribePattern", "topic": "+/status", "priority": 0, "allow": True},
        {"acltype": "publishClientSend", "topic": "edgewatch/#", "priority": 0, "allow": True},
        {"acltype": "publishClientSend", "topic": "sensors/#", "priority": 0, "allow": True},
    ]}],
}


def acl_broker(tmp_path, dynsec: dict = DYNSEC) -> Mosquitto:
    plugins = glob.glob("/usr/lib/*/mosquitto_dynamic_security.so") + glob.glob("/usr/lib/mosquitto_dynamic_security.so")
    require("mosquitto", Mosquitto.binary() is not None and bool(plugins), "mosquitto's dynamic-security plugin")
    config = tmp_path / "dynsec.json"
    config.write_text(json.dumps(dynsec))
    return Mosquitto(tmp_path / "broker",
                     extra_conf=f"plugin {plugins[0]}\nplugin_opt_config_file {config}\n").start()


def health(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_refused_subscription_fails_readiness_and_is_logged(tmp_path, documented_fields):
    broker = acl_broker(tmp_path)
    port = free_port()
    agent = AgentProcess(broker, tmp_path / "agent", {"metrics": {"listen": f"127.0.0.1:{port}"}}, protocol="5")
    try:
        agent.start().wait_ready(broker)
        wait_for(lambda: "mqtt_subscribe_refused" in agent.log_tail(100_000), timeout=10, what="refusal logged")
        wait_for(lambda: health(port)[0] == 503, timeout=10, what="/health unhealthy")
        status, body = health(port)
        assert status == 503 and "subscriptions" in body["failing"], body
        assert set(body["subscriptions_refused"]) == {"market/#", "portfolio/#", "news/#"}, body
        documented = documented_fields("GET /health", "http-api.md", "| field | meaning |")
        assert set(body) <= documented, set(body) - documented
        assert "sensors/#" not in body["subscriptions_refused"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert "edgewatch_mqtt_subscriptions_refused 3.0" in r.read().decode()
    finally:
        agent.stop()
        broker.stop()


def test_doctor_reports_refused_subscriptions(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(doctor, "LISTEN_SECONDS", 1.0)
    broker = acl_broker(tmp_path)
    try:
        (tmp_path / "log").mkdir()
        path = write_config(tmp_path / "agent.toml", {
            "mqtt": {"host": broker.host, "port": broker.port, "client_id": "doctor-acl", "protocol": "5"},
            "store": {"url": str(tmp_path / "log" / "events.db")}, "news": {"enabled": False},
        })
        code = doctor.doctor_command(argparse.Namespace(config=str(path)))
        out = capsys.readouterr().out
        assert code == 1, out
        line = next(x for x in out.splitlines() if "subscribe" in x)
        assert line.startswith("✗") and "market/#" in line and "news/#" in line and "sensors/#" not in line, out
        assert "ACL" in out
    finally:
        broker.stop()


def test_a_refused_publish_stays_unpublished_and_is_retried_with_back_off(tmp_path):
    """A PUBACK with a failure code (here 0x87: the ACL denies the events topic) never marks the event published."""
    from tests.agent.test_service import FAST, event_rows, readings

    from edgewatch.agent.testing.harness import publish_many

    deny_events = json.loads(json.dumps(DYNSEC))
    deny_events["roles"][0]["acls"] = [
        {"acltype": "subscribePattern", "topic": "#", "priority": 0, "allow": True},
        {"acltype": "publishClientSend", "topic": "edgewatch/events/#", "priority": 1, "allow": False},
        {"acltype": "publishClientSend", "topic": "#", "priority": 0, "allow": True},
    ]
    broker = acl_broker(tmp_path, deny_events)
    port = free_port()
    agent = AgentProcess(broker, tmp_path / "agent", {**FAST, "metrics": {"listen": f"127.0.0.1:{port}"}}, protocol="5")
    try:
        agent.start().wait_ready(broker)
        publish_many(broker, readings("s1"))
        wait_for(lambda: any(e["kind"] == "anomaly" for e in event_rows(agent)), timeout=15, what="an anomaly logged")
        wait_for(lambda: "outbox_publish_refused_retry" in agent.log_tail(100_000), timeout=10, what="a retry planned")
        wait_for(lambda: agent.log_tail(100_000).count("outbox_publish_refused_retry") >= 2, timeout=15,
                 what="a second, later retry")
        assert all(e["published_at"] is None for e in event_rows(agent))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            refused = [line for line in r.read().decode().splitlines()
                       if line.startswith("edgewatch_mqtt_publishes_refused_total ")]
        assert refused and float(refused[0].split()[1]) >= 2
    finally:
        agent.stop()
        broker.stop()
