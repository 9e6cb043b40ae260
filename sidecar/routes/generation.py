"""What /v1/completions and /v1/chat/completions share: checking the request, starting one sequence per
choice, and collecting them whole or streaming them as server-sent events (OpenAI's framing)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Protocol

from edgewatch.sidecar.errors import BATCHER_ERRORS, ApiError, translate, unsupported
from edgewatch.sidecar.routes.deps import ClientGone, require_model, tokenize, until_disconnected
from edgewatch.sidecar.sampling import SamplingParams
from edgewatch.sidecar.schemas import Usage, _Generation
from fastapi.responses import Response, StreamingResponse

Logprob = tuple[int, float, list[tuple[int, float]]]  # token, its log-probability, the most likely alternatives


def check(body: _Generation, engine) -> None:
    """Refuse what the server does not do (404 for another model, 400 naming the field)."""
    require_model(body.model, engine)
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name) != 0:
            raise unsupported(name, "only 0 (no penalty) is supported")


def sampling(body: _Generation, max_tokens: int, logprobs: int | None) -> SamplingParams:
    stops = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    if len(stops) > 4 or not all(stops):
        raise ApiError(400, "stop: at most 4 non-empty strings", "invalid_request_error", param="stop")
    return SamplingParams(max_tokens=max_tokens, temperature=body.temperature, top_k=body.top_k, top_p=body.top_p,
                          stop=stops, seed=body.seed, ignore_eos=body.ignore_eos, logprobs=logprobs)


async def encode(engine, texts: list[str], until: float) -> list[list[int]]:
    """Each prompt's ids (an empty prompt starts a fresh document); 400 when one fills the context."""
    try:
        encoded = [ids or [engine.eos_id] for ids in await tokenize(engine.encode, texts, until)]
    except BATCHER_ERRORS as e:
        raise translate(e) from None
    for ids in encoded:
        if len(ids) >= engine.block_size:
            raise ApiError(400, f"prompt is {len(ids)} tokens; the model's context is {engine.block_size}",
                           "invalid_request_error", param="prompt", code="context_length_exceeded")
    return encoded


def start(batcher, engine, encoded: list[list[int]], n: int, params: SamplingParams, until: float,
          stream: bool, max_choices: int) -> list[AsyncIterator[tuple]]:
    """`n` sequences per prompt, in OpenAI's choice order (prompt by prompt); choice j of a seeded request is
    seeded `seed + j`, so its choices differ and the same request gives the same choices. At most
    `max_choices` sequences per request (as many as its prompts may be)."""
    if n * len(encoded) > max_choices:
        raise ApiError(400, f"n x prompts = {n * len(encoded)}; at most {max_choices} choices per request",
                       "invalid_request_error", param="n")
    return [batcher.generate(ids, params if params.seed is None else dataclasses.replace(params, seed=params.seed + j),
                             min(params.max_tokens, engine.block_size - len(ids)), until, stream)
            for ids in encoded for j in range(n)]


async def respond(request, body: _Generation, streams: list[AsyncIterator[tuple]], frame: Chunks,
                  encoded: list[list[int]]) -> Response | list[Outcome]:
    """The server-sent events of a streamed request, else every choice's outcome (499 when the client left)."""
    if body.stream:
        firsts = await first_items(streams)
        with_usage = body.stream_options is not None and body.stream_options.include_usage
        count = (lambda n: usage(encoded, n)) if with_usage else None
        return StreamingResponse(events(streams, firsts, frame, count), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    try:
        return await until_disconnected(request, outcomes(streams))
    except ClientGone:
        return Response(status_code=499)  # nobody is listening any more


def usage(encoded: list[list[int]], completion_tokens: int) -> Usage:
    """Each prompt counted once however many choices it has (as OpenAI counts); every choice's tokens."""
    prompt_tokens = sum(map(len, encoded))
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)


def token_text(engine, token: int) -> str:
    return engine.token_bytes(token).decode("utf-8", "replace")


@dataclasses.dataclass
class Outcome:
    """One choice, generated to its end."""

    text: str
    finish_reason: str
    tokens: int
    logprobs: list[Logprob]


async def _outcome(stream: AsyncIterator[tuple]) -> Outcome:
    text, logprobs = [], []
    async for item in stream:
        if item[0] == "text":
            text.append(item[1])
        elif item[0] == "logprob":
            logprobs.append(item[1])
        else:
            return Outcome("".join(text), item[1], item[2], logprobs)
    raise RuntimeError("a sequence ended without its done item")


async def _all(work: Iterable[Awaitable]) -> list:
    """Every result, or the first failure with the others cancelled (a cancelled sequence leaves the batch)."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()


async def outcomes(streams: list[AsyncIterator[tuple]]) -> list[Outcome]:
    """Every choice to its end (the caller bounds it by the client's presence)."""
    try:
        return await _all(_outcome(s) for s in streams)
    except BATCHER_ERRORS as e:
        raise translate(e) from None


class Chunks(Protocol):
    """How one endpoint frames its stream: once per choice before any text `opening(index)` (None: nothing),
    `delta` for text with the log-probabilities of the tokens that made it, `end`, and `usage` last."""

    def opening(self, index: int) -> dict | None: ...

    def delta(self, index: int, text: str, logprobs: list[Logprob]) -> dict: ...

    def end(self, index: int, reason: str, logprobs: list[Logprob]) -> dict: ...

    def usage(self, usage: Usage) -> dict: ...


def sse(payload: dict) -> str:
    return "data: " + json.dumps(payload) + "\n\n"


async def first_items(streams: list[AsyncIterator[tuple]]) -> list[tuple]:
    """Each stream's first item, so errors before the first token keep their HTTP status."""
    firsts = []
    try:
        for s in streams:
            firsts.append(await anext(s))
    except BATCHER_ERRORS as e:
        for s in streams:
            await s.aclose()
        raise translate(e) from None
    return firsts


async def events(streams: list[AsyncIterator[tuple]], firsts: list[tuple], chunks: Chunks,
                 prompt_usage: Callable[[int], Usage] | None) -> AsyncIterator[str]:
    """The choices' items as server-sent events, interleaved as they come, then (with `prompt_usage`, which
    maps completion tokens to the request's usage) a usage chunk, then `[DONE]`."""
    queue: asyncio.Queue = asyncio.Queue()
    tasks = [asyncio.ensure_future(_pump(i, s, f, queue)) for i, (s, f) in enumerate(zip(streams, firsts))]
    pending: dict[int, list[Logprob]] = {i: [] for i in range(len(streams))}
    try:
        for i in range(len(streams)):
            opening = chunks.opening(i)
            if opening is not None:
                yield sse(opening)
        remaining, generated = len(tasks), 0
        while remaining:
            index, item = await queue.get()
            if item[0] == "logprob":
                pending[index].append(item[1])
            elif item[0] == "text":
                yield sse(chunks.delta(index, item[1], pending[index]))
                pending[index] = []
            elif item[0] == "done":
                remaining -= 1
                generated += item[2]
                yield sse(chunks.end(index, item[1], pending[index]))
            else:
                remaining -= 1
                yield sse({"error": item[1]})
        if prompt_usage is not None:
            yield sse(chunks.usage(prompt_usage(generated)))
        yield "data: [DONE]\n\n"
    finally:  # finished, or the client left and Starlette cancelled us: stop every sequence
        for t in tasks:
            t.cancel()


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
        queue.put_nowait((index, ("error", err.body())))
