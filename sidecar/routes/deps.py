"""What every route may depend on: the shared state, the API key check, the request's deadline, and the
request's work bounded by that deadline and by the client's presence."""

from __future__ import annotations

import asyncio
import hmac
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import NamedTuple, TypeVar

from edgewatch.sidecar.batcher import DeadlineExceeded
from edgewatch.sidecar.errors import ApiError
from edgewatch.sidecar.state import Sidecar
from fastapi import Request

T = TypeVar("T")
CHARS_PER_JOB = 16_384  # text tokenized per worker-thread job: tens of milliseconds at most
INLINE_CHARS = 256  # texts this short are tokenized on the event loop (tens of µs): a worker thread's two
# hand-offs cost more, and on a busy box each waits for a time slice


class ClientGone(Exception):
    """The client disconnected before its answer was ready: its work was cancelled, nobody needs a reply."""


async def sidecar(request: Request) -> Sidecar:  # async: FastAPI runs a sync dependency in a worker thread
    return request.app.state.sidecar


async def authorized(request: Request) -> Sidecar:  # async: see `sidecar`
    """The shared state, once the request's API key is checked (401 otherwise): what every /v1 route depends on,
    alone or through `call`."""
    sc = await sidecar(request)
    key = sc.settings.api_key
    if key is not None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
            raise ApiError(401, "missing or wrong API key (Authorization: Bearer <key>)", "authentication_error",
                           {"WWW-Authenticate": "Bearer"})
    return sc


class Call(NamedTuple):
    """What a /v1 route that runs inference depends on, as one dependency: FastAPI resolves every dependency of
    every request, and the state, the key check and the deadline as three (with the state under each) cost a
    completion ~90 µs more event-loop time."""

    sc: Sidecar
    until: float  # time.monotonic() by which the request's work must be done (`deadline`)


async def call(request: Request) -> Call:  # async: see `sidecar`
    sc = await authorized(request)
    return Call(sc, deadline(request, sc))


def require_model(asked: str | None, engine) -> None:
    """A request naming a model names the one served (404 `model_not_found` otherwise, as OpenAI answers)."""
    if asked is not None and asked != engine.name:
        raise ApiError(404, f"the model '{asked}' does not exist; this server serves '{engine.name}'",
                       "invalid_request_error", param="model", code="model_not_found")


def deadline(request: Request, sc: Sidecar) -> float:
    """time.monotonic() by which the request's work must be done: `--timeout`, shortened by X-Request-Timeout."""
    timeout = sc.settings.timeout
    asked = request.headers.get("x-request-timeout")
    if asked is not None:
        try:
            seconds = float(asked)
        except ValueError:
            seconds = math.nan
        if not (math.isfinite(seconds) and seconds > 0):
            raise ApiError(400, "X-Request-Timeout must be a positive, finite number of seconds",
                           "invalid_request_error")
        timeout = min(timeout, seconds)
    return time.monotonic() + timeout


async def tokenize(encode: Callable[[str], list[int]], texts: list[str], until: float) -> list[list[int]]:
    """`encode` each text in worker threads, off the event loop and the inference thread, a few texts
    (`CHARS_PER_JOB`) per job: a request that is cancelled (client gone) or passes its deadline stops at the
    next job, and a big request takes one worker at a time, so small ones are never queued behind it. A request
    of at most `INLINE_CHARS` characters is tokenized in place."""
    if sum(map(len, texts)) <= INLINE_CHARS:
        return [encode(text) for text in texts]
    out: list[list[int]] = []
    for job in _jobs(texts):
        left = until - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            out.extend(await asyncio.wait_for(asyncio.to_thread(list, map(encode, job)), left))  # map runs there
        except TimeoutError:
            raise DeadlineExceeded("deadline exceeded while tokenizing") from None
    return out


def _jobs(texts: list[str]) -> Iterator[list[str]]:
    """Consecutive texts, in groups of about `CHARS_PER_JOB` characters (a longer text alone)."""
    job, size = [], 0
    for text in texts:
        if job and size + len(text) > CHARS_PER_JOB:
            yield job
            job, size = [], 0
        job.append(text)
        size += len(text)
    if job:
        yield job


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work` unless the client hangs up first: then cancel it, which stops its tokenizing and takes its
    sequences out of the inference thread, and raise ClientGone."""
    task, watcher = asyncio.ensure_future(work), asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        task.cancel()  # a no-op once done
    if not task.done():
        raise ClientGone
    return task.result()


async def _disconnect(request: Request) -> None:
    """Return when the client hangs up. The body has been read, so the server's next message is
    `http.disconnect`, sent when the connection closes: waiting for it costs nothing while the work runs.
    (Polling `request.is_disconnected()` every 50 ms cost an anyio cancel scope per poll and woke the event
    loop, which then took the GIL from the inference thread, during every generation.)"""
    while (await request.receive())["type"] != "http.disconnect":
        pass
