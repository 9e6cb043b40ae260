"""The real `edge-agent run` under a fake service manager: NOTIFY_SOCKET + WATCHDOG_USEC, as systemd sets them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from edgewatch.agent.testing.harness import Mosquitto, free_port, write_config
from edgewatch.agent.testing.plugin import require
from prometheus_client.parser import text_string_to_metric_families


class FakeManager:
    """The receiving end of NOTIFY_SOCKET: collects messages with their arrival times."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def pump(self, seconds: float = 0.0) -> list[dict[str, str]]:
        end = time.monotonic() + seconds
        while True:
            try:
                data = self.sock.recv(4096)
                self.messages.append((time.monotonic(), dict(x.split("=", 1) for x in data.decode().split("\n"))))
            except TimeoutError:
                if time.monotonic() >= end:
                    return [m for _, m in self.messages]

    def wait_for(self, key: str, timeout: float, after: float = 0.0) -> dict[str, str]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.pump()
            for t, m in self.messages:
                if t >= after and key in m:
                    return m
        raise AssertionError(f"no {key} from the agent in {timeout} s; got {[m for _, m in self.messages]}")


@pytest.fixture
def broker(tmp_path):
    require("mosquitto", Mosquitto.binary() is not None, "the `mosquitto` binary is not on PATH")
    b = Mosquitto(tmp_path / "broker")
    yield b
    b.stop()


def test_ready_after_broker_watchdog_reload_stop(broker, tmp_path):
    manager = FakeManager(tmp_path / "notify")
    metrics_port = free_port()
    config = write_config(tmp_path / "agent.toml", {
        "mqtt": {"host": broker.host, "port": broker.port, "client_id": "notify-test", "reconnect_max_delay": 0.5},
        "store": {"url": str(tmp_path / "events.db")},
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
        "news": {"enabled": False},
        "log": {"format": "json"},
    })
    env = {**os.environ, "NOTIFY_SOCKET": manager.path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": ""}
    log = open(tmp_path / "agent.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "edgewatch.agent.cli", "run", "--config", str(config)], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        # the broker is down: the engine runs (watchdog pings) but the agent is not ready
        manager.wait_for("WATCHDOG", timeout=20)
        manager.pump(1.0)
        assert not any("READY" in m for _, m in manager.messages), manager.messages
        health = httpx.get(f"http://127.0.0.1:{metrics_port}/health").json()
        assert health["ready"] is False and health["mqtt_connected"] is False

        started = time.monotonic()
        broker.start()
        ready = manager.wait_for("READY", timeout=15)
        assert ready["READY"] == "1" and broker.host in ready["STATUS"]  # what `systemctl status` shows
        assert all(t >= started for t, m in manager.messages if "READY" in m)  # READY only after the broker came
        r = httpx.get(f"http://127.0.0.1:{metrics_port}/health")
        assert r.status_code == 200 and r.json()["ready"] is True
        # the list: messages in by kind, dead letters by reason, events by kind, engine lag, outbox backlog,
        # log write latency, MQTT connection state, reconnects
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        for name in ("edgewatch_messages_in", "edgewatch_dead_letters", "edgewatch_events", "edgewatch_engine_lag_seconds",
                     "edgewatch_outbox_backlog", "edgewatch_log_write_seconds", "edgewatch_mqtt_connected",
                     "edgewatch_mqtt_reconnects", "edgewatch_outbox_inflight", "edgewatch_log_rows_written",
                     "edgewatch_log_write_errors", "edgewatch_log_rows_dropped", "edgewatch_log_pending_rows"):
            assert name in families, sorted(families)
        assert families["edgewatch_mqtt_connected"].samples[0].value == 1
        # and the standard process collectors: CPU per message can be read off a running agent
        assert families["process_cpu_seconds"].samples[0].value > 0
        assert families["process_resident_memory_bytes"].samples[0].value > 0

        # the engine keeps proving it is alive: pings keep coming, at least every WatchdogSec/2
        pings = [t for t, m in manager.messages if "WATCHDOG" in m]
        t0 = time.monotonic()
        manager.pump(2.5)
        later = [t for t, m in manager.messages if "WATCHDOG" in m and t > t0]
        assert len(later) >= 2 and max(b - a for a, b in zip([t0, *later], later)) < 2.0, (pings, later)

        t_hup = time.monotonic()
        proc.send_signal(signal.SIGHUP)  # systemctl reload
        reloading = manager.wait_for("RELOADING", timeout=10, after=t_hup)
        assert int(reloading["MONOTONIC_USEC"]) > 0
        manager.wait_for("READY", timeout=10, after=t_hup)  # reload finished

        t_term = time.monotonic()
        proc.send_signal(signal.SIGTERM)  # systemctl stop
        assert proc.wait(15) == 0
        manager.wait_for("STOPPING", timeout=1, after=t_term)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        manager.sock.close()
    assert (tmp_path / "agent.log").read_text().count('"agent_ready"') == 1
