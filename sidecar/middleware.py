"""ASGI middleware: the request body's size and read-time limits, and per-request metrics."""

from __future__ import annotations

import asyncio
import time

from edgewatch.sidecar.errors import error_response
from edgewatch.sidecar.metrics import SidecarMetrics


class _TooLarge(Exception):
    pass


class BodyLimit:
    """413 for bodies above `limit` bytes, whether announced by Content-Length or streamed; 408 for a body
    that has not fully arrived `read_timeout` s after the request head (a slow client holds no worker)."""

    def __init__(self, app, limit: int, read_timeout: float):
        self.app, self.limit, self.read_timeout = app, limit, read_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        try:
            declared = dict(scope["headers"]).get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.limit:
                raise _TooLarge
            async with asyncio.timeout(self.read_timeout):
                body = await self._read(receive)
        except _TooLarge:
            resp = error_response(413, f"request body larger than {self.limit} bytes", "request_too_large")
            return await resp(scope, receive, send)
        except TimeoutError:
            resp = error_response(408, f"request body not received within {self.read_timeout:g} s",
                                  "request_timeout", {"Connection": "close"})
            return await resp(scope, receive, send)
        if body is None:  # the client left
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for http.disconnect

        await self.app(scope, replay, send)

    async def _read(self, receive) -> bytes | None:
        """The whole body, or None when the client disconnected first."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                raise _TooLarge
            if not message.get("more_body"):
                return b"".join(chunks)


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
