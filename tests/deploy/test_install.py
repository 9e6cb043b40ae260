"""`deploy/install.sh --root`: the staged tree is the layout docs/deploy.md promises, and its commands run."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

from .conftest import DEPLOY, REPO, UNITS, install, run_installed


def mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))


def ids(root: Path, name: str) -> tuple[int, int]:
    uid = next(int(line.split(":")[2]) for line in (root / "etc/passwd").read_text().splitlines() if line.startswith(name + ":"))
    gid = next(int(line.split(":")[2]) for line in (root / "etc/group").read_text().splitlines() if line.startswith(name + ":"))
    return uid, gid


def test_staged_layout(staged: Path):
    uid, gid = ids(staged, "edgewatch")
    passwd = next(line for line in (staged / "etc/passwd").read_text().splitlines() if line.startswith("edgewatch:"))
    assert passwd.endswith(":/var/lib/edgewatch:/usr/sbin/nologin")  # a system user nobody logs in as
    for unit in UNITS:
        text = (staged / "etc/systemd/system" / unit).read_text()
        assert text == (DEPLOY / "systemd" / unit).read_text() and mode(staged / "etc/systemd/system" / unit) == "0o644"
    # more agents on one host: the agent's unit as a template, each instance with its own configuration file
    template = (staged / "etc/systemd/system/edgewatch-agent@.service").read_text()
    assert template == (DEPLOY / "systemd" / UNITS[0]).read_text() \
        .replace("Description=Edgewatch edge agent\n", "Description=Edgewatch edge agent %i\n") \
        .replace("--config /etc/edgewatch/agent.toml", "--config /etc/edgewatch/%i.toml") \
        .replace("#   systemctl edit edgewatch-agent\n",
                 "#   systemctl edit edgewatch-agent@NAME (one agent) or edgewatch-agent@.service (every one)\n")
    assert (staged / "usr/lib/sysusers.d/edgewatch.conf").is_file()
    assert (staged / "usr/lib/tmpfiles.d/edgewatch.conf").is_file()
    # configuration: root-owned, readable by the services' group only (it may name secrets)
    conf = staged / "etc/edgewatch"
    assert (conf.stat().st_uid, conf.stat().st_gid, mode(conf)) == (0, gid, "0o750")
    toml = conf / "agent.toml"
    assert (toml.stat().st_uid, toml.stat().st_gid, mode(toml)) == (0, gid, "0o640")
    assert toml.read_text() == (DEPLOY / "agent.toml").read_text()
    # the event log's directory: the service writes, the operators' group reads, nobody else
    state = staged / "var/lib/edgewatch"
    assert (state.stat().st_uid, state.stat().st_gid, mode(state)) == (uid, gid, "0o750")
    # scripts name the interpreter where it lives on the target, not in the staging tree
    assert (staged / "opt/edgewatch/bin/edge-agent").read_text().splitlines()[0] == "#!/opt/edgewatch/bin/python"
    assert str(staged) not in (staged / "opt/edgewatch/bin/activate").read_text()


def test_installed_commands_run(staged: Path):
    code = ("import importlib.util, edgewatch.agent, edgewatch.sidecar.app, edgewatch.model; "
            "print(edgewatch.agent.__file__); "
            "print([n for n in ('agent', 'model', 'sidecar') if importlib.util.find_spec(n)])")
    r = run_installed(staged, "python", "-c", code)
    where, top_level = r.stdout.splitlines()
    assert where.startswith(str(staged / "opt/edgewatch/lib")), r.stdout + r.stderr  # the installed copy
    assert top_level == "[]"  # one namespace: nothing installed as a bare `agent`, `model` or `sidecar`
    version = run_installed(staged, "python", "-c", "import importlib.metadata as m; print(m.version('edgewatch'))")
    for command in ("edge-agent", "edge-sidecar", "edge-model"):
        r = run_installed(staged, command, "--help")
        assert r.returncode == 0 and "usage:" in r.stdout, r.stderr
        r = run_installed(staged, command, "--version")
        assert r.stdout.split() == [command, version.stdout.strip()], r.stdout + r.stderr
    r = run_installed(staged, "edge-agent", "check-config", str(staged / "etc/edgewatch/agent.toml"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_rerun_keeps_config_and_uninstall_keeps_data(staged: Path, wheelhouse: Path, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(staged, root, symlinks=True)
    toml = root / "etc/edgewatch/agent.toml"
    toml.write_text('[mqtt]\nhost = "broker.local"\n')
    (root / "var/lib/edgewatch/events.db").write_bytes(b"log")

    r = install(root, "--gpu", wheelhouse=wheelhouse)  # idempotent: an upgrade in place (to the GPU build)
    assert r.returncode == 0, r.stderr
    assert "onnxruntime: gpu" in r.stdout
    assert toml.read_text() == '[mqtt]\nhost = "broker.local"\n' and "keeping existing" in r.stdout
    assert sum(line.startswith("edgewatch:") for line in (root / "etc/passwd").read_text().splitlines()) == 1

    r = install(root, "--uninstall", wheelhouse=wheelhouse)
    assert r.returncode == 0, r.stderr
    assert not (root / "opt/edgewatch").exists()
    assert not any((root / "etc/systemd/system" / u).exists() for u in (*UNITS, "edgewatch-agent@.service"))
    assert not (root / "usr/lib/sysusers.d/edgewatch.conf").exists()
    assert toml.exists() and (root / "var/lib/edgewatch/events.db").read_bytes() == b"log"


def test_bad_options_exit_2(tmp_path):
    for args in (["--frobnicate"], ["--prefix", "relative/path"], ["--wheelhouse", str(tmp_path / "none")]):
        r = subprocess.run([str(DEPLOY / "install.sh"), "--root", str(tmp_path), *args], capture_output=True, text=True)
        assert r.returncode == 2 and r.stderr.startswith("install.sh: "), r.stderr


def test_deploy_guide_layout_matches_the_staged_tree(staged: Path):
    """Every installed path docs/deploy.md's layout table names exists after install (the run-time ones aside)."""
    text = (REPO / "docs" / "deploy.md").read_text()
    for section in ("## Install", "## Start", "## Status", "## Logs", "## Reload", "## Upgrade", "## Uninstall"):
        assert section in text
    table = text[text.index("| path | what |"):].split("\n\n")[0]
    paths = [p for row in table.splitlines()[2:] for p in row.split("|")[1].replace(",", " ").split() if p.strip("`")]
    checked = 0
    for cell in paths:
        path = cell.strip("`")
        if path.startswith("/run/") or path.endswith("events.db"):
            continue  # made by the running services
        if "*" in path:
            assert list(staged.glob(path.lstrip("/"))), path
        else:
            assert (staged / path.lstrip("/")).exists(), path
        checked += 1
    assert checked >= 5
    assert "journalctl -u edgewatch-agent" in text and "systemctl reload edgewatch-agent" in text
    assert "deploy/install.sh --uninstall" in text


def test_installed_doctor_passes_with_the_installed_config(staged: Path, mosquitto):
    """The operator's first check, docs/deploy.md "Start": the installed doctor on the installed agent.toml.

    Only what differs between this test and a real box is overridden, through the
    environment as an operator would in a drop-in: the broker's port, the staged
    state directory, and no sidecar (news off).
    """
    env = {"EDGEWATCH_MQTT_PORT": str(mosquitto.port), "EDGEWATCH_NEWS_ENABLED": "false",
           "EDGEWATCH_STORE_URL": str(staged / "var/lib/edgewatch/events.db")}
    r = run_installed(staged, "edge-agent", "doctor", "--config", str(staged / "etc/edgewatch/agent.toml"),
                      env_extra=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "✓ broker" in r.stdout and "✓ event log" in r.stdout


def test_prefix_moves_the_environment_and_the_units_follow(wheelhouse: Path, tmp_path):
    root = tmp_path / "root"
    r = install(root, "--prefix", "/srv/edgewatch", wheelhouse=wheelhouse)
    assert r.returncode == 0, r.stderr
    assert (root / "srv/edgewatch/bin/edge-agent").read_text().startswith("#!/srv/edgewatch/bin/python")
    assert not (root / "opt").exists()
    for unit in UNITS:
        text = (root / "etc/systemd/system" / unit).read_text()
        assert "ExecStart=/srv/edgewatch/bin/" in text and "/opt/edgewatch" not in text
    assert "/srv/edgewatch/bin/edge-agent check-config" in r.stdout  # next steps name the real paths
