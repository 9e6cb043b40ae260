"""Both services under a real systemd, installed the way docs/deploy.md says: `deploy/install.sh` on a live host.

The box (box.py) is a throwaway copy of this host running systemd as its PID 1, so the units run with every
sandboxing directive they carry: their own user, user and mount namespaces, the seccomp filters, a private
network for the sidecar. What is checked is what an operator relies on: the services start and say when they
are ready, reach each other and the broker through the sandbox, answer `doctor`, reload on SIGHUP, are
restarted after a crash or a hang, stop cleanly, and are not restarted after a configuration error.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import httpx
import pytest
from edgewatch.agent.testing.harness import Mosquitto, free_port, publish, subscribe_collect
from edgewatch.agent.testing.plugin import require

from .box import SystemdBox, missing, unsafe
from .conftest import DEPLOY, REPO

AGENT, SIDECAR = "edgewatch-agent.service", "edgewatch-sidecar.service"
CONFIG = "/etc/edgewatch/agent.toml"
# the dependencies the wheel is installed without (--no-deps): this test environment's, mounted where the services
# see them (a checkout under /tmp or /root is hidden from them by PrivateTmp and ProtectHome)
DEPS = "/usr/local/lib/edgewatch-test-deps"


def interpreter() -> str | None:
    """A Python the services' user may run, of this one's version (the services import this environment's
    dependencies: the wheel is installed with --no-deps). Not one under /root: ProtectHome hides it."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (os.path.realpath(sys.executable), f"/usr/bin/{version}"):
        if os.access(candidate, os.X_OK) and not candidate.startswith(("/root/", "/home/")) and \
                Path(candidate).name == version:
            return candidate
    return None


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    require("mosquitto", Mosquitto.binary() is not None, "the `mosquitto` binary is not on PATH")
    b = Mosquitto(tmp_path_factory.mktemp("broker")).start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def box(tmp_path_factory, wheelhouse, broker):
    """A booted box with Edgewatch installed by install.sh, its agent.toml pointed at the test's broker."""
    why = missing()
    require("a systemd box", why is None, why or "")
    if why := unsafe():  # not a missing tool: this host cannot have a box, in CI or not
        pytest.skip(why)
    python = interpreter()
    require("a system Python", python is not None,
            f"no python{sys.version_info.major}.{sys.version_info.minor} outside /root and /home")
    binds = {str(REPO): "/usr/local/src/edgewatch", str(wheelhouse): "/usr/local/src/wheels",
             sysconfig.get_paths()["purelib"]: DEPS}
    b = SystemdBox(tmp_path_factory.mktemp("systemd"), binds).boot()
    try:
        r = b.run("/usr/local/src/edgewatch/deploy/install.sh", "--wheelhouse", "/usr/local/src/wheels", "--no-deps",
                  env={"PYTHON": python})
        assert r.returncode == 0, r.stdout + r.stderr
        for unit in (AGENT, SIDECAR, "edgewatch-agent@.service"):
            dropin = b.path(f"/etc/systemd/system/{unit}.d")
            dropin.mkdir()
            (dropin / "deps.conf").write_text(f"[Service]\nEnvironment=PYTHONPATH={DEPS}\n")
        conf = (DEPLOY / "agent.toml").read_text()
        conf = re.sub(r"(?m)^port = 1883", f"port = {broker.port}", conf)
        conf = re.sub(r'(?m)^listen = "127.0.0.1:9108"', f'listen = "127.0.0.1:{free_port()}"', conf)
        b.path(CONFIG).write_text(conf)  # keeps the installed file's owner and mode
        b.run("systemctl", "daemon-reload", check=True)
        yield b
    finally:
        b.close()


def started(box: SystemdBox) -> dict[str, str]:
    """Start the agent (a no-op when it runs) and return its properties once it runs."""
    r = box.run("systemctl", "start", AGENT, timeout=200)
    assert r.returncode == 0, r.stderr + box.journal(AGENT)[-3000:]
    return box.wait_for(AGENT, 10, ActiveState="active", SubState="running")


def edge_agent(box: SystemdBox, *args: str, user: str = "edgewatch") -> subprocess.CompletedProcess:
    """An installed command run in the box as the services' user, the way docs/deploy.md shows it."""
    return box.run("runuser", "-u", user, "--", "/opt/edgewatch/bin/edge-agent", *args, env={"PYTHONPATH": DEPS})


def events(box: SystemdBox, *args: str) -> list[dict]:
    """`edge-agent events --format json` in the box, as the services' user."""
    r = edge_agent(box, "events", "--config", CONFIG, "--format", "json", *args)
    assert r.returncode == 0, r.stdout + r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def test_install_registers_the_units_and_the_user(box):
    # install.sh saw a running systemd and reloaded it: the units are known without a manual daemon-reload
    for unit in (AGENT, SIDECAR):
        assert box.show(unit, "LoadState", "FragmentPath") == \
            {"LoadState": "loaded", "FragmentPath": f"/etc/systemd/system/{unit}"}
    assert box.run("id", "-u", "edgewatch").returncode == 0


def test_agent_start_brings_up_the_sidecar_and_both_say_ready(box):
    agent = started(box)  # Type=notify: `systemctl start` returns once READY=1 came
    sidecar = box.wait_for(SIDECAR, 10, ActiveState="active", SubState="running")  # Wants= pulled it in
    status = box.show(AGENT, "StatusText")["StatusText"]
    assert status.startswith("connected to 127.0.0.1:"), status
    assert box.show(SIDECAR, "StatusText")["StatusText"].startswith("serving edgewatch-nanogpt on ")
    # the sidecar (AF_UNIX only, no network) logs over the journal's socket too: its keys are fields
    r = box.run("journalctl", "--no-pager", "-u", SIDECAR, "EVENT=model ready", "-o", "json", check=True)
    entry = json.loads(r.stdout.splitlines()[-1])
    assert (entry["SYSLOG_IDENTIFIER"], entry["MODEL"]) == ("edge-sidecar", "edgewatch-nanogpt"), entry
    assert entry["PROVIDER"].endswith("ExecutionProvider"), entry
    for unit, props in ((AGENT, agent), (SIDECAR, sidecar)):
        assert box.run("ps", "-o", "user=", "-p", props["MainPID"]).stdout.strip() == "edgewatch", unit  # not root
    # the sidecar's socket: only the edgewatch user and group reach the model
    run_dir = box.path("/run/edgewatch")
    assert oct(run_dir.stat().st_mode & 0o777) == "0o750" and (run_dir / "sidecar.sock").exists()


def news_event(box: SystemdBox, broker: Mosquitto, headline_id: str, timeout: float = 20) -> dict:
    """Publish a headline with this id and return the `data` of the `news` event the agent logs for it."""
    publish(broker, "news/wire", {"headline": f"Acme {headline_id}: shares rise on a new contract",
                                  "symbols": ["ACME"], "id": headline_id})
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = [e for e in events(box, "--kind", "news") if e["data"].get("headline_id") == headline_id]
        if found:
            return found[0]["data"]
        time.sleep(0.3)
    raise AssertionError(f"no news event for {headline_id}\n{box.journal(AGENT)[-2000:]}")


def test_feeds_reach_the_log_through_the_sandbox_and_doctor_passes(box, broker):
    started(box)
    box.wait_for(SIDECAR, 10, ActiveState="active")
    publish(broker, "sensors/box-1", {"temperature": "hot"})  # malformed: a dead letter with its reason
    data = news_event(box, broker, "box-1", timeout=30)
    assert data["degraded"] is False and data["model"] == "edgewatch-nanogpt", data  # asked over the socket
    assert data["sentiment"] in ("bullish", "bearish", "neutral") and 0 < data["confidence"] <= 1
    r = edge_agent(box, "deadletters", "--config", CONFIG, "--format", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert [d["code"] for d in map(json.loads, r.stdout.splitlines()) if d["topic"] == "sensors/box-1"], r.stdout
    # the log is the service's: written by edgewatch, readable by its group, not by others
    db = box.path("/var/lib/edgewatch/events.db")
    assert oct(db.stat().st_mode & 0o777) == "0o640"
    r = edge_agent(box, "doctor", "--config", CONFIG)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all checks passed" in r.stdout


def test_an_operator_in_the_group_reads_the_live_log(box, broker):
    """docs/deploy.md: `usermod -aG edgewatch alice`, then alice queries the log the agent is writing."""
    started(box)
    if box.run("id", "alice").returncode != 0:
        box.run("useradd", "--no-create-home", "--groups", "edgewatch", "alice", check=True)
    publish(broker, "sensors/box-2", {"temperature": "cold"})
    end, r = time.monotonic() + 20, None
    while time.monotonic() < end:
        r = edge_agent(box, "deadletters", "--config", CONFIG, "--format", "json", user="alice")
        if r.returncode != 0 or "sensors/box-2" in r.stdout:
            break
        time.sleep(0.5)
    assert r.returncode == 0 and "sensors/box-2" in r.stdout, r.stdout + r.stderr
    # without the group: no access, said in one line
    if box.run("id", "bob").returncode != 0:
        box.run("useradd", "--no-create-home", "bob", check=True)
    r = edge_agent(box, "events", "--config", CONFIG, user="bob")
    assert r.returncode == 2 and r.stderr.strip().endswith(f"{CONFIG}: permission denied"), r.stdout + r.stderr


def test_the_agent_outlives_the_sidecar_and_uses_it_again_when_it_is_back(box, broker):
    """The agent only Wants= the sidecar: stopping the sidecar degrades news and stops nothing else, and the
    agent reaches the socket the restarted sidecar makes (its runtime directory is removed and made again)."""
    pid = started(box)["MainPID"]
    box.wait_for(SIDECAR, 10, ActiveState="active")
    box.run("systemctl", "stop", SIDECAR, check=True)
    assert not box.path("/run/edgewatch").exists()
    data = news_event(box, broker, "while-away")
    assert data["degraded"] is True and data["sentiment"] == "neutral", data
    box.run("systemctl", "start", SIDECAR, timeout=200, check=True)
    back = time.monotonic()
    data = {"degraded": True}
    while data["degraded"] and time.monotonic() - back < 15:  # the breaker lets a trial through every second
        data = news_event(box, broker, f"back-{time.monotonic():.3f}")
    assert data["degraded"] is False and data["model"] == "edgewatch-nanogpt", data
    assert box.show(AGENT, "MainPID", "ActiveState") == {"MainPID": pid, "ActiveState": "active"}


def test_reload_keeps_the_process_and_applies_live_keys(box):
    pid = started(box)["MainPID"]
    conf = box.path(CONFIG)
    text = conf.read_text()
    conf.write_text(text.replace('level = "info"', 'level = "debug"'))
    try:
        r = box.run("systemctl", "reload", AGENT)  # ExecReload: SIGHUP, and Type=notify waits for READY=1 again
        assert r.returncode == 0, r.stderr
        assert box.show(AGENT, "MainPID", "ActiveState") == {"MainPID": pid, "ActiveState": "active"}
        end = time.monotonic() + 10
        while "config_reloaded" not in (log := box.journal(AGENT, "-o", "cat")) and time.monotonic() < end:
            time.sleep(0.2)
        line = [json.loads(x) for x in log.splitlines() if '"config_reloaded"' in x][-1]
        assert line["applied"] == ["log.level"] and line["needs_restart"] == []
        # each key of a log line is a journal field (docs/deploy.md: `journalctl -u edgewatch-agent EVENT=...`)
        r = box.run("journalctl", "--no-pager", "-u", AGENT, "EVENT=config_reloaded", "-o", "json", check=True)
        entry = json.loads(r.stdout.splitlines()[-1])
        assert (entry["PRIORITY"], entry["SYSLOG_IDENTIFIER"], entry["APPLIED"]) == ("6", "edge-agent", '["log.level"]')
        assert json.loads(entry["MESSAGE"])["event"] == "config_reloaded"
    finally:
        conf.write_text(text)
        box.run("systemctl", "reload", AGENT)


def test_crash_is_restarted(box):
    before = started(box)
    box.run("kill", "-9", before["MainPID"], check=True)
    after = box.wait_for(AGENT, 30, ActiveState="active", SubState="running",
                         NRestarts=str(int(before["NRestarts"]) + 1))  # RestartSec=2s, then READY=1 again
    assert after["MainPID"] != before["MainPID"]


def test_hung_agent_is_killed_by_the_watchdog_and_restarted(box):
    dropin = box.path(f"/etc/systemd/system/{AGENT}.d/watchdog.conf")
    dropin.write_text("[Service]\nWatchdogSec=5s\nTimeoutAbortSec=2s\n")  # the unit's 30 s, shortened for the test
    try:
        box.run("systemctl", "daemon-reload", check=True)
        box.run("systemctl", "restart", AGENT, timeout=200, check=True)
        before = box.wait_for(AGENT, 10, ActiveState="active", SubState="running")
        time.sleep(10)  # two watchdog periods: a running graph keeps pinging
        assert box.show(AGENT, "MainPID", "NRestarts") == \
            {"MainPID": before["MainPID"], "NRestarts": before["NRestarts"]}
        box.run("kill", "-STOP", before["MainPID"], check=True)  # SIGSTOP: the process stays, its pings stop
        after = box.wait_for(AGENT, 40, ActiveState="active", SubState="running",
                             NRestarts=str(int(before["NRestarts"]) + 1))
        assert after["MainPID"] != before["MainPID"]
        assert "Watchdog timeout" in box.journal(AGENT)
    finally:
        dropin.unlink()
        box.run("systemctl", "daemon-reload", check=True)


def test_stop_is_clean_and_says_offline(box, broker):
    started(box)
    with subscribe_collect(broker, "edgewatch/status") as status:

        def seen() -> list[dict]:
            return [json.loads(p) for _, p in list(status)]

        t0 = time.monotonic()
        r = box.run("systemctl", "stop", AGENT, timeout=60)
        took = time.monotonic() - t0
        assert r.returncode == 0, r.stderr
        props = box.show(AGENT, "ActiveState", "Result", "ExecMainStatus")
        # SIGTERM: flushed and exited 0 on its own (not killed by the signal: that would be status 15), well
        # inside TimeoutStopSec=20s
        assert props == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
        assert took < 15
        stopped = [json.loads(x) for x in box.journal(AGENT, "-o", "cat").splitlines() if '"agent_stopped"' in x]
        assert stopped and stopped[-1]["failed"] is False
        end = time.monotonic() + 5
        while not (seen() and seen()[-1]["state"] == "offline") and time.monotonic() < end:
            time.sleep(0.1)
        assert seen() and seen()[-1]["state"] == "offline", seen()


def test_configuration_error_exits_2_and_is_not_restarted(box):
    conf = box.path(CONFIG)
    text = conf.read_text()
    box.run("systemctl", "stop", AGENT)
    conf.write_text(text.replace("max_drawdown = 10000.0", "max_drawdown = -5.0"))
    try:
        r = box.run("systemctl", "start", AGENT, timeout=60)
        assert r.returncode != 0
        time.sleep(4)  # two RestartSec periods: RestartPreventExitStatus=2 means none comes
        props = box.show(AGENT, "ActiveState", "Result", "ExecMainStatus", "NRestarts")
        assert props["ActiveState"] == "failed" and props["ExecMainStatus"] == "2", props
        assert props["NRestarts"] == "0"
        assert "risk.max_drawdown" in box.journal(AGENT, "-o", "cat", "-p", "err")
    finally:
        conf.write_text(text)
        box.run("systemctl", "reset-failed", AGENT)
        started(box)


def test_broker_down_at_start_is_retried_until_it_comes(box, tmp_path):
    late = Mosquitto(tmp_path / "late")  # configured, not yet running
    conf, dropin = box.path(CONFIG), box.path(f"/etc/systemd/system/{AGENT}.d/start.conf")
    text = conf.read_text()
    box.run("systemctl", "stop", AGENT, check=True)
    conf.write_text(re.sub(r"(?m)^port = \d+", f"port = {late.port}", text))
    # the unit's 90 s, shortened for the test, and no start limit: the tests before it started the agent too
    dropin.write_text("[Unit]\nStartLimitIntervalSec=0\n[Service]\nTimeoutStartSec=8s\n")
    try:
        box.run("systemctl", "daemon-reload", check=True)
        box.run("systemctl", "start", "--no-block", AGENT, check=True)
        # no READY=1 without the broker: the start times out, and Restart=on-failure tries again
        box.wait_for(AGENT, 40, NRestarts="1")
        late.start()
        box.wait_for(AGENT, 60, ActiveState="active", SubState="running")
        assert box.show(AGENT, "StatusText")["StatusText"] == f"connected to 127.0.0.1:{late.port}"
    finally:
        late.stop()
        conf.write_text(text)
        dropin.unlink()
        box.run("systemctl", "daemon-reload", check=True)
        box.run("systemctl", "restart", AGENT, timeout=200)


def instance_config(box: SystemdBox, name: str) -> int:
    """/etc/edgewatch/NAME.toml: the installed agent.toml with its own metrics port; returns the port."""
    port = free_port()
    text = re.sub(r'(?m)^listen = "127.0.0.1:\d+"', f'listen = "127.0.0.1:{port}"', box.path(CONFIG).read_text())
    path = box.path(f"/etc/edgewatch/{name}.toml")
    path.write_text(text)
    box.run("chown", "root:edgewatch", f"/etc/edgewatch/{name}.toml", check=True)
    path.chmod(0o640)
    return port


def test_two_agents_on_one_host_from_the_template(box):
    ports = {name: instance_config(box, name) for name in ("north", "south")}
    host = box.run("hostname", check=True).stdout.strip()
    units = [f"edgewatch-agent@{name}.service" for name in ports]
    try:
        r = box.run("systemctl", "start", *units, timeout=200)
        assert r.returncode == 0, r.stderr + box.journal(units[0])[-3000:]
        for name, unit in zip(ports, units):
            props = box.wait_for(unit, 10, ActiveState="active", SubState="running")
            assert box.show(unit, "Description")["Description"] == f"Edgewatch edge agent {name}"
            ready = box.run("journalctl", "--no-pager", "-u", unit, "EVENT=agent_ready", "-o", "json", check=True)
            entry = json.loads(ready.stdout.splitlines()[-1])
            # each its own agent: id from the file's stem, its own broker session, its own metrics port
            assert (entry["AGENT_ID"], entry["CLIENT_ID"]) == (f"{host}-{name}", f"edgewatch-{host}-{name}"), entry
            assert entry["_PID"] == props["MainPID"]
            assert httpx.get(f"http://127.0.0.1:{ports[name]}/health", timeout=5).status_code == 200
    finally:
        box.run("systemctl", "stop", *units)


def test_uninstall_stops_the_services_and_keeps_the_data(box):
    started(box)
    instance_config(box, "north")
    # enabled as docs/deploy.md says, and one agent from the template
    r = box.run("systemctl", "enable", "--now", AGENT, SIDECAR, "edgewatch-agent@north.service")
    assert r.returncode == 0, r.stderr
    wants = box.path("/etc/systemd/system/multi-user.target.wants")
    assert (wants / AGENT).is_symlink() and (wants / "edgewatch-agent@north.service").is_symlink()
    r = box.run("/usr/local/src/edgewatch/deploy/install.sh", "--uninstall")
    assert r.returncode == 0, r.stdout + r.stderr
    for unit in (AGENT, SIDECAR, "edgewatch-agent@north.service"):
        assert box.show(unit, "ActiveState", "LoadState") == {"ActiveState": "inactive", "LoadState": "not-found"}
        assert not os.path.lexists(wants / unit)  # disabled: the link is gone, not only what it pointed at
    assert not box.path("/opt/edgewatch").exists()
    assert box.path(CONFIG).is_file() and box.path("/var/lib/edgewatch/events.db").is_file()
