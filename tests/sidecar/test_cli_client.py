"""`edge-sidecar` as a process (exit codes, SIGTERM, Unix socket) and the client's retries and circuit breaker."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from edgewatch.sidecar.client import (
    AsyncSidecarClient,
    CircuitBreaker,
    SidecarClient,
    SidecarError,
    SidecarUnavailable,
)
from edgewatch.sidecar.testing import SidecarProcess, free_port, wait_ready


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgewatch.sidecar.cli", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["serve", "--port", "x"], "--port"),
        (["serve", "--device", "tpu"], "--device"),
        (["serve", "--model", "/nonexistent"], "--model /nonexistent"),
        (["serve", "--uds", "/tmp/a.sock", "--port", "9"], "--uds"),
        (["serve", "--api-key-file", "/nonexistent/key"], "--api-key-file"),
        (["serve", "--max-queue", "0"], "--max-queue"),
        (["frobnicate"], "frobnicate"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args, needle):
    r = run_cli(*args)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr


def test_cuda_without_gpu_fails_loudly(tiny_model_dir):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA")
    r = run_cli("serve", "--model", str(tiny_model_dir), "--device", "cuda", "--port", str(free_port()))
    assert r.returncode == 1 and "cuda" in r.stderr.lower()


def test_serve_on_unix_socket_and_stop_on_sigterm(tiny_model_dir, tmp_path):
    sock = tmp_path / "s.sock"
    key = tmp_path / "key"
    key.write_text("k3y\n")
    proc = subprocess.Popen([sys.executable, "-m", "edgewatch.sidecar.cli", "serve", "--model", str(tiny_model_dir),
                             "--uds", str(sock), "--device", "cpu", "--api-key-file", str(key)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_ready(f"unix://{sock}", process=proc)["provider"] == "CPUExecutionProvider"
        with SidecarClient(f"unix://{sock}", api_key="k3y") as c:
            assert c.classify(["through the socket"])["model"] == "tiny-nanogpt"
        with SidecarClient(f"unix://{sock}") as c, pytest.raises(SidecarError) as err:
            c.classify(["no key"])
        assert err.value.status == 401
        proc.terminate()
        assert proc.wait(15) == 0
    finally:
        proc.kill()
        proc.stderr.close()


def test_breaker_opens_then_half_opens_one_trial():
    b = CircuitBreaker(failures=2, reset_after=0.2)
    assert b.allow()
    b.failure()
    assert b.state == "closed"
    b.failure()
    assert b.state == "open" and not b.allow()
    time.sleep(0.25)
    assert b.allow() and not b.allow()  # one trial at a time
    b.failure()
    assert b.state == "open"  # the trial failed: open again
    time.sleep(0.25)
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.allow()


def test_client_fails_fast_when_down_and_recovers(tiny_model_dir):
    port = free_port()
    c = SidecarClient(f"http://127.0.0.1:{port}", timeout=1.0, retries=1, backoff=0.01,
                      breaker=CircuitBreaker(failures=2, reset_after=0.3))
    with pytest.raises(SidecarUnavailable):
        c.classify(["nobody home"])  # two attempts: the breaker opens
    t0 = time.perf_counter()
    with pytest.raises(SidecarUnavailable, match="circuit open"):
        c.classify(["fail fast"])
    assert time.perf_counter() - t0 < 0.2  # no connection attempt, no timeout
    with SidecarProcess(tiny_model_dir, port=port):
        time.sleep(0.35)
        assert c.classify(["back"])["results"][0]["label"]
        assert c.breaker.state == "closed"
        with pytest.raises(SidecarError) as err:
            c.complete("x", max_tokens=0)
        assert err.value.status == 400 and c.breaker.state == "closed"  # our fault, not the sidecar's
    c.close()


def test_client_retries_idempotent_call_through_not_ready(tiny_model_dir, serve):
    import threading

    gate = threading.Event()
    with serve(tiny_model_dir, gate=gate) as s:
        threading.Timer(0.15, gate.set).start()
        with SidecarClient(s.url, retries=6, backoff=0.05, timeout=5.0) as c:
            # 503 + Retry-After while loading; the retries carry the call to the loaded model
            assert c.classify(["wait for me"])["model"] == "tiny-nanogpt"


async def test_async_client(tiny_model_dir, serve):
    with serve(tiny_model_dir) as s:
        wait_ready(s.url)
        async with AsyncSidecarClient(s.url) as c:
            assert (await c.ready())["model"] == "tiny-nanogpt"
            assert len((await c.classify(["a", "b"]))["results"]) == 2
            out = await c.complete("a", max_tokens=4, temperature=0, ignore_eos=True)
            assert out["usage"]["completion_tokens"] == 4
            assert (await c.models())["data"][0]["id"] == "tiny-nanogpt"


def test_systemd_ready_watchdog_stopping(tiny_model_dir, tmp_path):
    import os
    import socket

    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="200000")
    proc = subprocess.Popen([sys.executable, "-m", "edgewatch.sidecar.cli", "serve", "--model", str(tiny_model_dir),
                             "--port", str(free_port()), "--device", "cpu"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        seen: list[str] = []
        while not ("READY=1" in seen and seen.count("WATCHDOG=1") >= 2):
            seen += sock.recv(4096).decode().splitlines()
        assert any(line.startswith("STATUS=serving tiny-nanogpt on CPUExecutionProvider") for line in seen)
        proc.terminate()
        assert proc.wait(15) == 0
        while "STOPPING=1" not in seen:
            seen += sock.recv(4096).decode().splitlines()
    finally:
        proc.kill()
        sock.close()


def test_serves_the_shipped_model_without_torch(shipped_dir):
    port = free_port()
    code = ("import sys; sys.modules['torch'] = None; from sidecar.cli import main; "
            f"sys.exit(main(['serve', '--port', '{port}', '--device', 'cpu']))")  # default --model: the shipped one
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_ready(url, process=proc)["model"]
        with SidecarClient(url) as c:
            results = c.classify(["$ACME beats estimates, raises guidance", "Initech misses, shares plunge"])["results"]
            assert len(results) == 2 and all(r["label"] in ("bearish", "bullish", "neutral") for r in results)
        proc.terminate()
        assert proc.wait(15) == 0
    finally:
        proc.kill()
        proc.stderr.close()


def test_every_line_the_process_writes_is_one_json_object(tiny_model_dir, tmp_path):
    """structlog renders uvicorn's and the standard library's records too: a log shipper parses every line."""
    import json

    import httpx

    out = tmp_path / "sidecar.log"
    with SidecarProcess(tiny_model_dir, "--log-level", "debug", output=out) as proc, \
            httpx.Client(base_url=proc.url, timeout=10) as http:
        assert http.post("/v1/classify", json={"texts": ["logged"]}).status_code == 200
        assert http.get("/nothing").status_code == 404
        assert http.post("/v1/classify", content=b"{nope", headers={"content-type": "application/json"}).status_code == 400
    lines = out.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # raises on the first line that is not JSON
    assert all(isinstance(r, dict) and r.get("event") and r.get("level") for r in records), lines
    assert any(r.get("logger", "").startswith("uvicorn") for r in records), lines  # uvicorn's own lines
    assert any(r["event"] == "model ready" for r in records)
