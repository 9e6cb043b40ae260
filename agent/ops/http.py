"""The agent's Prometheus and health endpoint (`metrics.listen`), on a small thread.

`/metrics` is prometheus_client's own WSGI app over the agent's registry;
`/health` answers 200 only while the caller's health check passes (for the
agent: the engine heartbeat is fresh), so a load balancer or a human with curl
sees a hung graph the same way the systemd watchdog does.
"""

from __future__ import annotations

import json
import socket
import threading
import typing
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from edgewatch.agent.config import ConfigError
from prometheus_client import CollectorRegistry, make_wsgi_app

HealthFn = typing.Callable[[], "bool | dict"]


def parse_listen(listen: str, key: str = "metrics.listen") -> tuple[str, int] | None:
    """`host:port` or `[v6]:port` -> (host, port); empty -> None (endpoint off)."""
    if not listen.strip():
        return None
    host, sep, port = listen.strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{key}: expected host:port, got {listen!r}")
    return host, int(port)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - scrapes every few seconds are not news
        pass


class MetricsServer:
    """A running endpoint; `close()` stops it (the service calls it on shutdown)."""

    def __init__(self, server: WSGIServer):
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return host, port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def app(registry: CollectorRegistry, health_fn: HealthFn, status_page: typing.Callable | None = None) -> typing.Callable:
    """WSGI app: /health from `health_fn` (bool, or a dict whose "ok" decides), /status/... from the
    `status_page` app when there is one, everything else /metrics."""
    metrics = make_wsgi_app(registry)

    def wsgi(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        if status_page is not None and (path == "/status" or path.startswith("/status/")):
            return status_page(environ, start_response)
        if path != "/health":
            return metrics(environ, start_response)
        try:
            result = health_fn()
        except Exception as e:  # noqa: BLE001 - a failing check means unhealthy, never a dead thread
            result = {"ok": False, "error": repr(e)}
        body = dict(result) if isinstance(result, dict) else {"ok": bool(result)}
        ok = bool(body.get("ok"))
        body["status"] = "ok" if ok else "unhealthy"
        status = "200 OK" if ok else "503 Service Unavailable"
        start_response(status, [("Content-Type", "application/json"), ("Cache-Control", "no-store")])
        return [json.dumps(body, default=str).encode()]

    return wsgi


def serve(listen: str, registry: CollectorRegistry, health_fn: HealthFn,
          status_page: typing.Callable | None = None) -> MetricsServer | None:
    """Start the endpoint on `listen` (see `parse_listen`), with the status page when given; None when off."""
    address = parse_listen(listen)
    if address is None:
        return None
    host, port = address
    server_cls = _Server6 if ":" in host else _Server
    try:
        server = make_server(host, port, app(registry, health_fn, status_page), server_class=server_cls, handler_class=_QuietHandler)
    except OSError as e:
        raise ConfigError(f"metrics.listen: cannot listen on {listen}: {e.strerror}") from None
    return MetricsServer(server)
