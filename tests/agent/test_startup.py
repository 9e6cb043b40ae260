"""`edge-agent run` refusing to start: one line and exit 2 for what no restart can fix (systemd's
RestartPreventExitStatus=2), one line and exit 1 for a database server that may come back."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from edgewatch.agent.cli import main
from edgewatch.agent.eventlog.store import Store
from edgewatch.agent.records import make_event
from edgewatch.agent.testing.harness import free_port, write_config
from edgewatch.agent.timeutil import utcnow

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534


def run_agent(config: Path, *, as_nobody: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "edgewatch.agent.cli", "run", "--config", str(config)]
    if as_nobody:
        cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=timeout)


def settings(url: str, **more: dict) -> dict:
    """A configuration that would start (no broker needed to fail earlier), with the log at `url`."""
    cfg = {"mqtt": {"port": free_port(), "client_id": "startup-test"}, "store": {"url": url},
           "metrics": {"listen": ""}, "news": {"enabled": False}}
    for section, values in more.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def one_line(done: subprocess.CompletedProcess) -> str:
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], done.stdout + done.stderr
    return lines[0]


def run_here(capsys, config: Path) -> subprocess.CompletedProcess:
    """`edge-agent run` in this process: for starts that fail before any thread or logging is set up."""
    rc = main(["run", "--config", str(config)])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess([], rc, out, err)


def test_a_setting_check_config_refuses_stops_run_before_anything_starts(tmp_path):
    config = write_config(tmp_path / "agent.toml",
                          settings(str(tmp_path / "events.db"), mqtt={"output_prefix": "sensors"}))
    done = run_agent(config)  # the real entry point, once
    assert done.returncode == 2
    assert "mqtt.output_prefix: 'sensors' overlaps mqtt.sensors_prefix" in one_line(done)
    assert not (tmp_path / "events.db").exists()  # refused before the log was created


@pytest.fixture
def logs(tmp_path) -> Path:
    """A truncated log and a file that is no database."""
    good = tmp_path / "good.db"
    store = Store(str(good))
    store.write([make_event("anomaly", f"s{i}", utcnow(), "info", "m" * 500, {"i": i}, i) for i in range(2000)])
    store.close()
    (tmp_path / "truncated.db").write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    (tmp_path / "text.db").write_text("this is not a database\n" * 100)
    return tmp_path


@pytest.mark.parametrize("name, why", [("truncated.db", "not a usable event log (database disk image is malformed)"),
                                       ("text.db", "not a usable event log (file is not a database)")])
def test_a_damaged_log_file_is_one_line_naming_it(capsys, logs, name, why):
    done = run_here(capsys, write_config(logs / "agent.toml", settings(str(logs / name))))
    assert done.returncode == 2 and one_line(done).endswith(f"{logs / name}: {why}")


def test_a_database_server_that_is_down_is_a_runtime_failure_in_one_line(capsys, tmp_path):
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none"
    done = run_here(capsys, write_config(tmp_path / "agent.toml", settings(url)))
    assert done.returncode == 1 and "Connection refused" in one_line(done)


def test_a_readable_secret_is_warned_about_at_start(logs):
    secret = logs / "mqtt-password"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    config = write_config(logs / "agent.toml", settings(str(logs / "text.db"), log={"format": "json"},
                                                        mqtt={"username": "agent", "password_file": str(secret)}))
    done = run_agent(config)  # the damaged log stops it right after the warning
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 2 and len(lines) == 2
    assert '"event": "secret_file_exposed"' in lines[0] and '"key": "mqtt.password_file"' in lines[0]
    assert f'"path": "{secret}"' in lines[0] and "readable by everyone (mode 0644)" in lines[0]


# -- permissions: as a user who is not root (root reads and writes anything) -----------------------------------

needs_user = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                                reason="needs root and setpriv to run the agent as an unprivileged user")


@pytest.fixture
def shared_dir():
    """A directory user nobody can reach (pytest's tmp_path is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="edgewatch-startup-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base)


def _nobody_config(base: Path, url: str, **more) -> Path:
    config = write_config(base / "agent.toml", settings(url, **more))
    config.chmod(0o644)
    return config


@needs_user
def test_a_read_only_log_directory(shared_dir):
    state = shared_dir / "state"
    state.mkdir(mode=0o755)  # root's: nobody may not create files in it
    done = run_agent(_nobody_config(shared_dir, str(state / "events.db")), as_nobody=True)
    assert done.returncode == 2 and one_line(done).endswith(f"{state / 'events.db'}: permission denied")


@needs_user
@pytest.mark.parametrize("mode", [0o600, 0o644])  # unreadable; readable but not writable
def test_a_log_file_the_service_user_may_not_use(shared_dir, mode):
    state = shared_dir / "state"
    state.mkdir()
    state.chmod(0o777)
    log = state / "events.db"
    Store(str(log)).close()
    log.chmod(mode)
    done = run_agent(_nobody_config(shared_dir, str(log)), as_nobody=True)
    assert done.returncode == 2 and one_line(done).endswith(f"{log}: permission denied (read and write access needed)")


@needs_user
def test_a_capture_directory_the_service_user_may_not_create(shared_dir):
    state = shared_dir / "state"
    state.mkdir()
    state.chmod(0o777)
    locked = shared_dir / "locked"
    locked.mkdir(mode=0o755)
    config = _nobody_config(shared_dir, str(state / "events.db"), record={"path": str(locked / "capture")})
    done = run_agent(config, as_nobody=True)
    assert done.returncode == 2 and one_line(done).endswith(f"record.path: {locked / 'capture'}: permission denied")

