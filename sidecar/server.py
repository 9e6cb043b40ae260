"""uvicorn for the sidecar: a connection cap below the descriptor limit, and read timeouts for slow clients.

uvicorn has a keep-alive timeout but none for a request that is still arriving, and its
`limit_concurrency` only counts a connection once its request head is complete: clients that
send a byte at a time would each hold a descriptor forever and, past the process's limit
(the unit's LimitNOFILE), stop every other client. Here a request head must arrive within
`read_timeout` seconds of the connection (or of the previous response), else the connection
gets 408 and is closed; its body has as long again (`middleware.BodyLimit`). At
`max_connections`, a new connection takes the place of the one that has waited longest for
its request head (idle or slow: a real request's head arrives in one packet); when every
connection is busy with a request, the new one gets 503.
"""

from __future__ import annotations

import resource
import time

import structlog
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = structlog.get_logger("sidecar")
RESERVED_DESCRIPTORS = 64  # the model's files, ONNX Runtime, the listening socket, logs, the event loop


class _Guarded(HttpToolsProtocol):
    """HttpToolsProtocol with a deadline for each request head and a cap on open connections."""

    max_connections: int = 512
    read_timeout: float = 10.0
    _head_timer = None
    waiting_since: float | None = None  # when it began to wait for a request head; None while serving one

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.max_connections and not self._evict_idlest():
            self._refuse(b"503 Service Unavailable")
            return
        self._await_head()

    def on_headers_complete(self) -> None:
        self._stop_waiting()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.cycle.response_complete:  # not serving a pipelined request
            self._await_head()

    def connection_lost(self, exc) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        self._stop_waiting()
        self.waiting_since = time.monotonic()
        self._head_timer = self.loop.call_later(self.read_timeout, self._refuse, b"408 Request Timeout")

    def _stop_waiting(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self.waiting_since = None

    def _evict_idlest(self) -> bool:
        waiting = [c for c in self.connections
                   if c is not self and isinstance(c, _Guarded) and c.waiting_since is not None]
        if not waiting:
            return False
        min(waiting, key=lambda c: c.waiting_since)._refuse(b"408 Request Timeout")
        return True

    def _refuse(self, status: bytes) -> None:
        """Answer `status` with no body and close: the client learns why, and the descriptor is freed."""
        self._stop_waiting()
        if not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            self.transport.close()
        self.connections.discard(self)  # a closing connection leaves room at once


def connection_cap(requested: int) -> int:
    """`requested`, lowered to fit the process's descriptor limit with room for what the sidecar itself opens."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return requested
    return max(1, min(requested, soft - RESERVED_DESCRIPTORS))


def uvicorn_config(app: FastAPI, *, log_level: str = "info", **where) -> uvicorn.Config:
    """uvicorn's settings for the app (`where`: host and port, or uds), from the app's Settings.

    log_config=None: uvicorn's loggers propagate to the root logger that `common.logs` renders as JSON."""
    settings = app.state.sidecar.settings
    cap = connection_cap(settings.max_connections)
    if cap < settings.max_connections:
        log.warning("connection cap lowered to fit the descriptor limit", max_connections=cap,
                    requested=settings.max_connections)
    protocol = type("GuardedHttpToolsProtocol", (_Guarded,),
                    {"max_connections": cap, "read_timeout": settings.read_timeout})
    return uvicorn.Config(app, **where, http=protocol, timeout_keep_alive=settings.keep_alive, log_config=None,
                          log_level=log_level, access_log=False, lifespan="on", timeout_graceful_shutdown=5)
