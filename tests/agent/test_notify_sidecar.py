"""`edge-sidecar serve --uds` exactly as the unit starts it, under a fake service manager: READY only once
/ready answers 200 on the socket, WATCHDOG closer together than WatchdogSec, STOPPING on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx


def test_sidecar_ready_watchdog_stopping(tiny_model_dir, tmp_path):
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(0.1)
    sock = tmp_path / "sidecar.sock"
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "3000000", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "edgewatch.sidecar.cli", "serve", "--uds", str(sock), "--device", "cpu",
                             "--model", str(tiny_model_dir), "--log-level", "warning"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    messages: list[tuple[float, dict[str, str]]] = []

    def pump(until) -> None:
        deadline = time.monotonic() + 60
        while not until() and time.monotonic() < deadline:
            try:
                data = notify.recv(4096)
            except TimeoutError:
                if proc.poll() is not None:
                    return  # exited, and everything it sent has been read
                continue
            messages.append((time.monotonic(), dict(x.split("=", 1) for x in data.decode().split("\n"))))

    try:
        pump(lambda: any("READY" in m for _, m in messages))
        ready_at, ready = next((t, m) for t, m in messages if "READY" in m)
        assert "serving" in ready.get("STATUS", ""), messages
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://sidecar") as http:
            assert http.get("/ready").status_code == 200  # READY=1 was not premature
        start = time.monotonic()
        pump(lambda: time.monotonic() - start > 4.0)
        pings = [t for t, m in messages if "WATCHDOG" in m and t > ready_at]
        # systemd kills a service whose pings are further apart than WatchdogSec (3 s here)
        assert len(pings) >= 2 and max(b - a for a, b in zip([ready_at, *pings], pings)) < 3.0, pings
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        pump(lambda: any("STOPPING" in m for _, m in messages))
        assert any("STOPPING" in m for _, m in messages)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
        notify.close()
