"""A staged install (`deploy/install.sh --root`), built once per session and shared by the deploy tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from edgewatch.agent.testing.plugin import require

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNITS = ("edgewatch-agent.service", "edgewatch-sidecar.service")


def need(tool: str) -> str:
    path = shutil.which(tool)
    require(tool, path is not None, f"{tool} not on PATH")
    return path


def install(root: Path, *args: str, wheelhouse: Path) -> subprocess.CompletedProcess:
    """Run install.sh into `root`: the package from a prebuilt wheel, dependencies from this test environment."""
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        [str(DEPLOY / "install.sh"), "--root", str(root), "--wheelhouse", str(wheelhouse), "--no-deps", *args],
        capture_output=True, text=True, env=env, timeout=180,
    )


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory) -> Path:
    """The edgewatch wheel alone (its dependencies are this environment's): offline, seconds."""
    out = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out), str(REPO)],
        check=True, capture_output=True, timeout=180,
    )
    return out


@pytest.fixture(scope="session")
def staged(tmp_path_factory, wheelhouse) -> Path:
    """`install.sh --root` into a fresh tree, as an image build would do."""
    need("systemd-sysusers")
    need("systemd-tmpfiles")
    root = tmp_path_factory.mktemp("root")
    r = install(root, wheelhouse=wheelhouse)
    assert r.returncode == 0, r.stderr
    return root


def run_installed(root: Path, command: str, *args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """Run an installed console script of the staged tree with its own interpreter.

    Its shebang names /opt/edgewatch (the target path), so the staged python runs
    it; the dependencies that --no-deps left out come from this test environment.
    """
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"], **(env_extra or {})}
    env.pop("VIRTUAL_ENV", None)
    venv = root / "opt/edgewatch/bin"
    script = [] if command == "python" else [str(venv / command)]
    return subprocess.run([str(venv / "python"), *script, *args], capture_output=True, text=True,
                          env=env, cwd=root, timeout=120)
