"""What one client can cost the others: work bounded by the context and the deadline, cancelled when the
client leaves; slow clients that cannot hold the server's descriptors; strict input; no CDN pages."""

from __future__ import annotations

import asyncio
import random
import socket
import string
import time

import httpx
import pytest
from edgewatch.sidecar.routes import probes
from edgewatch.sidecar.state import Settings, Sidecar
from edgewatch.sidecar.testing import SidecarProcess, wait_ready
from fastapi import FastAPI

from .test_server import metric


def _letters(n: int) -> str:
    rng = random.Random(3)
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(n))


async def test_a_megabyte_of_letters_does_not_stop_other_clients(serve, tiny_model_dir):
    with serve(tiny_model_dir) as s:
        wait_ready(s.url)
        async with httpx.AsyncClient(base_url=s.url, timeout=20) as http:
            huge = asyncio.ensure_future(http.post("/v1/classify", json={"texts": [_letters(1_000_000)]}))
            await asyncio.sleep(0.3)  # the huge one is being read and tokenized
            start = time.monotonic()
            normal = await http.post("/v1/classify", json={"texts": ["$ACME upgraded to Buy"]})
            waited = time.monotonic() - start
            assert normal.status_code == 200 and waited < 1.5, (normal.status_code, waited)
            assert (await huge).status_code == 200  # only its end is tokenized: the context is all it can use


@pytest.mark.parametrize("leave", ["client gone", "deadline"])
def test_classification_work_stops_when_its_request_ends(serve, tiny_model_dir, leave):
    """40 texts in batches of 2 at 0.1 s each: 2 s of inference, stopped within a batch or two of the end."""
    with serve(tiny_model_dir, classify_delay=0.1, max_batch=2) as s, httpx.Client(base_url=s.url, timeout=10) as http:
        wait_ready(s.url)
        before = metric(http, "sidecar_batch_size_count", kind="classify")
        body = {"texts": [f"text {i}" for i in range(40)]}
        if leave == "client gone":
            with pytest.raises(httpx.ReadTimeout):
                http.post("/v1/classify", json=body, timeout=0.35)
        else:
            r = http.post("/v1/classify", json=body, headers={"X-Request-Timeout": "0.35"})
            assert r.status_code == 504
        time.sleep(2.5)  # long enough for all 20 batches, had they gone on
        batches = metric(http, "sidecar_batch_size_count", kind="classify") - before
        assert batches <= 8, batches
        assert metric(http, "sidecar_queue_depth") == 0
        assert http.post("/v1/classify", json={"texts": ["after"]}).status_code == 200


def _slow_client(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: sidecar\r\nX-Slow: ")  # then a byte at a time, forever
    return sock


def _trickle(socks: list[socket.socket], byte: bytes = b"a") -> int:
    """One more byte on each socket; returns how many the server has closed."""
    closed = 0
    for sock in socks:
        try:
            sock.sendall(byte)
        except OSError:
            closed += 1
    return closed


def test_slow_clients_cannot_hold_the_descriptors(tiny_model_dir):
    """200 clients sending a byte at a time, against a process limited to 192 descriptors (the unit's
    LimitNOFILE, scaled down): a normal request is still answered at once."""
    with SidecarProcess(tiny_model_dir, max_files=192) as proc:
        socks = []
        try:
            for _ in range(200):
                socks.append(_slow_client(proc.port))
                if len(socks) % 20 == 0:
                    _trickle(socks)
            with httpx.Client(base_url=proc.url, timeout=3) as http:
                for _ in range(3):
                    _trickle(socks)
                    start = time.monotonic()
                    r = http.post("/v1/classify", json={"texts": ["still served"]}, headers={"Connection": "close"})
                    assert r.status_code == 200 and time.monotonic() - start < 1.5
        finally:
            for sock in socks:
                sock.close()


def test_a_request_head_that_does_not_arrive_in_time_is_closed(tiny_model_dir):
    with SidecarProcess(tiny_model_dir, "--read-timeout", "1", "--keep-alive", "1") as proc:
        slow = [_slow_client(proc.port) for _ in range(5)]
        for _ in range(10):
            time.sleep(0.2)
            _trickle(slow)
        time.sleep(0.5)
        answers = []
        for sock in slow:
            sock.settimeout(2)
            try:
                answers.append(sock.recv(100))
            except OSError:
                answers.append(b"")
            sock.close()
        assert all(a.startswith(b"HTTP/1.1 408") for a in answers), answers


def test_docs_pages_are_off_and_the_openapi_description_stays(serve, tiny_model_dir):
    with serve(tiny_model_dir) as s, httpx.Client(base_url=s.url) as http:
        for page in ("/docs", "/redoc", "/docs/oauth2-redirect"):
            assert http.get(page).status_code == 404, page  # Swagger UI and ReDoc load from a CDN
        assert "/v1/classify" in http.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/completions", {"prompt": "x", "stream": "yes"}, "stream"),
        ("/v1/completions", {"prompt": "x", "max_tokens": "5"}, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "max_tokens": True}, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "seed": 1.0}, "seed"),
        ("/v1/completions", {"prompt": "x", "temperature": "0.5"}, "temperature"),
        ("/v1/completions", {"prompt": "x", "ignore_eos": 1}, "ignore_eos"),
        ("/v1/classify", {"texts": [1]}, "texts"),
    ],
)
def test_strict_types_are_refused_not_coerced(serve, tiny_model_dir, path, body, field):
    with serve(tiny_model_dir) as s, httpx.Client(base_url=s.url, timeout=10) as http:
        wait_ready(s.url)
        r = http.post(path, json=body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["type"] == "invalid_request_error" and field in r.json()["error"]["message"]


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "-1", "0", "soon"])
def test_request_timeout_header_must_be_positive_and_finite(serve, tiny_model_dir, value):
    with serve(tiny_model_dir) as s, httpx.Client(base_url=s.url, timeout=10) as http:
        wait_ready(s.url)
        r = http.post("/v1/classify", json={"texts": ["x"]}, headers={"X-Request-Timeout": value})
        assert r.status_code == 400 and "X-Request-Timeout" in r.json()["error"]["message"]


async def test_a_router_works_on_its_own():
    """Each router needs only `app.state.sidecar`: here the probes, with no model loaded."""
    app = FastAPI()
    app.state.sidecar = Sidecar(Settings(), engine_factory=None, on_ready=None, on_load_failed=None)
    app.include_router(probes.router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sidecar") as http:
        assert (await http.get("/health")).json() == {"status": "ok"}
        assert "sidecar_ready 0.0" in (await http.get("/metrics")).text
        with pytest.raises(Exception, match="model is loading"):
            await http.get("/ready")  # ApiError: the app's error handlers (errors.install) turn it into 503
