"""The sidecar's HTTP API (docs/reference/http-api.md): FastAPI on top of the batcher.

The model loads in a background thread at startup so `/health` answers at once
and `/ready` tells orchestration (systemd, the agent's doctor) when inference
can start. Every error is `{"error": {"message", "type"}}` with the status
docs/reference/http-api.md names; the OpenAPI description at /openapi.json documents them all.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Literal

import structlog
from edgewatch.sidecar.batcher import Batcher, DeadlineExceeded, QueueFull, Stopped
from edgewatch.sidecar.metrics import SidecarMetrics
from edgewatch.sidecar.sampling import SamplingParams
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = structlog.get_logger("sidecar")
MAX_CHARS_PER_TOKEN = 64  # far above any BPE token of a small tweet vocabulary: a bound, not an estimate


@dataclasses.dataclass
class Settings:
    model_dir: str | None = None  # None = the model shipped in the package
    device: str = "auto"  # auto | cuda | cpu
    int8: bool = False
    threads: int | None = None
    api_key: str | None = None  # Bearer key required on /v1/* when set
    max_batch: int = 16  # texts per classification run (why 16: sidecar.batcher)
    max_wait_ms: float = 1.0  # under concurrent load, how long a classification burst may gather
    max_gen_batch: int = 8  # sequences in the running decode batch
    max_queue: int = 256  # waiting requests before 429
    timeout: float = 30.0  # per-request deadline, seconds (X-Request-Timeout may shorten it)
    max_body_bytes: int = 1 << 20  # request bodies above this get 413
    max_texts: int = 256  # texts per classify request
    max_prompts: int = 16  # prompts per completions request


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.headers = status, message, type_, headers


def error_response(status: int, message: str, type_: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_}}, status_code=status, headers=headers)


# ---- request / response schemas ------------------------------------------------------------

_strict = ConfigDict(allow_inf_nan=False)


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


_ERRORS = {
    400: {"model": ErrorResponse, "description": "bad input"},
    401: {"model": ErrorResponse, "description": "missing or wrong API key"},
    413: {"model": ErrorResponse, "description": "request too large"},
    429: {"model": ErrorResponse, "description": "queue full; retry after Retry-After seconds"},
    503: {"model": ErrorResponse, "description": "model not loaded yet"},
    504: {"model": ErrorResponse, "description": "deadline exceeded"},
}


# ---- ASGI middleware -----------------------------------------------------------------------


class BodyLimit:
    """413 for bodies above the limit, whether announced by Content-Length or streamed."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        too_big = declared is not None and declared.isdigit() and int(declared) > self.limit
        chunks, size = [], 0
        while not too_big:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            too_big = size > self.limit
            if not message.get("more_body"):
                break
        if too_big:
            resp = error_response(413, f"request body larger than {self.limit} bytes", "request_too_large")
            return await resp(scope, receive, send)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for http.disconnect

        await self.app(scope, replay, send)


class RequestMetrics:
    """Count every response by endpoint and status, and time it (a stream until its last byte)."""

    def __init__(self, app, metrics: SidecarMetrics, endpoints: set[str]):
        self.app, self.metrics, self.endpoints = app, metrics, endpoints

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in self.endpoints else "other"
        status, start = 500, time.perf_counter()

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.observe_request(endpoint, status, time.perf_counter() - start)


# ---- the application -----------------------------------------------------------------------


def _default_engine_factory(settings: Settings):
    from edgewatch.sidecar.engine import Engine

    return Engine(settings.model_dir, device=settings.device, int8=settings.int8, threads=settings.threads)


class Sidecar:
    """What the routes share: the engine once loaded, the batcher, the metrics, the readiness state."""

    def __init__(self, settings: Settings, engine_factory, on_ready, on_load_failed):
        self.settings = settings
        self.engine_factory = engine_factory or (lambda: _default_engine_factory(settings))
        self.on_ready, self.on_load_failed = on_ready, on_load_failed
        self.registry = CollectorRegistry()
        self.metrics = SidecarMetrics(self.registry, lambda: self.batcher.depth if self.batcher else 0)
        self.engine = None
        self.batcher: Batcher | None = None
        self.load_error: str | None = None
        self.started = int(time.time())
        self._closed = threading.Event()

    def load(self) -> None:
        """Background thread: load and warm the model, then open for inference."""
        try:
            t0 = time.perf_counter()
            engine = self.engine_factory()
            engine.warmup()
            batcher = Batcher(
                engine,
                max_batch=self.settings.max_batch,
                max_wait=self.settings.max_wait_ms / 1000,
                max_queue=self.settings.max_queue,
                max_gen_batch=self.settings.max_gen_batch,
                stats=self.metrics.batcher_stats(),
            )
            if self._closed.is_set():
                return
            batcher.start()
            self.engine, self.batcher = engine, batcher
            self.metrics.set_model(engine.name, engine.provider)
            log.info("model ready", model=engine.name, provider=engine.provider, seconds=round(time.perf_counter() - t0, 3))
        except Exception as e:  # noqa: BLE001 - reported through /ready and on_load_failed
            self.load_error = f"{type(e).__name__}: {e}"
            log.error("model failed to load", error=self.load_error)
            if self.on_load_failed:
                self.on_load_failed(self.load_error)
            return
        if self.on_ready:
            self.on_ready(engine.name, engine.provider)

    def close(self) -> None:
        self._closed.set()
        if self.batcher:
            self.batcher.stop()

    def healthy(self) -> bool:
        """Loading, or serving with a live inference thread; False once loading failed or inference hung."""
        if self.batcher is None:
            return self.load_error is None
        return self.batcher.healthy()

    def require_ready(self):
        if self.batcher is None:
            state = f"model failed to load: {self.load_error}" if self.load_error else "model is loading"
            raise ApiError(503, state, "not_ready", {"Retry-After": "1"})
        return self.engine, self.batcher

    def deadline(self, request: Request) -> float:
        timeout = self.settings.timeout
        asked = request.headers.get("x-request-timeout")
        if asked is not None:
            try:
                timeout = min(timeout, float(asked))
            except ValueError:
                raise ApiError(400, "X-Request-Timeout must be a number of seconds", "invalid_request_error") from None
            if not timeout > 0:  # also rejects NaN
                raise ApiError(400, "X-Request-Timeout must be positive", "invalid_request_error")
        return time.monotonic() + timeout


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

    async def heartbeat():
        while True:
            await asyncio.sleep(heartbeat_interval)
            if sc.healthy():
                on_heartbeat()

    async def lifespan(app):
        threading.Thread(target=sc.load, name="sidecar-load", daemon=True).start()
        beating = asyncio.create_task(heartbeat()) if on_heartbeat else None
        yield
        if beating:
            beating.cancel()
        sc.close()

    app = FastAPI(
        title="Edgewatch sidecar",
        version="0.1.0",
        description="Serves the exported nanoGPT with ONNX Runtime: news sentiment and text completion.",
        lifespan=lifespan,
    )
    app.state.sidecar = sc

    async def authorize(request: Request) -> None:  # async: a sync dependency would hop to a thread pool
        if settings.api_key is None:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), settings.api_key.encode()):
            raise ApiError(401, "missing or wrong API key (Authorization: Bearer <key>)", "authentication_error",
                           {"WWW-Authenticate": "Bearer"})

    auth = [Depends(authorize)]

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.type, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error_response(400, f"{where or 'body'}: {first.get('msg', 'invalid request')}", "invalid_request_error")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request_error")
        return error_response(exc.status_code, str(exc.detail), kind, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request, exc: Exception):
        log.exception("request failed")
        return error_response(500, f"internal error: {type(exc).__name__}", "server_error")

    def translate(exc: Exception) -> ApiError:
        if isinstance(exc, QueueFull):
            return ApiError(429, f"server busy: {exc}", "rate_limit_error", {"Retry-After": "1"})
        if isinstance(exc, DeadlineExceeded):
            return ApiError(504, str(exc), "timeout")
        if isinstance(exc, Stopped):
            return ApiError(503, str(exc), "not_ready", {"Retry-After": "1"})
        raise exc

    @app.get("/health", summary="200 while the process is up")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready", summary="200 once the model is loaded and warmed", responses={503: _ERRORS[503]})
    async def ready() -> dict:
        engine, _ = sc.require_ready()
        return {"status": "ready", "model": engine.name, "provider": engine.provider, "labels": list(engine.labels)}

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(sc.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=auth, responses={k: _ERRORS[k] for k in (401, 503)})
    async def models() -> ModelList:
        engine, _ = sc.require_ready()
        return ModelList(data=[ModelCard(id=engine.name, created=sc.started)])

    @app.post("/v1/classify", dependencies=auth, responses=_ERRORS, response_model=ClassifyResponse)
    async def classify(body: ClassifyRequest, request: Request) -> JSONResponse:
        engine, batcher = sc.require_ready()
        if len(body.texts) > settings.max_texts:
            raise ApiError(413, f"at most {settings.max_texts} texts per request", "request_too_large")
        try:
            results = await batcher.classify(body.texts, sc.deadline(request))
        except (QueueFull, DeadlineExceeded, Stopped) as e:
            raise translate(e) from None
        # the engine's dicts already have the documented shape: skip re-validating them on the hot path
        return JSONResponse({"model": engine.name, "results": results})

    @app.post("/v1/completions", dependencies=auth, responses=_ERRORS | {200: {
        "description": "a completion; with `stream`, server-sent events of partial completions ending in `data: [DONE]`",
        "content": {"text/event-stream": {}}}})
    async def completions(body: CompletionRequest, request: Request) -> CompletionResponse:
        engine, batcher = sc.require_ready()
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            raise ApiError(400, "prompt: must not be an empty list", "invalid_request_error")
        if len(prompts) > settings.max_prompts:
            raise ApiError(413, f"at most {settings.max_prompts} prompts per request", "request_too_large")
        stops = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        if len(stops) > 4 or not all(stops):
            raise ApiError(400, "stop: at most 4 non-empty strings", "invalid_request_error")
        params = SamplingParams(max_tokens=body.max_tokens, temperature=body.temperature, top_k=body.top_k,
                                top_p=body.top_p, stop=stops, seed=body.seed, ignore_eos=body.ignore_eos)
        encoded = []
        for p in prompts:
            if len(p) > engine.block_size * MAX_CHARS_PER_TOKEN:  # too long for sure: spare the loop the encoding
                raise ApiError(400, f"prompt of {len(p)} characters exceeds the model's context of "
                                    f"{engine.block_size} tokens", "invalid_request_error")
            ids = engine.encode(p) or [engine.eos_id]  # an empty prompt starts a fresh document
            if len(ids) >= engine.block_size:
                raise ApiError(400, f"prompt is {len(ids)} tokens; the model's context is {engine.block_size}",
                               "invalid_request_error")
            encoded.append(ids)
        deadline = sc.deadline(request)
        streams = [batcher.generate(ids, params, min(body.max_tokens, engine.block_size - len(ids)), deadline)
                   for ids in encoded]
        cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            return await _stream(engine.name, cid, created, streams, request)
        return await _collect(engine.name, cid, created, encoded, streams, request)

    async def _first(stream):
        try:
            return await anext(stream)
        except (QueueFull, DeadlineExceeded, Stopped) as e:
            raise translate(e) from None

    async def _collect(model, cid, created, encoded, streams, request: Request):
        async def run(stream):
            text, item = [], await _first(stream)
            while item[0] != "done":
                text.append(item[1])
                try:
                    item = await anext(stream)
                except (DeadlineExceeded, Stopped) as e:
                    raise translate(e) from None
            return "".join(text), item[1], item[2]

        async def client_gone():
            while not await request.is_disconnected():
                await asyncio.sleep(0.05)

        tasks = [asyncio.ensure_future(run(s)) for s in streams]
        watcher = asyncio.ensure_future(client_gone())
        try:
            waiting = {*tasks, watcher}
            while not all(t.done() for t in tasks):
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if watcher in done or any(t.exception() for t in done if t is not watcher):
                    break
        finally:  # a cancelled task closes its generator, which cancels the sequence
            for t in (*tasks, watcher):
                t.cancel()
        failed = [t.exception() for t in tasks if t.done() and not t.cancelled() and t.exception()]
        if failed:
            raise failed[0]
        if not all(t.done() and not t.cancelled() for t in tasks):
            return Response(status_code=499)  # nobody is listening any more
        outs = [t.result() for t in tasks]
        choices = [CompletionChoice(index=i, text=t, finish_reason=r) for i, (t, r, _) in enumerate(outs)]
        n_prompt = sum(map(len, encoded))
        n_out = sum(n for _, _, n in outs)
        return CompletionResponse(id=cid, created=created, model=model, choices=choices,
                                  usage=Usage(prompt_tokens=n_prompt, completion_tokens=n_out,
                                              total_tokens=n_prompt + n_out))

    async def _stream(model, cid, created, streams, request: Request):
        firsts = []
        try:
            for s in streams:  # errors before the first token keep their HTTP status
                firsts.append(await _first(s))
        except ApiError:
            for s in streams:
                await s.aclose()
            raise

        def chunk(payload: dict) -> str:
            return "data: " + json.dumps(payload) + "\n\n"

        def choice(index, text, reason):
            return chunk({"id": cid, "object": "text_completion", "created": created, "model": model,
                          "choices": [{"index": index, "text": text, "finish_reason": reason, "logprobs": None}]})

        async def pump(index, stream, item, queue: asyncio.Queue):
            try:
                while True:
                    queue.put_nowait((index, item))
                    if item[0] == "done":
                        return
                    item = await anext(stream)
            except (DeadlineExceeded, Stopped) as e:
                err = translate(e)
                queue.put_nowait((index, ("error", {"message": err.message, "type": err.type})))

        async def events():
            queue: asyncio.Queue = asyncio.Queue()
            tasks = [asyncio.ensure_future(pump(i, s, f, queue)) for i, (s, f) in enumerate(zip(streams, firsts))]
            try:
                remaining = len(tasks)
                while remaining:
                    index, item = await queue.get()
                    if item[0] == "text":
                        yield choice(index, item[1], None)
                        continue
                    remaining -= 1
                    yield choice(index, "", item[1]) if item[0] == "done" else chunk({"error": item[1]})
                yield "data: [DONE]\n\n"
            finally:  # finished, or the client left and Starlette cancelled us: stop every sequence
                for t in tasks:
                    t.cancel()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    endpoints = {r.path for r in app.routes}
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=sc.metrics, endpoints=endpoints)  # outermost: sees 413s too
    return app
