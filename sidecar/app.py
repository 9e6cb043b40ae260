"""The sidecar's HTTP API (docs/reference/http-api.md): FastAPI on top of the batcher.

The model loads in a background thread at startup so `/health` answers at once
and `/ready` tells orchestration (systemd, the agent's doctor) when inference
can start. Every error is `{"error": {"message", "type", "param", "code"}}` (`errors`); the OpenAPI
description at /openapi.json documents them all. No /docs or /redoc: Swagger UI
and ReDoc load their scripts from a CDN, which an offline edge box cannot reach.
The routes live in `routes/`, one router per concern, and share `app.state.sidecar`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from edgewatch.common import __version__
from edgewatch.sidecar import errors
from edgewatch.sidecar.middleware import BodyLimit, RequestMetrics
from edgewatch.sidecar.routes import chat, classify, completions, probes
from edgewatch.sidecar.state import Settings, Sidecar
from fastapi import FastAPI

__all__ = ["Settings", "create_app"]


def create_app(
    settings: Settings | None = None,
    *,
    engine_factory: Callable[[], object] | None = None,
    on_ready: Callable[[str, str], None] | None = None,
    on_load_failed: Callable[[str], None] | None = None,
    on_heartbeat: Callable[[], None] | None = None,
    heartbeat_interval: float = 1.0,
) -> FastAPI:
    """The ASGI app. `on_ready(model, provider)` runs once the model is warm: the hook for
    systemd's READY=1; `on_load_failed(reason)` lets the CLI exit 1 when the model cannot load;
    `on_heartbeat()` runs every `heartbeat_interval` s while the event loop turns and the inference
    thread is alive and not stuck: the hook for systemd's WATCHDOG=1."""
    settings = settings or Settings()
    sc = Sidecar(settings, engine_factory, on_ready, on_load_failed)
    app = FastAPI(
        title="Edgewatch sidecar",
        version=__version__,
        description="Serves the exported nanoGPT with ONNX Runtime: news sentiment and text completion.",
        lifespan=_lifespan(sc, on_heartbeat, heartbeat_interval),
        docs_url=None,
        redoc_url=None,
    )
    app.state.sidecar = sc
    errors.install(app)
    routers = [module.router for module in (probes, classify, completions, chat)]
    for router in routers:
        app.include_router(router)
    endpoints = {app.openapi_url, *(route.path for router in routers for route in router.routes)}
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes, read_timeout=settings.read_timeout)
    app.add_middleware(RequestMetrics, metrics=sc.metrics, endpoints=endpoints)  # outermost: sees 413s too
    return app


def _lifespan(sc: Sidecar, on_heartbeat: Callable[[], None] | None, interval: float):
    """Load the model in the background for the app's life; beat the watchdog while the sidecar is healthy."""

    async def heartbeat():
        while True:
            await asyncio.sleep(interval)
            if sc.healthy():
                on_heartbeat()

    async def lifespan(app: FastAPI):
        threading.Thread(target=sc.load, name="sidecar-load", daemon=True).start()
        beating = asyncio.create_task(heartbeat()) if on_heartbeat else None
        yield
        if beating:
            beating.cancel()
        sc.close()

    return lifespan
