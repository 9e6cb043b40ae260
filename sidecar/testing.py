"""Running the real sidecar for tests and benchmarks: uvicorn in a thread, or `edge-sidecar` as a process."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import uvicorn
from edgewatch.common.ports import free_port
from edgewatch.model.format import meta as model_meta
from edgewatch.sidecar.server import uvicorn_config

MODEL_SOURCES = ("builder.py", "export.py", "gpt.py", "ngrams.py", "format/prompt.py", "format/tokenizer.py",
                 "testing.py", "train.py")


def cached_tiny_model(cache_dir: str | Path) -> Path:
    """edgewatch.model.testing.tiny_model, rebuilt only when the model code changed since (it costs ~20 s of CPU)."""
    from edgewatch.model import testing

    cache_dir = Path(cache_dir)
    built = cache_dir / "model" / model_meta.META_FILE
    sources = Path(testing.__file__).parent
    newest = max((sources / name).stat().st_mtime for name in MODEL_SOURCES)
    if not built.is_file() or built.stat().st_mtime < newest:
        testing.tiny_model(cache_dir)
    return cache_dir / "model"


def without_decode_graph(model_dir: str | Path, out: str | Path) -> Path:
    """A copy of an exported model that names no decode graph, as models exported before it existed: its
    Engine steps on the general graph (the same numbers, the previous speed)."""
    out = Path(shutil.copytree(model_dir, out))
    meta = model_meta.load(out)
    for key in ("decode", "decode_int8"):
        meta["files"].pop(key, None)
    model_meta.save(out, meta)
    return out


class ServerThread:
    """The ASGI app under uvicorn in a background thread, on TCP (`url`) or a Unix socket (`unix://…`)."""

    def __init__(self, app, *, uds: str | None = None):
        where = {"uds": uds} if uds else {"host": "127.0.0.1", "port": free_port()}
        self.url = f"unix://{uds}" if uds else f"http://127.0.0.1:{where['port']}"
        self.server = uvicorn.Server(uvicorn_config(app, log_level="warning", **where))
        self._thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self._thread.join(10)


def wait_ready(url: str, timeout: float = 60.0, process: subprocess.Popen | None = None) -> dict:
    """Poll GET /ready until 200; raise when the process died or time ran out."""
    base, uds = ("http://sidecar", url[len("unix://"):]) if url.startswith("unix://") else (url, None)
    transport = httpx.HTTPTransport(uds=uds) if uds else None
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=base, transport=transport, timeout=2.0) as http:
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"edge-sidecar exited with {process.returncode}")
            try:
                resp = http.get("/ready")
                if resp.status_code == 200:
                    return resp.json()
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout} s")


class SidecarProcess:
    """`edge-sidecar serve` as a child process that can be killed and started again on the same address.

    `output`: a file that receives its stdout and stderr (default: stdout dropped, stderr piped);
    `max_files`: its descriptor limit (RLIMIT_NOFILE), as a unit's LimitNOFILE sets it."""

    def __init__(self, model_dir: str | Path | None, *args: str, port: int | None = None,
                 output: str | Path | None = None, max_files: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "edgewatch.sidecar.cli", "serve", "--port", str(self.port), "--device", "cpu",
                    "--log-level", "warning", *args]
        if model_dir is not None:
            self.cmd += ["--model", str(model_dir)]
        self.output, self.max_files = output, max_files
        self.proc: subprocess.Popen | None = None

    def _limit_files(self) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.max_files, self.max_files))

    def start(self, wait: bool = True) -> SidecarProcess:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        limit = self._limit_files if self.max_files else None
        if self.output:
            with open(self.output, "ab") as out:
                self.proc = subprocess.Popen(self.cmd, env=env, stdout=out, stderr=out, preexec_fn=limit)
        else:
            self.proc = subprocess.Popen(self.cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                         preexec_fn=limit)
        if wait:
            wait_ready(self.url, process=self.proc)
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode if self.proc else 0

    def __enter__(self) -> SidecarProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()
