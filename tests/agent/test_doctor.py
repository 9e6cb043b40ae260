"""`edge-agent doctor` against real brokers, directories and sockets: what fails says so, and how to fix it."""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from edgewatch.agent.commands import doctor
from edgewatch.agent.testing.harness import Mosquitto, free_port, write_config
from edgewatch.agent.testing.plugin import require
from paho.mqtt.enums import CallbackAPIVersion


@pytest.fixture(autouse=True)
def short_listen(monkeypatch):
    monkeypatch.setattr(doctor, "LISTEN_SECONDS", 1.0)


def settings(tmp_path: Path, broker=None, **sections) -> Path:
    base = {
        "mqtt": {"host": "127.0.0.1", "port": broker.port if broker else free_port(), "client_id": "doctor-test"},
        "store": {"url": str(tmp_path / "log" / "events.db")},
        "news": {"enabled": False},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    (tmp_path / "log").mkdir(exist_ok=True)
    return write_config(tmp_path / "agent.toml", base)


def run(path: Path, capsys) -> tuple[int, dict[str, str]]:
    code = doctor.doctor_command(argparse.Namespace(config=str(path)))
    lines = capsys.readouterr().out.splitlines()
    marks = {line[2:13].strip(): line[0] for line in lines if line and line[0] in "✓✗–"}
    return code, {"out": "\n".join(lines), **marks}


class Publisher:
    """Sensor readings with `ts` offset from now, published while the doctor listens."""

    def __init__(self, broker, offset: float):
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="doctor-test-publisher")
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.offset, self.stop = offset, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.wait(0.02):
            ts = (datetime.now(timezone.utc) + timedelta(seconds=self.offset)).isoformat()
            self.client.publish("sensors/room/1", json.dumps({"ts": ts, "temperature": 21.5}), qos=0)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.client.disconnect()
        self.client.loop_stop()


def test_all_pass_with_a_live_broker_and_synced_clocks(mosquitto, tmp_path, capsys):
    with Publisher(mosquitto, offset=-0.5):
        code, marks = run(settings(tmp_path, mosquitto), capsys)
    assert code == 0, marks["out"]
    assert marks["config"] == marks["broker"] == marks["event log"] == marks["clock skew"] == "✓"
    assert marks["sidecar"] == "–"  # news analysis off: nothing to check
    assert "all checks passed" in marks["out"]


def test_clock_skew_is_reported(mosquitto, tmp_path, capsys):
    with Publisher(mosquitto, offset=-600):  # the publishers' clock is 10 minutes behind ours
        code, marks = run(settings(tmp_path, mosquitto), capsys)
    assert code == 1 and marks["clock skew"] == "✗" and "NTP" in marks["out"], marks["out"]
    with Publisher(mosquitto, offset=+400):  # ahead: these would be dead-lettered
        code, marks = run(settings(tmp_path, mosquitto), capsys)
    assert code == 1 and "dead-lettered" in marks["out"], marks["out"]


def test_unreachable_broker(tmp_path, capsys):
    code, marks = run(settings(tmp_path), capsys)
    assert code == 1 and marks["broker"] == "✗" and marks["clock skew"] == "–"
    assert "Connection refused" in marks["out"] and "fix: is the broker running" in marks["out"]
    assert marks["event log"] == "✓"  # the other checks still run


def test_wrong_credentials(tmp_path, capsys):
    require("mosquitto", Mosquitto.binary() is not None and shutil.which("mosquitto_passwd") is not None,
            "mosquitto / mosquitto_passwd not on PATH")
    users = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(users), "edge", "right"], check=True, capture_output=True)
    users.chmod(0o600)
    broker = Mosquitto(tmp_path / "broker", extra_conf=f"allow_anonymous false\npassword_file {users}\n").start()
    try:
        secret = tmp_path / "secret"
        secret.write_text("wrong\n")
        code, marks = run(settings(tmp_path, broker, mqtt={"username": "edge", "password_file": str(secret)}), capsys)
        assert code == 1 and marks["broker"] == "✗" and "mqtt.password_file" in marks["out"], marks["out"]
        secret.write_text("right\n")
        code, marks = run(settings(tmp_path, broker, mqtt={"username": "edge", "password_file": str(secret)}), capsys)
        assert marks["broker"] == "✓" and "as edge" in marks["out"], marks["out"]
    finally:
        broker.stop()


def test_stopped_sidecar(mosquitto, tmp_path, capsys):
    sock_path = tmp_path / "sidecar.sock"
    with socket.socket(socket.AF_UNIX) as s:  # the socket file of a sidecar that has exited
        s.bind(str(sock_path))
    path = settings(tmp_path, mosquitto, news={"enabled": True}, sidecar={"url": f"unix://{sock_path}"})
    code, marks = run(path, capsys)
    assert code == 1 and marks["sidecar"] == "✗", marks["out"]
    assert "systemctl start edgewatch-sidecar" in marks["out"] and "degraded" in marks["out"]


def test_read_only_log_directory(mosquitto, tmp_path):
    """As the service sees it under ProtectSystem=strict: the directory is on a read-only mount (root) or 0555."""
    path = settings(tmp_path, mosquitto)
    logdir = tmp_path / "log"
    command = [sys.executable, "-m", "edgewatch.agent.cli", "doctor", "--config", str(path)]
    if os.geteuid() == 0:  # root ignores permission bits: use a read-only bind mount in a private namespace
        require("unshare", shutil.which("unshare") is not None, "util-linux unshare not on PATH")
        command = ["unshare", "--mount", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(logdir), *command]
    else:
        logdir.chmod(0o555)
    try:
        r = subprocess.run(command, capture_output=True, text=True, timeout=60)
    finally:
        logdir.chmod(0o755)
    if "mount:" in r.stderr:
        require("a private mount namespace", False, r.stderr.strip())
    assert r.returncode == 1, r.stdout + r.stderr
    line = next(line for line in r.stdout.splitlines() if "event log" in line)
    assert line.startswith("✗") and "not writable" in line and ("Read-only" in line or "Permission" in line), r.stdout
    assert "fix: give the service user write access" in r.stdout


def test_missing_log_directory(mosquitto, tmp_path, capsys):
    path = settings(tmp_path, mosquitto, store={"url": str(tmp_path / "nowhere" / "events.db")})
    code, marks = run(path, capsys)
    assert code == 1 and marks["event log"] == "✗" and "install -d -o edgewatch" in marks["out"]


def test_configuration_error_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[mqtt]\nport = "many"\n')
    code, marks = run(bad, capsys)
    assert code == 2 and marks["config"] == "✗" and "mqtt.port" in marks["out"]
    assert "broker" not in marks  # nothing else can be checked without a configuration


def test_ready_sidecar_names_model_and_provider(mosquitto, tmp_path, capsys, tiny_model_dir):
    from edgewatch.sidecar.app import Settings, create_app
    from edgewatch.sidecar.testing import ServerThread, wait_ready

    sock_path = str(tmp_path / "sidecar.sock")
    with ServerThread(create_app(Settings(model_dir=str(tiny_model_dir), device="cpu")), uds=sock_path):
        wait_ready(f"unix://{sock_path}")
        path = settings(tmp_path, mosquitto, news={"enabled": True}, sidecar={"url": f"unix://{sock_path}"})
        code, marks = run(path, capsys)
    assert marks["sidecar"] == "✓" and "CPUExecutionProvider" in marks["out"], marks["out"]


def test_root_checks_on_behalf_of_the_service_user(mosquitto, tmp_path, capsys, monkeypatch):
    """`sudo edge-agent doctor` must not pass a log directory only root can write."""
    if os.geteuid() != 0:
        pytest.skip("runs as root only: it is about what root's doctor reports")
    monkeypatch.setattr(doctor, "SERVICE_USER", "nobody")
    path = settings(tmp_path, mosquitto)
    (tmp_path / "log").chmod(0o755)  # root's, not nobody's
    code, marks = run(path, capsys)
    assert code == 1 and marks["event log"] == "✗" and "not by the service user nobody" in marks["out"], marks["out"]
    os.chown(tmp_path / "log", pwd.getpwnam("nobody").pw_uid, -1)
    code, marks = run(path, capsys)
    assert code == 0 and marks["event log"] == "✓", marks["out"]


def test_auto_protocol_falls_back_to_311(mqtt_broker, tmp_path, capsys):
    """The embedded amqtt broker speaks MQTT 3.1.1 only: `auto` gets there, `5` fails with a fix."""
    code, marks = run(settings(tmp_path, mqtt_broker, mqtt={"protocol": "auto"}), capsys)
    assert marks["broker"] == "✓" and "MQTT 3.1.1" in marks["out"], marks["out"]
    code, marks = run(settings(tmp_path, mqtt_broker, mqtt={"protocol": "5"}), capsys)
    assert code == 1 and marks["broker"] == "✗" and 'mqtt.protocol = "auto"' in marks["out"], marks["out"]
