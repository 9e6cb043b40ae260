"""/v1/models and /v1/classify: what is served, and sentiment labels for texts."""

from __future__ import annotations

from edgewatch.sidecar.errors import BATCHER_ERRORS, ApiError, translate
from edgewatch.sidecar.routes.deps import (Call, ClientGone, authorized, call, require_model, tokenize,
                                           until_disconnected)
from edgewatch.sidecar.schemas import ERRORS, ClassifyRequest, ClassifyResponse, ModelCard, ModelList
from edgewatch.sidecar.state import Sidecar
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

router = APIRouter()


@router.get("/v1/models", responses={k: ERRORS[k] for k in (401, 503)})
async def models(sc: Sidecar = Depends(authorized)) -> ModelList:
    engine, _ = sc.require_ready()
    return ModelList(data=[ModelCard(id=engine.name, created=sc.started)])


@router.post("/v1/classify", responses=ERRORS, response_model=ClassifyResponse)
async def classify(body: ClassifyRequest, request: Request, c: Call = Depends(call)) -> Response:
    sc, until = c
    engine, batcher = sc.require_ready()
    require_model(body.model, engine)
    if len(body.texts) > sc.settings.max_texts:
        raise ApiError(413, f"at most {sc.settings.max_texts} texts per request", "request_too_large")

    async def run() -> list[dict]:
        prompts = await tokenize(engine.classification_prompt, body.texts, until)
        return await batcher.classify(prompts, until)

    try:
        results = await until_disconnected(request, run())
    except ClientGone:
        return Response(status_code=499)  # nobody is listening any more
    except BATCHER_ERRORS as e:
        raise translate(e) from None
    # the engine's dicts already have the documented shape: skip re-validating them on the hot path
    return JSONResponse({"model": engine.name, "results": results})
