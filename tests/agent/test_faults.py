"""Fault tests against a real Mosquitto, QoS 1, persistent sessions, the agent as a subprocess.

(a) broker SIGKILLed and restarted mid-stream, (b) agent SIGKILLed and restarted
mid-stream, (c) broker down while events are being logged, (d) the broker killed
and then the agent, with the publisher never pausing and both cores busy. In each:
every reading the broker accepted is in the agent's capture record (0 lost), no
event_id twice in the log (0 duplicates), and every logged event is eventually
acknowledged by the broker and seen by a subscriber (the outbox).
"""

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from edgewatch.agent.testing.plugin import (AgentProcess, Mosquitto, free_port, publish_many, require, wait_for,
                                            wait_for_dead_letters)

from .test_service import FAST, T0, captured, event_rows, stop_within

pytestmark = pytest.mark.mosquitto

SENSORS = ("f1", "f2", "f3")


@pytest.fixture
def broker(tmp_path):
    """Mosquitto that saves its persistence file after every change, so a SIGKILL loses nothing it acknowledged."""
    require("mosquitto", Mosquitto.binary() is not None, "the `mosquitto` binary is not on PATH")
    b = Mosquitto(tmp_path / "mosquitto", extra_conf="autosave_on_changes true\n").start()
    yield b
    b.stop()


def _persistent_client(broker, name: str) -> mqtt.Client:
    """A 3.1.1 client with a persistent session that reconnects fast: survives broker restarts."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{name}-{uuid.uuid4().hex[:8]}",
                    protocol=mqtt.MQTTv311, clean_session=False)
    c.max_inflight_messages_set(100)
    c.max_queued_messages_set(0)
    c.reconnect_delay_set(0.1, 0.5)
    return c


class Stream:
    """Readings for SENSORS at `rate` msgs/s, QoS 1; paho keeps every unacknowledged one and resends it."""

    def __init__(self, broker, n: int, rate: float = 200.0, spike_every: int = 45, sensors: tuple = SENSORS):
        self.messages = []
        for i in range(n):
            sensor = sensors[i % len(sensors)]
            k = i // len(sensors)
            value = 95.0 if k % spike_every == spike_every - 1 else 20.0 + 0.01 * (k % 7)
            self.messages.append((f"sensors/{sensor}", json.dumps({"ts": T0 + k, "temperature": value})))
        self.rate = rate
        self.mids = []
        self.acked = set()  # mids the broker acknowledged (paho resends the others, also after a reconnect)
        self.client = _persistent_client(broker, "pub")
        self.client.on_publish = lambda c, u, mid, rc, p: self.acked.add(mid)
        self.client.connect_async(broker.host, broker.port)
        self.client.loop_start()
        self.running = threading.Event()
        self.running.set()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Stream":
        self.thread.start()
        return self

    def _run(self) -> None:
        t0 = time.monotonic()
        for i, (topic, payload) in enumerate(self.messages):
            if not self.running.is_set():
                paused = time.monotonic()
                self.running.wait()
                t0 += time.monotonic() - paused
            delay = t0 + i / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.mids.append(self.client.publish(topic, payload, qos=1).mid)

    def wait_acked(self, timeout: float = 20.0) -> None:
        self.thread.join(timeout)
        wait_for(lambda: len(self.mids) == len(self.messages) and self.acked >= set(self.mids),
                 timeout, what="every reading acknowledged by the broker")
        self.client.disconnect()
        self.client.loop_stop()


class Collector:
    """Subscriber to the agent's events with a persistent session (gets what was queued while it was away)."""

    def __init__(self, broker):
        self.event_ids = set()
        self.client = _persistent_client(broker, "sub")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("edgewatch/events/#", qos=1)
        self.client.on_message = lambda c, u, m: self.event_ids.add(json.loads(m.payload)["event_id"])
        self.client.connect_async(broker.host, broker.port)
        self.client.loop_start()
        wait_for(self.client.is_connected, 10, what="collector connected")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def check_delivery(agent: AgentProcess, stream: Stream, collector: Collector) -> None:
    sent = set(stream.messages)
    missing = lambda: sent - {(c["topic"], c["payload"]) for c in captured(agent)}  # noqa: E731
    try:
        wait_for(lambda: not missing(), 15, what="every accepted reading in the capture record")
    except TimeoutError as e:
        lost = sorted(missing())
        raise AssertionError(f"{len(lost)} of {len(sent)} readings never captured, e.g. {lost[:3]}\n"
                             + agent.log_tail()) from e
    rows = event_rows(agent)
    assert rows, "no events at all"
    assert len({r["event_id"] for r in rows}) == len(rows), "duplicate events in the log"
    wait_for(lambda: all(r["published_at"] for r in event_rows(agent)), 15, what="every logged event published")
    logged = {r["event_id"] for r in event_rows(agent)}
    wait_for(lambda: logged <= collector.event_ids, 10, what="every logged event seen on MQTT")


def test_broker_killed_mid_stream(broker, tmp_path):
    agent = AgentProcess(broker, tmp_path / "agent", FAST, protocol="5").start()
    agent.wait_ready(broker)
    collector = Collector(broker)
    stream = Stream(broker, 900).start()
    try:
        time.sleep(1.5)
        # Mosquitto acknowledges a publish before its autosave has written it, so a SIGKILL can lose
        # messages the BROKER acknowledged a moment earlier: no client can recover those. Pausing the
        # publisher for a few autosaves first keeps the accounting about the agent, whose deliveries
        # and acknowledgements are still in flight when the broker dies.
        stream.running.clear()
        time.sleep(0.3)
        broker.kill()
        time.sleep(1.0)
        broker.restart()
        stream.running.set()
        collector_ok = wait_for(collector.client.is_connected, 10, what="collector back")
        assert collector_ok
        stream.wait_acked()
        check_delivery(agent, stream, collector)
        assert agent.proc.poll() is None
    finally:
        collector.close()
        assert stop_within(agent) == 0, agent.log_tail()


def test_agent_killed_mid_stream(broker, tmp_path):
    agent = AgentProcess(broker, tmp_path / "agent", FAST, protocol="5").start()
    agent.wait_ready(broker)
    collector = Collector(broker)
    stream = Stream(broker, 900).start()
    try:
        time.sleep(1.5)
        agent.kill()
        time.sleep(0.5)
        agent.start()
        stream.wait_acked()
        check_delivery(agent, stream, collector)
    finally:
        collector.close()
        assert stop_within(agent) == 0, agent.log_tail()


def test_broker_down_while_events_are_logged(broker, tmp_path):
    settings = {**FAST, "health": {**FAST["health"], "stale_min": 3.0}}
    agent = AgentProcess(broker, tmp_path / "agent", settings, protocol="5").start()
    agent.wait_ready(broker)
    collector = Collector(broker)
    stream = Stream(broker, 300, rate=1000).start()
    try:
        stream.wait_acked()
        wait_for(lambda: len(captured(agent)) >= 300, 10, what="readings consumed")
        # a sensor that falls silent just before the broker goes: its `stale` comes while the broker is away
        now = time.time()
        publish_many(broker, [("sensors/late", {"ts": now + 0.1 * i, "temperature": 20.0}) for i in range(5)])
        wait_for(lambda: len(captured(agent)) >= 305, 10, what="the late sensor's readings consumed")
        broker.stop()
        # what is logged while the broker is away waits in the log
        wait_for(lambda: any(r["published_at"] is None for r in event_rows(agent)), 10,
                 what="an event logged while the broker is down")
        time.sleep(1.0)
        broker.restart()
        check_delivery(agent, stream, collector)
    finally:
        collector.close()
        assert stop_within(agent) == 0, agent.log_tail()


@pytest.fixture
def busy_cores():
    """Two busy-loop processes: the agent, the broker and the publisher compete for both cores."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    yield
    for p in procs:
        p.kill()
        p.wait()


class Witness:
    """A persistent QoS 1 subscriber to the readings: what the broker really delivered (a SIGKILLed broker
    can lose a reading it acknowledged just before dying; nobody receives those)."""

    def __init__(self, broker):
        self.readings = set()
        self.client = _persistent_client(broker, "witness")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("sensors/#", qos=1)
        self.client.on_message = lambda c, u, m: self.readings.add((m.topic, m.payload.decode()))
        self.client.connect_async(broker.host, broker.port)
        self.client.loop_start()
        wait_for(self.client.is_connected, 10, what="witness connected")

    def settled(self, quiet: float = 2.0) -> bool:
        """No new reading for `quiet` seconds."""
        n = len(self.readings)
        time.sleep(quiet)
        return len(self.readings) == n

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _health(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read())


@pytest.mark.parametrize("run", range(5))
def test_broker_then_agent_killed_without_pause_loses_nothing(broker, tmp_path, busy_cores, run):
    """The broker is SIGKILLed mid-stream and restarted 1.5 s later, then the agent is SIGKILLed and restarted
    2 s after that; the publisher (4 sensors, 800/s) never pauses. The restarted agent gets a burst of
    redeliveries and republishes its unpublished events: its acknowledgements must still reach the broker,
    or the receive window (small here, so a stall shows within the stream) stays full and the rest of the
    stream never arrives. Every reading the broker delivered is captured, and /health ends healthy with
    nothing left unacknowledged."""
    port = free_port()
    settings = {**FAST, "health": {"interval": 3600.0},  # events: anomalies, not a health report per reading
                "mqtt": {"receive_maximum": 400, "ack_deadline": 60.0}, "metrics": {"listen": f"127.0.0.1:{port}"}}
    agent = AgentProcess(broker, tmp_path / "agent", settings, protocol="5").start()
    agent.wait_ready(broker, timeout=60)
    witness = Witness(broker)
    collector = Collector(broker)
    stream = Stream(broker, 2000, rate=800, sensors=("f1", "f2", "f3", "f4")).start()
    try:
        wait_for(lambda: len(stream.mids) >= 600, 30, what="a third of the stream published")
        broker.kill()
        time.sleep(1.5)
        broker.restart()
        wait_for(lambda: agent.log_tail(100_000).count("mqtt_connected") >= 2, 30, what="agent reconnected")
        agent.kill()
        time.sleep(2.0)
        agent.start()
        stream.wait_acked(timeout=120)
        wait_for(witness.settled, 90, what="the witness's deliveries settled")
        delivered = set(witness.readings)
        missing = lambda: delivered - {(c["topic"], c["payload"]) for c in captured(agent)}  # noqa: E731
        try:
            wait_for(lambda: not missing(), 60, what="every delivered reading captured")
        except TimeoutError as e:
            order = {m: i for i, m in enumerate(stream.messages)}
            lost = sorted(order[m] for m in missing())
            raise AssertionError(f"{len(lost)} delivered readings never captured (indexes {lost[:3]}..{lost[-3:]})\n"
                                 + agent.log_tail()) from e
        wait_for(lambda: (h := _health(port))["ok"] and h["unacked_messages"] == 0, 30,
                 what="/health ok with every delivery acknowledged")
        wait_for(lambda: all(r["published_at"] for r in event_rows(agent)), 60, what="every logged event published")
    finally:
        witness.close()
        collector.close()
        assert stop_within(agent) == 0, agent.log_tail()


def test_a_full_disk_holds_the_input_back_and_loses_nothing(broker, tmp_path):
    """The log's file system fills up (an edge box's SD card): the agent keeps running, says so on /health, holds
    the unlogged input unacknowledged at the broker, and logs all of it, once, when space is freed."""
    require("root", os.geteuid() == 0, "mounting a small file system for the log needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True)
    port = free_port()
    agent = AgentProcess(broker, tmp_path / "agent", {
        **FAST, "store": {"url": str(disk / "events.db"), "max_backlog_age": 2.0}, "record": {"path": ""},
        "metrics": {"listen": f"127.0.0.1:{port}"}}, protocol="5")
    try:
        agent.start().wait_ready(broker)
        n = 1500  # 1.5 KB each, kept whole in the dead letters: more than the disk holds
        publish_many(broker, [(f"sensors/s{i}", "x" * 1500 + str(i)) for i in range(n)], timeout=60)

        def health() -> dict:
            try:
                return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read())
            except urllib.error.HTTPError as e:  # 503 while a check fails
                return json.loads(e.read())

        wait_for(lambda: "writer_backlog" in health()["failing"], 20, what="/health failing on the writer backlog")
        state = health()
        assert agent.proc.poll() is None and state["unacked_messages"] > 0, state  # held back, not dropped
        assert "database or disk is full" in agent.log_tail(20_000)
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)  # space is freed
        wait_for(lambda: health()["ok"], 30, what="/health ok once the log is written")
        wait_for_dead_letters(str(disk / "events.db"), n, timeout=30)
        assert stop_within(agent) == 0, agent.log_tail()
        with contextlib.closing(sqlite3.connect(f"file:{disk / 'events.db'}?mode=ro", uri=True)) as db:
            assert db.execute("SELECT count(*), count(DISTINCT topic) FROM deadletters").fetchone() == (n, n)
    finally:
        agent.kill()
        subprocess.run(["umount", "--lazy", str(disk)], check=False)
