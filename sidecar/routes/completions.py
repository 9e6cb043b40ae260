"""/v1/completions: OpenAI's completions, whole or streamed as server-sent events."""

from __future__ import annotations

import time
import uuid

from edgewatch.model.format.prompt import MAX_CHARS_PER_TOKEN
from edgewatch.sidecar.errors import ApiError, unsupported
from edgewatch.sidecar.routes import generation
from edgewatch.sidecar.routes.deps import Call, call
from edgewatch.sidecar.routes.generation import Logprob
from edgewatch.sidecar.schemas import (ERRORS, CompletionChoice, CompletionLogprobs, CompletionRequest,
                                       CompletionResponse, Usage)
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

router = APIRouter()
RESPONSES = ERRORS | {200: {
    "description": "a completion; with `stream`, server-sent events of partial completions ending in `data: [DONE]`",
    "content": {"text/event-stream": {}}}}
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions


@router.post("/v1/completions", responses=RESPONSES)
async def completions(body: CompletionRequest, request: Request, c: Call = Depends(call)) -> CompletionResponse:
    sc, until = c
    engine, batcher = sc.require_ready()
    generation.check(body, engine)
    if body.echo and body.logprobs is not None:
        raise unsupported("echo", "not supported together with logprobs (the prompt's log-probabilities)")
    prompts = _prompts(body, sc.settings.max_prompts, engine.block_size)
    params = generation.sampling(body, body.max_tokens or DEFAULT_MAX_TOKENS, body.logprobs)
    encoded = await generation.encode(engine, prompts, until)
    streams = generation.start(batcher, engine, encoded, body.n, params, until, body.stream,
                               sc.settings.max_prompts)
    echoes = [p if body.echo else "" for p in prompts for _ in range(body.n)]
    frame = _Frame(engine, f"cmpl-{uuid.uuid4().hex}", int(time.time()), echoes, body.logprobs is not None)
    outs = await generation.respond(request, body, streams, frame, encoded)
    if isinstance(outs, Response):
        return outs
    choices = [CompletionChoice(index=i, text=echoes[i] + o.text, finish_reason=o.finish_reason,
                                logprobs=frame.logprobs(i, o.logprobs)) for i, o in enumerate(outs)]
    return CompletionResponse(id=frame.id, created=frame.created, model=engine.name, choices=choices,
                              usage=generation.usage(encoded, sum(o.tokens for o in outs)))


def _prompts(body: CompletionRequest, max_prompts: int, block_size: int) -> list[str]:
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not prompts:
        raise ApiError(400, "prompt: must not be an empty list", "invalid_request_error", param="prompt")
    if len(prompts) > max_prompts:
        raise ApiError(413, f"at most {max_prompts} prompts per request", "request_too_large", param="prompt")
    for p in prompts:
        if len(p) > block_size * MAX_CHARS_PER_TOKEN:  # too long for sure: spare the encoding
            raise ApiError(400, f"prompt of {len(p)} characters exceeds the model's context of "
                                f"{block_size} tokens", "invalid_request_error", param="prompt",
                           code="context_length_exceeded")
    return prompts


class _Frame:
    """A completion's choices as OpenAI frames them: text, `logprobs` (tokens, their log-probabilities, the
    alternatives, offsets in the choice's text) and, streamed, `text_completion` chunks."""

    def __init__(self, engine, cid: str, created: int, echoes: list[str], logprobs: bool):
        self.engine, self.id, self.created, self.echoes, self.with_logprobs = engine, cid, created, echoes, logprobs
        self.offsets = [len(e) for e in echoes]  # where the next token's text starts, per choice

    def logprobs(self, index: int, entries: list[Logprob]) -> CompletionLogprobs | None:
        if not self.with_logprobs:
            return None
        tokens = [generation.token_text(self.engine, t) for t, _, _ in entries]
        offsets = []
        for token in tokens:
            offsets.append(self.offsets[index])
            self.offsets[index] += len(token)
        return CompletionLogprobs(
            tokens=tokens, token_logprobs=[lp for _, lp, _ in entries], text_offset=offsets,
            top_logprobs=[{generation.token_text(self.engine, t): lp for t, lp in top} for _, _, top in entries])

    def _chunk(self, index: int, text: str, reason: str | None, entries: list[Logprob]) -> dict:
        lp = self.logprobs(index, entries)
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.engine.name,
                "choices": [{"index": index, "text": text, "finish_reason": reason,
                             "logprobs": lp.model_dump() if lp else None}]}

    def opening(self, index: int) -> dict | None:
        return self._chunk(index, self.echoes[index], None, []) if self.echoes[index] else None

    def delta(self, index: int, text: str, logprobs: list[Logprob]) -> dict:
        return self._chunk(index, text, None, logprobs)

    def end(self, index: int, reason: str, logprobs: list[Logprob]) -> dict:
        return self._chunk(index, "", reason, logprobs)

    def usage(self, usage: Usage) -> dict:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.engine.name,
                "choices": [], "usage": usage.model_dump()}

