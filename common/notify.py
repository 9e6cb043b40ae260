"""systemd readiness and watchdog over the plain notify socket protocol (sd_notify(3)).

A few lines of standard library instead of a dependency: one datagram of
`KEY=VALUE` lines to the AF_UNIX socket named by NOTIFY_SOCKET. Outside systemd
(no NOTIFY_SOCKET) every call is a cheap no-op, so the services call it
unconditionally. The watchdog is fed by a `Heartbeat` that the csp engine beats
from a timer node: a hung graph stops beating, the pings stop, systemd restarts it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import typing


BUSY_EVERY = 5.0  # seconds between the pings of `Notifier.busy` (WatchdogSec is 30 s in the unit)


class Notifier:
    """Messages to the service manager: READY, WATCHDOG, STATUS, STOPPING, RELOADING."""

    def __init__(self, environ: typing.Mapping[str, str] | None = None):
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # '@name' is Linux's abstract namespace; sd_notify maps it to a leading NUL
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval = _watchdog_interval(env)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._pinged = float("-inf")

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *fields: str) -> bool:
        """Send one datagram of `KEY=VALUE` fields; False when not under systemd or the send failed."""
        if not self.address:
            return False
        data = "\n".join(fields).encode()
        with self._lock:  # engine thread, signal handlers and HTTP thread may all report
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    # never block the caller (the csp engine thread) on a full manager queue
                    self._sock.setblocking(False)
                self._sock.sendto(data, self.address)
                return True
            except OSError:
                return False  # the manager went away or is backlogged; the service keeps running

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *_status(status))

    def status(self, text: str) -> bool:
        return self.notify(*_status(text))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def keepalive(self) -> bool:
        """WATCHDOG=1 at most every third of an interval: call it on every turn of the work loop, however often.

        A third, not a half: a caller that turns once per half interval, with jitter, still pings every turn.
        """
        now = time.monotonic()
        if not self.watchdog_interval or now - self._pinged < self.watchdog_interval / 3:
            return False
        self._pinged = now
        return self.watchdog()

    def reloading(self, status: str | None = None) -> bool:
        """Start of a configuration reload; send `ready()` again when it is done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status(status))

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *_status(status))

    @contextlib.contextmanager
    def busy(self, status: str, every: float = BUSY_EVERY) -> typing.Iterator[None]:
        """A long step of the start before anything beats the watchdog (warming state up from captures): every
        `every` seconds, from a thread of its own, the manager hears that the process lives (WATCHDOG=1) and
        that the start goes on (EXTEND_TIMEOUT_USEC: another 3 x `every`), so neither `TimeoutStartSec` nor
        `WatchdogSec` ends it while it works; a step that hangs stops the pings only when it returns."""
        done = threading.Event()

        def ping() -> None:
            fields = ("WATCHDOG=1", f"EXTEND_TIMEOUT_USEC={int(3 * every * 1e6)}", *_status(status))
            self.notify(*fields)
            while not done.wait(every):
                self.notify(*fields)

        thread = threading.Thread(target=ping, name="notify-busy", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _status(text: str | None) -> tuple[str, ...]:
    # one line: a newline would start a new field
    return () if text is None else ("STATUS=" + " ".join(text.split()),)


def _watchdog_interval(env: typing.Mapping[str, str]) -> float | None:
    """Seconds between pings (half of WatchdogSec, as sd_watchdog_enabled advises), None when off."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None  # the watchdog is meant for another process (e.g. our parent)
    return usec / 2e6
