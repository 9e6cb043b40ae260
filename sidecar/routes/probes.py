"""Open to probes and scrapers (no API key): liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from edgewatch.sidecar.routes.deps import sidecar
from edgewatch.sidecar.schemas import ERRORS
from edgewatch.sidecar.state import Sidecar
from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter()


@router.get("/health", summary="200 while the process is up")
async def health() -> dict:
    return {"status": "ok"}


@router.get("/ready", summary="200 once the model is loaded and warmed", responses={503: ERRORS[503]})
async def ready(sc: Sidecar = Depends(sidecar)) -> dict:
    engine, _ = sc.require_ready()
    return {"status": "ready", "model": engine.name, "provider": engine.provider, "labels": list(engine.labels)}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(sc: Sidecar = Depends(sidecar)) -> Response:
    return Response(generate_latest(sc.registry), media_type=CONTENT_TYPE_LATEST)
