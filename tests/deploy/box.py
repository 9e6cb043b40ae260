"""A real systemd, booted as PID 1 of its own namespaces over a throwaway copy of this host's root.

The box's root is an overlay (this host's / below, a tmpfs above), so what an install writes there (/opt,
/etc/passwd, units, the event log) goes with the box. It has its own PID, mount, UTS and IPC namespaces and
shares the host's network, so the services reach a broker the test runs. What is shared with the host is
kept from the box: /proc/sys and /sys are read-only (the cgroup mounts below /sys stay writable), the kernel
log is /dev/null, and every unit that sets a machine up at boot (udev, sysctl, modules, the clock, mounts) is
masked, so systemd starts its journald and what a test starts, nothing else. The new root is entered with
pivot_root, not chroot: a chrooted process may not create user namespaces, and PrivateUsers=yes needs one.
A host whose own init is systemd is refused: the box would manage that systemd's control groups.
Needs root, unshare(1) and nsenter(1) (util-linux), overlayfs and systemd.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from pathlib import Path

TARGET = "edgewatch-box.target"
BOOT = f"""set -e
box=$1
shift
mount -t tmpfs tmpfs "$box"
mkdir "$box/upper" "$box/work" "$box/root"
mount -t overlay overlay -o lowerdir=/,upperdir="$box/upper",workdir="$box/work" "$box/root"
for d in proc sys dev; do mount --rbind /$d "$box/root/$d"; done
mount --bind "$box/root/proc/sys" "$box/root/proc/sys" && mount -o remount,bind,ro "$box/root/proc/sys"
mount -o remount,bind,ro "$box/root/sys"
mount --bind /dev/null "$box/root/dev/kmsg"
mount -t tmpfs tmpfs "$box/root/run"
while [ $# -gt 0 ]; do
    mkdir -p "$box/root$2" && mount --bind "$1" "$box/root$2" && mount -o remount,bind,ro "$box/root$2"
    shift 2
done
cd "$box/root" && mkdir -p .old && pivot_root . .old && umount -l /.old
mkdir -p /etc/systemd/system
for unit in /lib/systemd/system/sysinit.target.wants/* /etc/systemd/system/sysinit.target.wants/* \\
        local-fs.target swap.target systemd-udevd.service systemd-udev-trigger.service; do
    case ${{unit##*/}} in systemd-journald*) ;; *) ln -sf /dev/null "/etc/systemd/system/${{unit##*/}}" ;; esac
done
printf '[Unit]\\nDescription=a test box\\nDefaultDependencies=no\\nWants=systemd-journald.service\\n' \\
    > /etc/systemd/system/{TARGET}
exec env container=edgewatch-box /lib/systemd/systemd --system --unit={TARGET}
"""
CGROUPS = Path("/sys/fs/cgroup")
LOCK = Path("/run/lock/edgewatch-systemd-box.lock")  # one box a host: boxes share the host's control groups


def missing() -> str | None:
    """Why no box can be booted here, or None."""
    if os.geteuid() != 0:
        return "needs root (namespaces, mounts)"
    for tool in ("setpriv", "unshare", "nsenter", "systemctl", "journalctl"):
        if shutil.which(tool) is None:
            return f"{tool} not on PATH"
    if not os.access("/lib/systemd/systemd", os.X_OK):
        return "no /lib/systemd/systemd"
    return None


def unsafe() -> str | None:
    """Why a box must not be booted on this host, or None."""
    if os.path.isdir("/run/systemd/system"):
        return "this host runs systemd: a box's systemd would manage the host's control groups"
    return None


class SystemdBox:
    """`binds` maps host directories to where the box sees them, read-only and as they are: what a test needs
    from the host goes there, not through the overlay, whose view of a lower directory that changes while it
    is mounted (a checkout, a virtual environment) is undefined."""

    def __init__(self, workdir: Path, binds: dict[str, str] | None = None):
        self.workdir = workdir
        self.binds = binds or {}
        self.proc: subprocess.Popen | None = None
        self.pid = 0  # systemd's PID as this host sees it
        self._lock = None
        self._cgroups_before: set[Path] = set()

    def boot(self, timeout: float = 60.0) -> SystemdBox:
        """Start the box and wait until its systemd has reached its target; the box is killed on any failure."""
        LOCK.parent.mkdir(parents=True, exist_ok=True)
        self._lock = LOCK.open("w")
        fcntl.flock(self._lock, fcntl.LOCK_EX)  # waits for another test run's box to be gone
        try:
            return self._boot(timeout)
        except BaseException:
            self.close()
            raise

    def _boot(self, timeout: float) -> SystemdBox:
        self._cgroups_before = self._cgroups()
        mountpoint = self.workdir / "box"
        mountpoint.mkdir(parents=True)
        console = self.workdir / "console"  # a file, not a pipe: systemd writes to it and must never block
        with console.open("wb") as out:
            self.proc = subprocess.Popen(
                # setpriv: unshare gets SIGKILL when this test process dies, and its child (--kill-child) with it,
                # so a box never outlives its test
                ["setpriv", "--pdeathsig", "KILL", "unshare", "--pid", "--kill-child", "--mount", "--mount-proc",
                 "--uts", "--ipc", "--propagation", "private",
                 "sh", "-c", BOOT, "boot", str(mountpoint), *(x for pair in self.binds.items() for x in pair)],
                stdout=out, stderr=out)
        end = time.monotonic() + timeout
        why = "timed out"
        while time.monotonic() < end and self.proc.poll() is None:
            pid = self._systemd()
            if pid:
                self.pid = pid
                r = self.run("systemctl", "is-system-running", "--wait", timeout=max(1.0, end - time.monotonic()))
                if r.stdout.strip() in ("running", "degraded"):
                    return self
                why = f"systemd is {r.stdout.strip()}: {r.stderr.strip()}"
                break
            time.sleep(0.1)
        raise RuntimeError(f"the box did not boot ({why}): {console.read_text(errors='replace')[-500:]}")

    def _systemd(self) -> int:
        """systemd's PID once it listens for systemctl, else 0."""
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            if children and os.readlink(f"/proc/{children[0]}/exe").endswith("/systemd") and \
                    Path(f"/proc/{children[0]}/root/run/systemd/private").exists():
                return int(children[0])
        except OSError:  # the boot script just exited, or exec'd
            pass
        return 0

    def run(self, *argv: str, env: dict[str, str] | None = None, timeout: float = 120.0,
            check: bool = False) -> subprocess.CompletedProcess:
        """Run a command inside the box (its namespaces and root), as root."""
        assignments = [f"{k}={v}" for k, v in (env or {}).items()]
        return subprocess.run(["nsenter", "-t", str(self.pid), "-a", "env", *assignments, *argv],
                              capture_output=True, text=True, timeout=timeout, check=check)

    def path(self, inside: str) -> Path:
        """A path of the box's file system, as this host reaches it."""
        return Path(f"/proc/{self.pid}/root") / inside.lstrip("/")

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """The unit's properties as `systemctl show` gives them."""
        r = self.run("systemctl", "show", unit, *(f"--property={p}" for p in properties), check=True)
        return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)

    def wait_for(self, unit: str, timeout: float, **want: str) -> dict[str, str]:
        """Poll the unit's properties until each named one has its wanted value."""
        end = time.monotonic() + timeout
        while True:
            got = self.show(unit, *want, "ActiveState", "SubState", "MainPID", "NRestarts", "Result")
            if all(got.get(k) == v for k, v in want.items()):
                return got
            if time.monotonic() > end:
                raise AssertionError(f"{unit}: wanted {want}, got {got}\n{self.journal(unit)[-3000:]}")
            time.sleep(0.2)

    def journal(self, unit: str, *args: str) -> str:
        """The unit's journal, `journalctl` with `args`."""
        return self.run("journalctl", "--no-pager", "-u", unit, *args).stdout

    def close(self) -> None:
        """Kill the box: its PID 1 dies with `unshare` (--kill-child), and every process and mount of the box
        with its PID 1; then the control groups its systemd made, now empty, are removed."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=30)
            wait_until = time.monotonic() + 10
            while self.pid and os.path.exists(f"/proc/{self.pid}") and time.monotonic() < wait_until:
                time.sleep(0.05)  # the box's processes exit after unshare: wait for the groups to empty
        for path in sorted(self._cgroups() - self._cgroups_before, key=lambda p: -len(p.parts)):
            try:
                path.rmdir()
            except OSError:
                pass
        if self._lock is not None:
            self._lock.close()

    @staticmethod
    def _cgroups() -> set[Path]:
        """Every control group of this host's hierarchies: the ones a box added are removed after it."""
        return {Path(root) for top in CGROUPS.iterdir() if top.is_dir() for root, _, _ in os.walk(top)}
