"""Clients for the sidecar API: sync (`SidecarClient`) and async (`AsyncSidecarClient`).

URLs are `http://host:port` or `unix:///path.sock`. Idempotent calls (GETs,
classification) are retried with exponential backoff on connection errors, 429
and 502-504; completions are not (they cost a generation each). A circuit
breaker shared by both kinds of call turns a dead sidecar into an immediate
`SidecarUnavailable` instead of a timeout per call, and lets one trial request
through after `reset_after` seconds so the client recovers by itself.
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx

RETRY_STATUS = {429, 502, 503, 504}


class SidecarError(Exception):
    """The sidecar answered with an error (`status` and its error `type`)."""

    def __init__(self, message: str, status: int | None = None, type_: str | None = None):
        super().__init__(message)
        self.status, self.type = status, type_


class SidecarUnavailable(SidecarError):
    """Not reachable, too slow, not ready, or the circuit is open: callers degrade."""


class CircuitBreaker:
    """Closed → open after `failures` consecutive failures → half-open after `reset_after` s (one trial)."""

    def __init__(self, failures: int = 3, reset_after: float = 1.0):
        self.failures, self.reset_after = failures, reset_after
        self._lock = threading.Lock()
        self._count = 0
        self._opened_at: float | None = None
        self._trial = False

    @property
    def state(self) -> str:
        with self._lock:
            if self._opened_at is None:
                return "closed"
            return "half-open" if time.monotonic() - self._opened_at >= self.reset_after else "open"

    def allow(self) -> bool:
        with self._lock:
            if self._opened_at is None:
                return True
            if time.monotonic() - self._opened_at < self.reset_after or self._trial:
                return False
            self._trial = True  # exactly one caller probes the half-open circuit
            return True

    def success(self) -> None:
        with self._lock:
            self._count, self._opened_at, self._trial = 0, None, False

    def failure(self) -> None:
        with self._lock:
            self._count += 1
            if self._trial or self._count >= self.failures:
                self._opened_at, self._trial = time.monotonic(), False


def _transport_args(url: str) -> tuple[str, str | None]:
    """(base_url, unix socket path or None)."""
    if url.startswith("unix://"):
        path = url[len("unix://") :]
        if not path.startswith("/"):
            raise ValueError(f"sidecar url {url!r}: expected unix:///absolute/path.sock")
        return "http://sidecar", path
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"sidecar url {url!r}: expected http://host:port or unix:///path.sock")
    return url.rstrip("/"), None


def _error(resp: httpx.Response) -> SidecarError:
    try:
        err = resp.json()["error"]
        message, type_ = err["message"], err["type"]
    except Exception:  # noqa: BLE001 - not our error format (a proxy?)
        message, type_ = resp.text[:200], None
    cls = SidecarUnavailable if resp.status_code in RETRY_STATUS else SidecarError
    return cls(f"sidecar {resp.status_code}: {message}", resp.status_code, type_)


class _Base:
    def __init__(self, url: str, *, api_key: str | None, timeout: float, retries: int, backoff: float,
                 breaker: CircuitBreaker | None):
        self.url = url
        self.base_url, self.uds = _transport_args(url)
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.breaker = breaker or CircuitBreaker()

    def _delay(self, attempt: int, resp: httpx.Response | None) -> float:
        delay = self.backoff * 2**attempt
        if resp is not None and resp.headers.get("retry-after", "").isdigit():
            delay = max(delay, float(resp.headers["retry-after"]))
        return min(delay, self.timeout)

    def _check_open(self) -> None:
        if not self.breaker.allow():
            raise SidecarUnavailable(f"sidecar {self.url}: circuit open after repeated failures")

    def _outcome(self, resp: httpx.Response | None, exc: Exception | None):
        """Record success/failure; return the JSON body, or an exception and whether to retry."""
        if exc is not None:
            self.breaker.failure()
            return None, SidecarUnavailable(f"sidecar {self.url}: {type(exc).__name__}: {exc}"), True
        if resp.status_code < 400:
            self.breaker.success()
            return resp.json(), None, False
        err = _error(resp)
        if resp.status_code in RETRY_STATUS:
            self.breaker.failure()
            return None, err, True
        self.breaker.success()  # it answered: a 4xx is our request's fault, not the sidecar's health
        return None, err, False


class SidecarClient(_Base):
    def __init__(self, url: str = "http://127.0.0.1:8765", *, api_key: str | None = None, timeout: float = 2.0,
                 retries: int = 2, backoff: float = 0.05, breaker: CircuitBreaker | None = None):
        super().__init__(url, api_key=api_key, timeout=timeout, retries=retries, backoff=backoff, breaker=breaker)
        self._http = httpx.Client(base_url=self.base_url, headers=self.headers, timeout=timeout,
                                  transport=httpx.HTTPTransport(uds=self.uds) if self.uds else None)

    def _call(self, method: str, path: str, body: dict | None = None, *, idempotent: bool = True,
              timeout: float | None = None) -> dict:
        attempts = 1 + (self.retries if idempotent else 0)
        for attempt in range(attempts):
            self._check_open()
            resp = exc = None
            try:
                resp = self._http.request(method, path, json=body, timeout=timeout or self.timeout)
            except httpx.HTTPError as e:
                exc = e
            data, err, retry = self._outcome(resp, exc)
            if err is None:
                return data
            if not retry or attempt == attempts - 1:
                raise err
            time.sleep(self._delay(attempt, resp))
        raise AssertionError("unreachable")

    def health(self) -> dict:
        return self._call("GET", "/health")

    def ready(self) -> dict:
        return self._call("GET", "/ready")

    def models(self) -> dict:
        return self._call("GET", "/v1/models")

    def classify(self, texts: list[str], *, timeout: float | None = None) -> dict:
        return self._call("POST", "/v1/classify", {"texts": list(texts)}, timeout=timeout)

    def complete(self, prompt: str | list[str], **params) -> dict:
        return self._call("POST", "/v1/completions", {"prompt": prompt, **params}, idempotent=False)

    def close(self) -> None:
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncSidecarClient(_Base):
    def __init__(self, url: str = "http://127.0.0.1:8765", *, api_key: str | None = None, timeout: float = 2.0,
                 retries: int = 2, backoff: float = 0.05, breaker: CircuitBreaker | None = None):
        super().__init__(url, api_key=api_key, timeout=timeout, retries=retries, backoff=backoff, breaker=breaker)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self.headers, timeout=timeout,
                                       transport=httpx.AsyncHTTPTransport(uds=self.uds) if self.uds else None)

    async def _call(self, method: str, path: str, body: dict | None = None, *, idempotent: bool = True,
                    timeout: float | None = None) -> dict:
        attempts = 1 + (self.retries if idempotent else 0)
        for attempt in range(attempts):
            self._check_open()
            resp = exc = None
            try:
                resp = await self._http.request(method, path, json=body, timeout=timeout or self.timeout)
            except httpx.HTTPError as e:
                exc = e
            data, err, retry = self._outcome(resp, exc)
            if err is None:
                return data
            if not retry or attempt == attempts - 1:
                raise err
            await asyncio.sleep(self._delay(attempt, resp))
        raise AssertionError("unreachable")

    async def health(self) -> dict:
        return await self._call("GET", "/health")

    async def ready(self) -> dict:
        return await self._call("GET", "/ready")

    async def models(self) -> dict:
        return await self._call("GET", "/v1/models")

    async def classify(self, texts: list[str], *, timeout: float | None = None) -> dict:
        return await self._call("POST", "/v1/classify", {"texts": list(texts)}, timeout=timeout)

    async def complete(self, prompt: str | list[str], **params) -> dict:
        return await self._call("POST", "/v1/completions", {"prompt": prompt, **params}, idempotent=False)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.aclose()
