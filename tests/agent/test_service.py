"""`edge-agent run` end to end: readings in over MQTT -> anomaly events in the log and on MQTT.

The agent runs as a subprocess (the real service path: config file, signals,
exit codes) against a private Mosquitto (MQTT 5) and the embedded amqtt broker
(MQTT 3.1.1, reached through protocol "auto"'s fallback).
"""

import json
import math
import shutil
import signal
import sqlite3
import subprocess
import time
from datetime import datetime
from pathlib import Path

from edgewatch.agent.eventlog.store import Store
from edgewatch.agent.records import DeadLetter
from edgewatch.agent.timeutil import utcnow
from edgewatch.agent.testing.plugin import (
    AgentProcess,
    Mosquitto,
    publish_many,
    require,
    subscribe_collect,
    wait_for,
    wait_for_dead_letters,
    wait_for_events,
)

T0 = time.time() - 3600  # readings an hour old: deterministic event times, never "in the future"

# a tiny detector warm-up so a spike after a few dozen readings is judged; fast health sweeps for fault tests
FAST = {"anomaly": {"warmup": 20}, "health": {"interval": 0.5, "sweep_interval": 0.2}}

MALFORMED = [
    ("sensors/bad", b"not json"),
    ("sensors/bad", b'{"temperature": "hot"}'),
    ("sensors/bad", b'{"temperature": NaN}'),
    ("sensors/bad", b"\xff\xfe\x00"),
    ("market/ACME/candle", b"{}"),  # unknown topic shape under a subscribed prefix
]


def readings(sensor: str, n: int = 60, spike: bool = True, start: int = 0) -> list[tuple[str, dict]]:
    """`n` calm readings (one a second, explicit ts), then one spike: the anomaly every test expects."""
    out = [(f"sensors/{sensor}", {"ts": T0 + i, "temperature": 20.0 + 0.2 * math.sin(i / 3.0) + 0.01 * (i % 7)})
           for i in range(start, start + n)]
    if spike:
        out.append((f"sensors/{sensor}", {"ts": T0 + start + n, "temperature": 95.0}))
    return out


def captured(agent: AgentProcess) -> list[dict]:
    """Every line of the agent's capture record (duplicates included: redeliveries are recorded again)."""
    lines = []
    for path in sorted(Path(agent.capture_dir).glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                pass  # a torn last line after SIGKILL
    return lines


def event_rows(agent: AgentProcess) -> list[dict]:
    with sqlite3.connect(f"file:{agent.db}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("select * from events order by id")]


def stop_within(agent: AgentProcess, seconds: float = 10.0) -> int:
    t0 = time.monotonic()
    code = agent.stop(timeout=seconds + 5)
    assert time.monotonic() - t0 < seconds, agent.log_tail()
    return code


def retained_status(broker) -> dict:
    with subscribe_collect(broker, "edgewatch/status") as status:
        status.wait(1, timeout=5)
        return json.loads(status[-1][1])


def _end_to_end(broker, tmp_path, protocol: str) -> tuple[AgentProcess, dict]:
    """The agent end to end; it and its retained `online` status."""
    agent = AgentProcess(broker, tmp_path / "agent", FAST, protocol=protocol).start()
    try:
        agent.wait_ready(broker)
        with subscribe_collect(broker, "edgewatch/#") as out:
            sent = [m for s in ("s1", "s2", "s3") for m in readings(s)]
            publish_many(broker, sent + MALFORMED)
            anomalies = wait_for_events(agent.db, 3, predicate=lambda e: e["kind"] == "anomaly", timeout=15)
            assert {e["key"] for e in anomalies} == {"s1", "s2", "s3"}
            for e in anomalies:
                assert e["data"]["metric"] == "temperature" and e["data"]["value"] == 95.0
                assert 0.0 <= e["data"]["score"] <= 1.0
            dead = wait_for_dead_letters(agent.db, len(MALFORMED))
            assert all(d["reason"] for d in dead) and len(dead) == len(MALFORMED)

            def on_mqtt():
                topics = [t for t, _ in list(out)]
                return (all(f"edgewatch/events/anomaly/{s}" in topics for s in ("s1", "s2", "s3"))
                        and topics.count("edgewatch/deadletter") >= len(MALFORMED))

            # generous: the embedded broker (amqtt, pure Python) relays slowly when the machine is loaded
            try:
                wait_for(on_mqtt, timeout=30, what="anomaly events and dead letters on MQTT")
            except TimeoutError:  # say what did arrive and what the agent has not published, to tell why
                seen = sorted({t for t, _ in list(out)})
                waiting = sum(1 for r in event_rows(agent) if not r["published_at"])
                raise AssertionError(f"after 30 s the subscriber had {seen}; {waiting} logged events unpublished; "
                                     f"agent log: {agent.log_tail(4000)}") from None
            event = next(json.loads(p) for t, p in list(out) if t == "edgewatch/events/anomaly/s1")
            assert {"id", "event_id", "ts", "logged_at", "kind", "key", "severity", "message", "data"} <= set(event)
            letter = next(json.loads(p) for t, p in list(out) if t == "edgewatch/deadletter")
            assert set(letter) == {"topic", "payload", "reason", "code", "received_at", "agent_id"}
        online = retained_status(broker)
        assert online["state"] == "online"
        assert agent.proc.poll() is None, "the agent died on malformed input"
        wait_for(lambda: all(r["published_at"] for r in event_rows(agent)), timeout=10, what="all events published")
        assert len({(c["topic"], c["payload"]) for c in captured(agent)}) == len(sent)
    finally:
        code = stop_within(agent)
    assert code == 0, agent.log_tail()
    return agent, online


def test_end_to_end_mosquitto_mqtt5(mosquitto, tmp_path):
    agent, online = _end_to_end(mosquitto, tmp_path, protocol="5")
    status = retained_status(mosquitto)
    assert status["state"] == "offline" and status["version"]
    since = {s["state"]: datetime.fromisoformat(s["since"]) for s in (online, status)}
    assert since["offline"] > since["online"], "a clean stop's offline begins at the stop, not at the connect"
    assert '"protocol": "5"' in agent.log_tail(100_000)


def test_a_dead_letter_unpublished_in_the_log_is_published_at_the_next_start(mosquitto, tmp_path):
    """Dead letters reach MQTT from the log, as events do: one logged by a run that stopped before the broker
    had it (a crash, a broker away) is published when the agent next connects, and marked published."""
    agent = AgentProcess(mosquitto, tmp_path / "agent", {"agent": {"id": "edge1"}}, protocol="5")
    store = Store(agent.db, agent_id="edge1")
    store.write([], [DeadLetter("sensors/x", "{bad", "not JSON", utcnow(), "bad_json")])
    store.close()
    with subscribe_collect(mosquitto, "edgewatch/deadletter") as out:
        agent.start()
        try:
            letter = json.loads(out.wait(1, timeout=15)[0][1])
            assert letter == {"topic": "sensors/x", "payload": "{bad", "reason": "not JSON", "code": "bad_json",
                              "received_at": letter["received_at"], "agent_id": "edge1"}
            wait_for(lambda: all(d["published_at"] for d in _dead_letter_rows(agent.db)), 10,
                     what="the dead letter marked published")
        finally:
            assert stop_within(agent) == 0, agent.log_tail()


def test_a_retained_message_is_judged_once_not_at_every_restart(mosquitto, tmp_path):
    """A retained message (a device's last word, a stray malformed one) is delivered with a new subscription; the
    agent's persistent MQTT 5 session keeps its subscription, so a restart must not take it in again."""
    from paho.mqtt import publish

    publish.single("sensors/r1", b"not json", qos=1, retain=True, hostname=mosquitto.host, port=mosquitto.port)
    agent = AgentProcess(mosquitto, tmp_path / "agent", FAST, protocol="5")
    for restart in (False, True):
        agent.start()
        try:
            agent.wait_ready(mosquitto)
            wait_for_dead_letters(agent.db, 1)
            if restart:
                time.sleep(2.0)  # the broker sends a retained message right after the subscription's answer
        finally:
            assert stop_within(agent) == 0, agent.log_tail()
    assert [d["payload"] for d in _dead_letter_rows(agent.db)] == ["not json"]


def _dead_letter_rows(db: str) -> list[dict]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM deadletters")]


def test_end_to_end_amqtt_falls_back_to_311(mqtt_broker, tmp_path):
    agent, _ = _end_to_end(mqtt_broker, tmp_path, protocol="auto")
    log = agent.log_tail(100_000)
    assert '"protocol": "3.1.1"' in log, log


def test_sighup_reloads_thresholds_without_dropping_messages(mosquitto, tmp_path):
    agent = AgentProcess(mosquitto, tmp_path / "agent", FAST, protocol="5").start()
    try:
        agent.wait_ready(mosquitto)
        publish_many(mosquitto, readings("s1") + readings("s2", spike=False))
        s1 = wait_for_events(agent.db, 1, predicate=lambda e: e["kind"] == "anomaly" and e["key"] == "s1",
                             timeout=15)[0]
        assert s1["data"]["threshold"] == 0.8 and s1["data"]["score"] >= 0.9
        # a new threshold (above 1 it would be refused): the same spike on s2 is judged and stamped with it
        text = agent.config.read_text().replace("warmup = 20", "warmup = 20\nthreshold = 0.9\nclip = 7.0")
        agent.config.write_text(text.replace('format = "json"', 'format = "json"\nlevel = "debug"'))
        agent.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "config_reloaded" in agent.log_tail(100_000), timeout=10, what="reload logged")
        reload_line = next(json.loads(line) for line in agent.log_tail(100_000).splitlines()
                           if "config_reloaded" in line)
        assert {"anomaly.threshold", "log.level"} <= set(reload_line["applied"])
        # a detector parameter is copied into each key's state at start: reported, not half-applied
        assert "anomaly.clip" in reload_line["needs_restart"] and "anomaly.clip" not in reload_line["applied"]
        publish_many(mosquitto, readings("s2", n=0, start=60) + readings("s1", n=20, spike=False, start=61))
        wait_for(lambda: len(captured(agent)) >= 61 + 60 + 1 + 20, timeout=10,
                 what="every reading consumed across the reload")
        s2 = wait_for_events(agent.db, 1, predicate=lambda e: e["kind"] == "anomaly" and e["key"] == "s2",
                             timeout=15)
        assert [e["data"]["threshold"] for e in s2] == [0.9]
        agent.config.write_text(agent.config.read_text() + "\n[nonsense]\nx = 1\n")
        agent.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload_rejected" in agent.log_tail(100_000), timeout=10, what="bad reload rejected")
        assert agent.proc.poll() is None
    finally:
        assert stop_within(agent) == 0, agent.log_tail()


def _tls_material(d: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
    d.mkdir(parents=True, exist_ok=True)
    run = lambda *a: subprocess.run(a, cwd=d, check=True, capture_output=True)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-subj", "/CN=edgewatch-test-ca", "-days", "1")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "1", "-extfile", "san.ext")
    return {name: d / name for name in ("ca.crt", "server.crt", "server.key")}


def test_tls_and_password(tmp_path):
    """TLS with a private CA plus username/password_file: the agent connects, ingests, logs events."""
    for tool in ("openssl", "mosquitto_passwd"):
        require(tool, shutil.which(tool) is not None, f"`{tool}` is not on PATH")
    require("mosquitto", Mosquitto.binary() is not None, "the `mosquitto` binary is not on PATH")
    tls = _tls_material(tmp_path / "tls")
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "edge", "s3cret"], check=True, capture_output=True)
    (tmp_path / "password").write_text("s3cret\n")
    broker = Mosquitto(tmp_path / "mosquitto", extra_conf=(
        f"cafile {tls['ca.crt']}\ncertfile {tls['server.crt']}\nkeyfile {tls['server.key']}\n"
        f"allow_anonymous false\npassword_file {passwd}\n")).start()
    settings = dict(FAST, mqtt={"tls": True, "ca_file": str(tls["ca.crt"]), "username": "edge",
                                "password_file": str(tmp_path / "password")})
    agent = AgentProcess(broker, tmp_path / "agent", settings, protocol="5").start()
    try:
        wait_for(lambda: '"agent_ready"' in agent.log_tail(100_000) or agent.proc.poll() is not None, 20,
                 what="agent ready over TLS")
        assert agent.proc.poll() is None, agent.log_tail()
        # the test's own publisher is a plain client: give it the same TLS and credentials
        import paho.mqtt.client as mqtt
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        pub.tls_set(ca_certs=str(tls["ca.crt"]))
        pub.username_pw_set("edge", "s3cret")
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        infos = [pub.publish(t, json.dumps(p), qos=1) for t, p in readings("tls1")]
        for info in infos:
            info.wait_for_publish(10)
        pub.disconnect()
        pub.loop_stop()
        wait_for_events(agent.db, 1, predicate=lambda e: e["kind"] == "anomaly", timeout=15)
    finally:
        assert stop_within(agent) == 0, agent.log_tail()
        broker.stop()
