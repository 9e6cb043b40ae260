"""What the routes share, kept in `app.state.sidecar`: the settings, the engine once loaded, the batcher,
the metrics and the readiness state."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

import structlog
from edgewatch.sidecar.batcher import Batcher
from edgewatch.sidecar.errors import ApiError
from edgewatch.sidecar.metrics import SidecarMetrics
from prometheus_client import CollectorRegistry

log = structlog.get_logger("sidecar")


@dataclasses.dataclass
class Settings:
    model_dir: str | None = None  # None = the model shipped in the package
    device: str = "auto"  # auto | cuda | cpu
    int8: bool = False
    threads: int | None = None
    api_key: str | None = None  # Bearer key required on /v1/* when set
    max_batch: int = 16  # texts per classification run (why 16: sidecar.batcher)
    max_wait_ms: float = 1.0  # under concurrent load, how long a classification burst may gather
    max_gen_batch: int = 8  # sequences in the running decode batch
    max_queue: int = 256  # waiting requests before 429
    timeout: float = 30.0  # per-request deadline, seconds (X-Request-Timeout may shorten it)
    max_body_bytes: int = 1 << 20  # request bodies above this get 413
    max_texts: int = 256  # texts per classify request
    max_prompts: int = 16  # prompts per completions request
    read_timeout: float = 10.0  # a request's head, then its body, must each arrive within this many seconds
    keep_alive: float = 5.0  # an idle connection is closed after this many seconds
    max_connections: int = 512  # open connections; kept below the process's descriptor limit (sidecar.server)


def _default_engine_factory(settings: Settings):
    from edgewatch.sidecar.engine import Engine

    return Engine(settings.model_dir, device=settings.device, int8=settings.int8, threads=settings.threads)


class Sidecar:
    def __init__(self, settings: Settings, engine_factory: Callable[[], object] | None,
                 on_ready: Callable[[str, str], None] | None, on_load_failed: Callable[[str], None] | None):
        self.settings = settings
        self.engine_factory = engine_factory or (lambda: _default_engine_factory(settings))
        self.on_ready, self.on_load_failed = on_ready, on_load_failed
        self.registry = CollectorRegistry()
        self.metrics = SidecarMetrics(self.registry, lambda: self.batcher.depth if self.batcher else 0)
        self.engine = None
        self.batcher: Batcher | None = None
        self.load_error: str | None = None
        self.started = int(time.time())
        self._closed = threading.Event()

    def load(self) -> None:
        """Background thread: load and warm the model, then open for inference."""
        try:
            t0 = time.perf_counter()
            engine = self.engine_factory()
            engine.warmup()
            batcher = Batcher(
                engine,
                max_batch=self.settings.max_batch,
                max_wait=self.settings.max_wait_ms / 1000,
                max_queue=self.settings.max_queue,
                max_gen_batch=self.settings.max_gen_batch,
                stats=self.metrics.batcher_stats(),
            )
            if self._closed.is_set():
                return
            batcher.start()
            self.engine, self.batcher = engine, batcher
            self.metrics.set_model(engine.name, engine.provider)
            log.info("model ready", model=engine.name, provider=engine.provider, seconds=round(time.perf_counter() - t0, 3))
        except Exception as e:  # noqa: BLE001 - reported through /ready and on_load_failed
            self.load_error = f"{type(e).__name__}: {e}"
            log.error("model failed to load", error=self.load_error)
            if self.on_load_failed:
                self.on_load_failed(self.load_error)
            return
        if self.on_ready:
            self.on_ready(engine.name, engine.provider)

    def close(self) -> None:
        self._closed.set()
        if self.batcher:
            self.batcher.stop()

    def healthy(self) -> bool:
        """Loading, or serving with a live inference thread; False once loading failed or inference hung."""
        if self.batcher is None:
            return self.load_error is None
        return self.batcher.healthy()

    def require_ready(self):
        if self.batcher is None:
            state = f"model failed to load: {self.load_error}" if self.load_error else "model is loading"
            raise ApiError(503, state, "not_ready", {"Retry-After": "1"})
        return self.engine, self.batcher
