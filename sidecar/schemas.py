"""The HTTP API's request and response bodies, and the error statuses the routes document.

Request fields are strict: `"stream": "yes"`, `"max_tokens": "5"` or `true` for a number are
refused (400), never coerced, so a client's mistake shows at once instead of as a surprising run. The
OpenAI-compatible requests also refuse fields they do not know (OpenAI's `best_of`, `logit_bias`, `tools`, …):
a client that asked for something the server does not do gets a 400 naming it, not a quiet 200 without it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_strict = ConfigDict(strict=True, allow_inf_nan=False)
_openai = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")
MAX_N = 16  # choices per prompt (n); a request's n x prompts is bounded by the server's max_prompts


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class ClassifyRequest(BaseModel):
    model_config = _strict
    texts: list[str] = Field(min_length=1, description="texts to classify; one result each, in order")
    model: str | None = None


class ClassifyResult(BaseModel):
    label: str
    confidence: float
    scores: dict[str, float]


class ClassifyResponse(BaseModel):
    model: str
    results: list[ClassifyResult]


class StreamOptions(BaseModel):
    model_config = _openai
    include_usage: bool = Field(False, description="a last chunk with `usage` and no choices before `[DONE]`")


class _Generation(BaseModel):
    """What completions and chat completions share: sampling, stops, choices, streaming."""

    model_config = _openai
    model: str | None = Field(None, description="the served model's id (GET /v1/models); another gives 404")

    @model_validator(mode="before")
    @classmethod
    def _null_is_unset(cls, data):
        """`"field": null` means the field's default, as OpenAI reads it (some clients send every field)."""
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data

    max_tokens: int | None = Field(None, ge=1, le=100_000, description="default 16")
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_k: int = Field(0, ge=0, description="0 = no top-k cut")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=MAX_N, description="choices per prompt")
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = Field(False, description="keep generating past the end-of-text token")
    presence_penalty: float = Field(0.0, description="only 0 (no penalty) is supported")
    frequency_penalty: float = Field(0.0, description="only 0 (no penalty) is supported")


class CompletionRequest(_Generation):
    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=20, description="log-probabilities of the chosen and this many "
                                                                  "most likely tokens at each step")
    echo: bool = Field(False, description="the prompt before each choice's text")


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: CompletionLogprobs | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class TextPart(BaseModel):
    model_config = _openai
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = _openai
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None


class ChatCompletionRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=100_000, description="max_tokens' newer name")
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]
    refusal: None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: ChatLogprobs | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "edgewatch"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


ERRORS = {
    400: {"model": ErrorResponse, "description": "bad input"},
    401: {"model": ErrorResponse, "description": "missing or wrong API key"},
    408: {"model": ErrorResponse, "description": "the body did not arrive within the read timeout"},
    404: {"model": ErrorResponse, "description": "no such model (code `model_not_found`)"},
    413: {"model": ErrorResponse, "description": "request too large"},
    429: {"model": ErrorResponse, "description": "queue full; retry after Retry-After seconds"},
    503: {"model": ErrorResponse, "description": "model not loaded yet"},
    504: {"model": ErrorResponse, "description": "deadline exceeded"},
}
