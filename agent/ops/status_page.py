"""The status page: a read-only web view of the agent, served beside /metrics on `metrics.listen`.

`/status` is one static HTML page (uPlot for the charts, vendored under
`static/`, no build step) that reads JSON from `/status/api/...` and follows the
event log live over server-sent events (`/status/api/events`, resumable with
`Last-Event-ID`). The data comes from a `Source` (the event log read-only, the
reading ring, the capture files), so nothing here touches the csp engine.
Live streams are capped (`MAX_STREAMS`) and each ends after `STREAM_SECONDS`
(the browser reconnects where it left off), so open tabs cannot pile up threads.
"""

from __future__ import annotations

import json
import mimetypes
import threading
import time
import typing
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs

STATIC = Path(__file__).with_name("static")
MAX_STREAMS = 8  # concurrent live event streams
STREAM_SECONDS = 300.0  # one stream's life before the browser reconnects (with Last-Event-ID)
POLL_SECONDS = 0.5  # how often a stream looks for new events in the log
KEEPALIVE_SECONDS = 15.0  # a comment line this often, so a gone client is noticed
BACKLOG = 50  # events a new stream starts with
BATCH = 500  # events per poll at most
DEFAULT_WINDOW = timedelta(hours=1)
CSP = "default-src 'self'; frame-ancestors 'none'"  # the page's own files only: no inline script, no framing


class Source(typing.Protocol):
    """What the page reads (`edgewatch.agent.eventlog.views.StatusViews`)."""

    def fleet(self) -> list[dict]: ...
    def recent_events(self, after_id: int | None, limit: int) -> list[dict]: ...
    def sensor(self, sensor_id: str, window: timedelta) -> dict: ...
    def symbols(self) -> list[str]: ...
    def symbol(self, symbol: str, window: timedelta) -> dict: ...
    def close(self) -> None: ...


class _HttpError(Exception):
    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


class StatusPage:
    """WSGI app for every path under `/status`; `close()` ends the live streams."""

    def __init__(self, source: Source):
        self.source = source
        self.static = {p.relative_to(STATIC).as_posix(): p for p in STATIC.rglob("*") if p.is_file()}
        self._streams = threading.BoundedSemaphore(MAX_STREAMS)
        self._closed = threading.Event()

    def close(self) -> None:
        """End the live streams and release the source (the service calls it as it stops)."""
        self._closed.set()
        self.source.close()

    def __call__(self, environ: dict, start_response: Callable) -> typing.Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        try:
            if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
                raise _HttpError("405 Method Not Allowed", "the status page is read-only")
            if path in ("/status", "/status/"):
                return self._file(start_response, "index.html")
            if path.startswith("/status/static/"):
                return self._file(start_response, path[len("/status/static/"):])
            if path == "/status/api/events":
                return self._stream(environ, start_response, query)
            return self._json(start_response, self._api(path, query))
        except _HttpError as e:
            return _reply(start_response, e.status, "application/json", json.dumps({"error": str(e)}).encode())

    def _api(self, path: str, query: dict) -> object:
        window = _window(query)
        if path == "/status/api/fleet":
            return {"sensors": self.source.fleet()}
        if path == "/status/api/symbols":
            return {"symbols": self.source.symbols()}
        for prefix, view in (("/status/api/sensor/", self.source.sensor), ("/status/api/symbol/", self.source.symbol)):
            if path.startswith(prefix) and len(path) > len(prefix):
                return view(path[len(prefix):], window)  # PATH_INFO is already %-decoded
        raise _HttpError("404 Not Found", f"no such page: {path}")

    def _file(self, start_response: Callable, name: str) -> list[bytes]:
        path = self.static.get(name)
        if path is None:
            raise _HttpError("404 Not Found", f"no such file: {name}")
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return _reply(start_response, "200 OK", ctype, path.read_bytes())

    def _json(self, start_response: Callable, body: object) -> list[bytes]:
        return _reply(start_response, "200 OK", "application/json", json.dumps(body, default=str).encode())

    def _stream(self, environ: dict, start_response: Callable, query: dict) -> Iterator[bytes]:
        if not self._streams.acquire(blocking=False):
            raise _HttpError("503 Service Unavailable", f"too many live streams (at most {MAX_STREAMS})")
        after = _int(environ.get("HTTP_LAST_EVENT_ID") or query.get("after"))
        start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-store"),
                                  ("X-Accel-Buffering", "no")])
        return self._events(after)

    def _events(self, after: int | None) -> Iterator[bytes]:
        """SSE frames, one per logged event (`id:` = its log id); ends after STREAM_SECONDS."""
        try:
            yield b"retry: 1000\n\n"
            end = time.monotonic() + STREAM_SECONDS
            quiet_since = time.monotonic()
            limit = BACKLOG if after is None else BATCH
            while not self._closed.is_set() and time.monotonic() < end:
                rows = self.source.recent_events(after, limit)
                limit = BATCH
                if rows:
                    after = rows[-1]["id"]
                    quiet_since = time.monotonic()
                    yield b"".join(b"id: %d\ndata: %s\n\n" % (e["id"], json.dumps(e, default=str).encode())
                                   for e in rows)
                    if len(rows) == BATCH:
                        continue
                elif after is None:
                    after = 0
                elif time.monotonic() - quiet_since >= KEEPALIVE_SECONDS:
                    quiet_since = time.monotonic()
                    yield b": keep-alive\n\n"
                self._closed.wait(POLL_SECONDS)
        finally:
            self._streams.release()


def _reply(start_response: Callable, status: str, ctype: str, body: bytes) -> list[bytes]:
    start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body))), ("Cache-Control", "no-store"),
                            ("X-Content-Type-Options", "nosniff"), ("Content-Security-Policy", CSP)])
    return [body]


def _int(text: str | None) -> int | None:
    if text is None or text == "":
        return None
    if not text.isdigit():
        raise _HttpError("400 Bad Request", f"expected an event id, got {text[:40]!r}")
    return int(text)


def _window(query: dict) -> timedelta:
    """`?minutes=N` (default 60), the chart's time window."""
    text = query.get("minutes")
    if text is None:
        return DEFAULT_WINDOW
    try:
        minutes = float(text)
    except ValueError:
        minutes = -1.0
    if not 0 < minutes <= 1440:
        raise _HttpError("400 Bad Request", f"minutes: expected a number in (0, 1440], got {text[:40]!r}")
    return timedelta(minutes=minutes)
