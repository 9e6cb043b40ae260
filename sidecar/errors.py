"""Every error is OpenAI-shaped, `{"error": {"message", "type", "param", "code"}}`, with the status the API
documents: OpenAI's clients read `param` and `code` (e.g. `openai.BadRequestError.param`)."""

from __future__ import annotations

import structlog
from edgewatch.sidecar.batcher import DeadlineExceeded, QueueFull, Stopped
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = structlog.get_logger("sidecar")
BATCHER_ERRORS = (QueueFull, DeadlineExceeded, Stopped)


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str, headers: dict | None = None, *,
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.headers = status, message, type_, headers
        self.param, self.code = param, code

    def body(self) -> dict:
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}


def unsupported(param: str, why: str = "not supported by this server") -> ApiError:
    """A field the server does not implement: refused, so a client never gets less than it asked for."""
    return ApiError(400, f"{param}: {why}", "invalid_request_error", param=param, code="unsupported_parameter")


def error_response(status: int, message: str, type_: str, headers: dict | None = None, *,
                   param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}},
                        status_code=status, headers=headers)


def translate(exc: Exception) -> ApiError:
    """The batcher's refusals as HTTP errors (429, 504, 503); anything else is re-raised."""
    if isinstance(exc, QueueFull):
        return ApiError(429, f"server busy: {exc}", "rate_limit_error", {"Retry-After": "1"})
    if isinstance(exc, DeadlineExceeded):
        return ApiError(504, str(exc), "timeout")
    if isinstance(exc, Stopped):
        return ApiError(503, str(exc), "not_ready", {"Retry-After": "1"})
    raise exc


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse({"error": exc.body()}, status_code=exc.status, headers=exc.headers)


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    if first.get("type") == "extra_forbidden":
        err = unsupported(where)
        return error_response(400, err.message, err.type, param=err.param, code=err.code)
    return error_response(400, f"{where or 'body'}: {first.get('msg', 'invalid request')}", "invalid_request_error",
                          param=where or None, code="invalid_value")


async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request_error")
    return error_response(exc.status_code, str(exc.detail), kind, getattr(exc, "headers", None))


async def _crash(request: Request, exc: Exception) -> JSONResponse:
    log.exception("request failed")
    return error_response(500, f"internal error: {type(exc).__name__}", "server_error")


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _crash)
