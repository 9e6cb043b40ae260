"""/v1/chat/completions: OpenAI's chat completions on a model that was never taught to chat.

The model continues financial tweets (it was trained on `text <|sentiment|> <|label|> <|endoftext|>`), so a
conversation is rendered as the one thing it knows: the text of the last `user` message, as plain text, which
the reply continues. System and developer messages and earlier turns are accepted and not shown to the model
(it cannot follow instructions); the template is in docs/reference/http-api.md.
"""

from __future__ import annotations

import time
import uuid

from edgewatch.model.format.prompt import MAX_CHARS_PER_TOKEN
from edgewatch.sidecar.errors import ApiError
from edgewatch.sidecar.routes import generation
from edgewatch.sidecar.routes.completions import RESPONSES
from edgewatch.sidecar.routes.deps import Call, call
from edgewatch.sidecar.routes.generation import Logprob
from edgewatch.sidecar.schemas import (AssistantMessage, ChatChoice, ChatCompletionRequest, ChatCompletionResponse,
                                       ChatLogprobs, ChatMessage, TokenLogprob, TopLogprob, Usage)
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

router = APIRouter()


@router.post("/v1/chat/completions", responses=RESPONSES)
async def chat_completions(body: ChatCompletionRequest, request: Request,
                           c: Call = Depends(call)) -> ChatCompletionResponse:
    sc, until = c
    engine, batcher = sc.require_ready()
    generation.check(body, engine)
    prompt = render(body.messages)
    if len(prompt) > engine.block_size * MAX_CHARS_PER_TOKEN:  # too long for sure: spare the encoding
        raise ApiError(400, f"the last user message ({len(prompt)} characters) exceeds the model's context of "
                            f"{engine.block_size} tokens", "invalid_request_error", param="messages",
                       code="context_length_exceeded")
    top = body.top_logprobs if body.top_logprobs is not None else 0
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(400, "top_logprobs: needs logprobs: true", "invalid_request_error", param="top_logprobs")
    # without a limit a reply runs to its end token or the context (the model ends headline-length text itself)
    params = generation.sampling(body, body.max_completion_tokens or body.max_tokens or engine.block_size,
                                 top if body.logprobs else None)
    encoded = await generation.encode(engine, [prompt], until)
    streams = generation.start(batcher, engine, encoded, body.n, params, until, body.stream,
                               sc.settings.max_prompts)
    frame = _Frame(engine, f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), body.logprobs)
    outs = await generation.respond(request, body, streams, frame, encoded)
    if isinstance(outs, Response):
        return outs
    choices = [ChatChoice(index=i, message=AssistantMessage(content=o.text), finish_reason=o.finish_reason,
                          logprobs=frame.logprobs(o.logprobs)) for i, o in enumerate(outs)]
    return ChatCompletionResponse(id=frame.id, created=frame.created, model=engine.name, choices=choices,
                                  usage=generation.usage(encoded, sum(o.tokens for o in outs)))


def render(messages: list[ChatMessage]) -> str:
    """The prompt: the last user message's text (its text parts joined by newlines)."""
    for m in reversed(messages):
        if m.role == "user":
            content = m.content or ""
            return content if isinstance(content, str) else "\n".join(part.text for part in content)
    raise ApiError(400, "messages: needs a message with role 'user' (the text the reply continues)",
                   "invalid_request_error", param="messages")


class _Frame:
    """Chat choices as OpenAI frames them: `logprobs.content` per token and, streamed, `chat.completion.chunk`s
    whose first delta per choice names the role."""

    def __init__(self, engine, cid: str, created: int, with_logprobs: bool):
        self.engine, self.id, self.created, self.with_logprobs = engine, cid, created, with_logprobs

    def _top(self, token: int, logprob: float) -> TopLogprob:
        piece = self.engine.token_bytes(token)
        return TopLogprob(token=piece.decode("utf-8", "replace"), logprob=logprob, bytes=list(piece))

    def logprobs(self, entries: list[Logprob]) -> ChatLogprobs | None:
        if not self.with_logprobs:
            return None
        return ChatLogprobs(content=[TokenLogprob(**self._top(t, lp).model_dump(),
                                                  top_logprobs=[self._top(a, alp) for a, alp in top])
                                     for t, lp, top in entries])

    def _chunk(self, index: int, delta: dict, reason: str | None, entries: list[Logprob]) -> dict:
        lp = self.logprobs(entries)
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.engine.name,
                "choices": [{"index": index, "delta": delta, "finish_reason": reason,
                             "logprobs": lp.model_dump() if lp else None}]}

    def opening(self, index: int) -> dict:
        return self._chunk(index, {"role": "assistant", "content": ""}, None, [])

    def delta(self, index: int, text: str, logprobs: list[Logprob]) -> dict:
        return self._chunk(index, {"content": text}, None, logprobs)

    def end(self, index: int, reason: str, logprobs: list[Logprob]) -> dict:
        return self._chunk(index, {}, reason, logprobs)

    def usage(self, usage: Usage) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.engine.name,
                "choices": [], "usage": usage.model_dump()}
