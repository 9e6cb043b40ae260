"""/v1/completions: OpenAI's completions subset, whole or streamed as server-sent events."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterable

from edgewatch.model.format.prompt import MAX_CHARS_PER_TOKEN
from edgewatch.sidecar.errors import BATCHER_ERRORS, ApiError, translate
from edgewatch.sidecar.routes.deps import ClientGone, authorize, deadline, sidecar, tokenize, until_disconnected
from edgewatch.sidecar.sampling import SamplingParams
from edgewatch.sidecar.schemas import ERRORS, CompletionChoice, CompletionRequest, CompletionResponse, Usage
from edgewatch.sidecar.state import Sidecar
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

router = APIRouter(dependencies=[Depends(authorize)])
_RESPONSES = ERRORS | {200: {
    "description": "a completion; with `stream`, server-sent events of partial completions ending in `data: [DONE]`",
    "content": {"text/event-stream": {}}}}


@router.post("/v1/completions", responses=_RESPONSES)
async def completions(body: CompletionRequest, request: Request, sc: Sidecar = Depends(sidecar),
                      until: float = Depends(deadline)) -> CompletionResponse:
    engine, batcher = sc.require_ready()
    prompts = _prompts(body, sc.settings.max_prompts, engine.block_size)
    params = _params(body)
    try:
        encoded = [ids or [engine.eos_id] for ids in await tokenize(engine.encode, prompts, until)]
    except BATCHER_ERRORS as e:
        raise translate(e) from None
    for ids in encoded:  # an empty prompt starts a fresh document
        if len(ids) >= engine.block_size:
            raise ApiError(400, f"prompt is {len(ids)} tokens; the model's context is {engine.block_size}",
                           "invalid_request_error")
    streams = [batcher.generate(ids, params, min(body.max_tokens, engine.block_size - len(ids)), until)
               for ids in encoded]
    cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        return await _stream(engine.name, cid, created, streams)
    return await _collect(engine.name, cid, created, encoded, streams, request)


def _prompts(body: CompletionRequest, max_prompts: int, block_size: int) -> list[str]:
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not prompts:
        raise ApiError(400, "prompt: must not be an empty list", "invalid_request_error")
    if len(prompts) > max_prompts:
        raise ApiError(413, f"at most {max_prompts} prompts per request", "request_too_large")
    for p in prompts:
        if len(p) > block_size * MAX_CHARS_PER_TOKEN:  # too long for sure: spare the encoding
            raise ApiError(400, f"prompt of {len(p)} characters exceeds the model's context of "
                                f"{block_size} tokens", "invalid_request_error")
    return prompts


def _params(body: CompletionRequest) -> SamplingParams:
    stops = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    if len(stops) > 4 or not all(stops):
        raise ApiError(400, "stop: at most 4 non-empty strings", "invalid_request_error")
    return SamplingParams(max_tokens=body.max_tokens, temperature=body.temperature, top_k=body.top_k,
                          top_p=body.top_p, stop=stops, seed=body.seed, ignore_eos=body.ignore_eos)


async def _first(stream: AsyncIterator[tuple]) -> tuple:
    try:
        return await anext(stream)
    except BATCHER_ERRORS as e:
        raise translate(e) from None


async def _text(stream: AsyncIterator[tuple]) -> tuple[str, str, int]:
    """One sequence to its end: (text, finish_reason, completion tokens)."""
    text, item = [], await anext(stream)
    while item[0] != "done":
        text.append(item[1])
        item = await anext(stream)
    return "".join(text), item[1], item[2]


async def _all(work: Iterable[Awaitable]) -> list:
    """Every result, or the first failure with the others cancelled (a cancelled sequence leaves the batch)."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()


async def _collect(model: str, cid: str, created: int, encoded: list[list[int]], streams: list,
                   request: Request) -> Response | CompletionResponse:
    try:
        outs = await until_disconnected(request, _all(_text(s) for s in streams))
    except ClientGone:
        return Response(status_code=499)  # nobody is listening any more
    except BATCHER_ERRORS as e:
        raise translate(e) from None
    choices = [CompletionChoice(index=i, text=t, finish_reason=r) for i, (t, r, _) in enumerate(outs)]
    n_prompt = sum(map(len, encoded))
    n_out = sum(n for _, _, n in outs)
    return CompletionResponse(id=cid, created=created, model=model, choices=choices,
                              usage=Usage(prompt_tokens=n_prompt, completion_tokens=n_out,
                                          total_tokens=n_prompt + n_out))


def _chunk(payload: dict) -> str:
    return "data: " + json.dumps(payload) + "\n\n"


async def _stream(model: str, cid: str, created: int, streams: list) -> StreamingResponse:
    firsts = []
    try:
        for s in streams:  # errors before the first token keep their HTTP status
            firsts.append(await _first(s))
    except ApiError:
        for s in streams:
            await s.aclose()
        raise

    def choice(index: int, text: str, reason: str | None) -> str:
        return _chunk({"id": cid, "object": "text_completion", "created": created, "model": model,
                       "choices": [{"index": index, "text": text, "finish_reason": reason, "logprobs": None}]})

    async def events():
        queue: asyncio.Queue = asyncio.Queue()
        tasks = [asyncio.ensure_future(_pump(i, s, f, queue)) for i, (s, f) in enumerate(zip(streams, firsts))]
        try:
            remaining = len(tasks)
            while remaining:
                index, item = await queue.get()
                if item[0] == "text":
                    yield choice(index, item[1], None)
                    continue
                remaining -= 1
                yield choice(index, "", item[1]) if item[0] == "done" else _chunk({"error": item[1]})
            yield "data: [DONE]\n\n"
        finally:  # finished, or the client left and Starlette cancelled us: stop every sequence
            for t in tasks:
                t.cancel()

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _pump(index: int, stream: AsyncIterator[tuple], item: tuple, queue: asyncio.Queue) -> None:
    """Move one sequence's items onto the shared queue; a failure mid-stream becomes an error item."""
    try:
        while True:
            queue.put_nowait((index, item))
            if item[0] == "done":
                return
            item = await anext(stream)
    except BATCHER_ERRORS as e:
        err = translate(e)
        queue.put_nowait((index, ("error", {"message": err.message, "type": err.type})))
