"""The HTTP API's request and response bodies, and the error statuses the routes document.

Request fields are strict: `"stream": "yes"`, `"max_tokens": "5"` or `true` for a number are
refused (400), never coerced, so a client's mistake shows at once instead of as a surprising run.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

_strict = ConfigDict(strict=True, allow_inf_nan=False)


class ErrorBody(BaseModel):
    message: str
    type: str


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


class CompletionRequest(BaseModel):
    model_config = _strict
    prompt: str | list[str]
    model: str | None = None
    max_tokens: int = Field(16, ge=1, le=100_000)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_k: int = Field(0, ge=0, description="0 = no top-k cut")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool = False
    ignore_eos: bool = Field(False, description="keep generating past the end-of-text token")


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None


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
    413: {"model": ErrorResponse, "description": "request too large"},
    429: {"model": ErrorResponse, "description": "queue full; retry after Retry-After seconds"},
    503: {"model": ErrorResponse, "description": "model not loaded yet"},
    504: {"model": ErrorResponse, "description": "deadline exceeded"},
}
