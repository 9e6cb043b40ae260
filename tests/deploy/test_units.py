"""The systemd units: verify without warnings, exposure within target, the directives the design relies on."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import DEPLOY, UNITS, need

TARGETS = {"edgewatch-agent.service": 1.5, "edgewatch-sidecar.service": 2.0}


def directives(unit: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values (keys such as SystemCallFilter= repeat)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for line in (DEPLOY / "systemd" / unit).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = out.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key, []).append(value)
    return out


@pytest.mark.parametrize("unit", UNITS)
def test_exposure_within_target(unit):
    need("systemd-analyze")
    target = TARGETS[unit]
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", f"--threshold={round(target * 10)}",
         str(DEPLOY / "systemd" / unit)],
        capture_output=True, text=True, timeout=60,
    )
    score = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout).group(1))
    assert r.returncode == 0 and score <= target, r.stdout[-2000:]


def test_verify_has_no_warnings(staged: Path, tmp_path):
    """`systemd-analyze verify` in the installed tree: ExecStart paths exist, every directive is known."""
    need("systemd-analyze")
    # the target's own systemd: its units (sysinit.target, ...) and /bin/kill for ExecReload
    shutil.copytree("/usr/lib/systemd/system", staged / "usr/lib/systemd/system", symlinks=True, dirs_exist_ok=True)
    (staged / "bin").mkdir(exist_ok=True)
    shutil.copy2(shutil.which("kill") or "/bin/kill", staged / "bin/kill")
    r = subprocess.run(
        ["systemd-analyze", "verify", f"--root={staged}",
         *(f"/etc/systemd/system/{u}" for u in (*UNITS, "edgewatch-agent@north.service"))],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0 and r.stdout.strip() == "" and r.stderr.strip() == "", r.stdout + r.stderr


def test_verify_catches_a_bad_directive(staged: Path, tmp_path):
    """The check above would fail on a typo: the same call on a broken copy warns."""
    need("systemd-analyze")
    bad = staged / "etc/systemd/system/edgewatch-typo.service"
    bad.write_text((DEPLOY / "systemd" / UNITS[0]).read_text().replace("WatchdogSec=", "WatchdogSecs="))
    try:
        r = subprocess.run(["systemd-analyze", "verify", f"--root={staged}", "/etc/systemd/system/edgewatch-typo.service"],
                           capture_output=True, text=True, timeout=60)
    finally:
        bad.unlink()
    assert "WatchdogSecs" in r.stdout + r.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_notify_watchdog_restart_and_sandbox(unit):
    d = directives(unit)
    svc, u = d["Service"], d["Unit"]
    assert svc["Type"] == ["notify"] and svc["NotifyAccess"] == ["main"]
    assert svc["WatchdogSec"] and svc["Restart"] == ["on-failure"]
    # exit 2 is a configuration, usage or log-file error (one line naming the key or file): no restart fixes it
    assert svc["RestartPreventExitStatus"] == ["2"]
    assert u["StartLimitIntervalSec"] and u["StartLimitBurst"]  # in [Unit], where systemd reads them
    # paho-mqtt's select() loop breaks above fd 1023: the soft limit stays 1024
    assert svc["LimitNOFILE"][0].split(":")[0] == "1024"
    assert svc["User"] == ["edgewatch"] and svc["Group"] == ["edgewatch"] and svc["UMask"] == ["0027"]
    assert svc["StateDirectory"] == ["edgewatch"] and svc["StateDirectoryMode"] == ["0750"]
    assert svc["ConfigurationDirectory"] == ["edgewatch"] and svc["ProtectSystem"] == ["strict"]
    # the program's name: what common/journal.py puts in the entries it sends itself
    assert svc["SyslogIdentifier"] == [unit.removesuffix(".service").replace("edgewatch-", "edge-")]
    assert svc["NoNewPrivileges"] == ["yes"] and svc["CapabilityBoundingSet"] == [""]


def test_agent_reloads_with_sighup_and_wants_the_sidecar_softly():
    d = directives("edgewatch-agent.service")
    assert d["Service"]["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert "edgewatch-sidecar.service" in d["Unit"]["Wants"][0].split()
    assert "edgewatch-sidecar.service" in d["Unit"]["After"][0].split()
    assert "Requires" not in d["Unit"] and "BindsTo" not in d["Unit"]
    assert "--config /etc/edgewatch/agent.toml" in d["Service"]["ExecStart"][0]


def test_sidecar_only_on_its_socket_and_the_gpu():
    svc = directives("edgewatch-sidecar.service")["Service"]
    assert "--uds /run/edgewatch/sidecar.sock" in svc["ExecStart"][0]
    assert svc["RuntimeDirectory"] == ["edgewatch"] and svc["RuntimeDirectoryMode"] == ["0750"]
    assert svc["PrivateNetwork"] == ["yes"] and svc["RestrictAddressFamilies"] == ["AF_UNIX"]
    # PrivateDevices=yes would hide /dev/nvidia*: a closed device policy that lets the NVIDIA nodes through
    assert "PrivateDevices" not in svc and svc["DevicePolicy"] == ["closed"]
    assert svc["DeviceAllow"] == ["char-nvidia* rw"]
    from edgewatch.agent.config import load

    assert load(DEPLOY / "agent.toml", environ={}).sidecar.url == "unix:///run/edgewatch/sidecar.sock"
