"""The real server (uvicorn, TCP and Unix socket) on real exported models: every endpoint and error status."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest
from edgewatch.sidecar.metrics import SidecarMetrics
from edgewatch.sidecar.testing import wait_ready
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

LABELS = {"bearish", "bullish", "neutral"}


@pytest.fixture(scope="module")
def server(any_model_dir, serve):
    with serve(any_model_dir, max_body_bytes=64 * 1024, max_texts=64) as s:
        wait_ready(s.url)
        yield s


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def metric(http, name: str, **labels) -> float:
    total = 0.0
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def test_health_ready_models(http):
    assert http.get("/health").json() == {"status": "ok"}
    ready = http.get("/ready").json()
    assert ready["provider"] == "CPUExecutionProvider" and ready["model"]
    models = http.get("/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == ready["model"]
    assert "/v1/completions" in http.get("/openapi.json").json()["paths"]


def test_classify(http):
    texts = ["$ACME upgraded to Buy at Citi", "Initech shares fall after weak guidance", "", "ünïcødé ✓ \U0001f680"]
    body = http.post("/v1/classify", json={"texts": texts}).json()
    assert len(body["results"]) == len(texts)
    for r in body["results"]:
        assert r["label"] in LABELS and set(r["scores"]) == LABELS
        assert abs(sum(r["scores"].values()) - 1) < 1e-4 and r["confidence"] == max(r["scores"].values())
    # batching does not change results: each text alone gives the same scores
    alone = http.post("/v1/classify", json={"texts": texts[:1]}).json()["results"][0]
    assert alone["scores"] == pytest.approx(body["results"][0]["scores"], abs=1e-5)


def test_completions_greedy_seeded_stop_and_usage(http):
    greedy = {"prompt": "$ACME", "max_tokens": 12, "temperature": 0, "ignore_eos": True}
    a = http.post("/v1/completions", json=greedy).json()
    b = http.post("/v1/completions", json=greedy).json()
    assert a["choices"][0]["text"] == b["choices"][0]["text"]
    assert a["choices"][0]["finish_reason"] == "length" and a["usage"]["completion_tokens"] == 12
    assert a["object"] == "text_completion" and a["usage"]["total_tokens"] == a["usage"]["prompt_tokens"] + 12

    sampled = {"prompt": ["Hooli", "$BOLT"], "max_tokens": 16, "temperature": 1.0, "top_k": 20, "top_p": 0.9,
               "seed": 42, "ignore_eos": True}
    s1, s2 = (http.post("/v1/completions", json=sampled).json() for _ in range(2))
    assert [c["text"] for c in s1["choices"]] == [c["text"] for c in s2["choices"]]
    assert [c["index"] for c in s1["choices"]] == [0, 1]

    text = a["choices"][0]["text"]
    stop = text[3:5] if len(text.strip()) >= 5 else None
    if stop:
        cut = http.post("/v1/completions", json=greedy | {"stop": [stop]}).json()["choices"][0]
        assert cut["finish_reason"] == "stop" and cut["text"] == text[: text.index(stop)]


def test_streaming_equals_non_streaming(http):
    req = {"prompt": "Globex", "max_tokens": 20, "temperature": 0, "ignore_eos": True}
    full = http.post("/v1/completions", json=req).json()["choices"][0]["text"]
    chunks, done = [], False
    with http.stream("POST", "/v1/completions", json=req | {"stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if not line:
                continue
            assert line.startswith("data: ")
            if line == "data: [DONE]":
                done = True
                continue
            chunks.append(json.loads(line[6:])["choices"][0])
    assert done and chunks[-1]["finish_reason"] == "length"
    assert "".join(c["text"] for c in chunks) == full


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/v1/classify", {"texts": []}, "texts"),
        ("/v1/classify", {"texts": "not a list"}, "texts"),
        ("/v1/classify", {}, "texts"),
        ("/v1/completions", {"prompt": "x", "temperature": -1}, "temperature"),
        ("/v1/completions", {"prompt": "x", "top_p": 0}, "top_p"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ("/v1/completions", {"prompt": []}, "prompt"),
        ("/v1/completions", {"prompt": "word " * 5000}, "context"),
    ],
)
def test_bad_input_400(http, path, body, needle):
    r = http.post(path, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error" and needle in r.json()["error"]["message"]


def test_not_json_400_and_unknown_404(http):
    r = http.post("/v1/classify", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    assert http.get("/v2/nothing").json()["error"]["type"] == "not_found"


def test_too_large_413(http):
    r = http.post("/v1/classify", json={"texts": ["x" * 70_000]})
    assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"
    r = http.post("/v1/classify", json={"texts": ["a"] * 65})
    assert r.status_code == 413
    # a chunked body without Content-Length is counted as it streams
    r = http.post("/v1/classify", content=iter([b'{"texts": ["' + b"y" * 40_000, b"z" * 40_000 + b'"]}']))
    assert r.status_code == 413


def test_metrics_parse(http):
    http.post("/v1/classify", json={"texts": ["metrics"]})
    http.post("/v1/completions", json={"prompt": "m", "max_tokens": 3, "ignore_eos": True})
    families = {f.name: f for f in text_string_to_metric_families(http.get("/metrics").text)}
    for name in ("sidecar_requests", "sidecar_request_latency_seconds", "sidecar_queue_depth",
                 "sidecar_batch_size", "sidecar_tokens_generated", "sidecar_model_info"):
        assert name in families, name
    assert metric(http, "sidecar_requests_total", endpoint="/v1/classify", status="200") >= 1
    assert metric(http, "sidecar_tokens_generated_total") >= 3
    assert metric(http, "sidecar_batch_size_count", kind="classify") >= 1
    assert metric(http, "sidecar_batch_size_count", kind="prefill") >= 1
    assert metric(http, "sidecar_batch_size_count", kind="decode") >= 2
    info = families["sidecar_model_info"].samples[0].labels
    assert info["provider"] == "CPUExecutionProvider"


def test_batch_size_histogram():
    """The inference thread's lock-free counts read as the Histogram they replace: cumulative buckets, count, sum."""
    registry = CollectorRegistry()
    stats = SidecarMetrics(registry, lambda: 0).batcher_stats()
    for kind, size in [("decode", 1)] * 3 + [("decode", 3), ("classify", 16), ("classify", 200)]:
        stats.batch(kind, size)
    samples = {(s.name, s.labels["kind"], s.labels.get("le")): s.value
               for s in next(f for f in text_string_to_metric_families(generate_latest(registry).decode())
                             if f.name == "sidecar_batch_size").samples}
    assert [samples["sidecar_batch_size_bucket", "decode", le] for le in ("1.0", "2.0", "4.0", "+Inf")] == [3, 3, 4, 4]
    assert samples["sidecar_batch_size_count", "decode", None] == 4
    assert samples["sidecar_batch_size_sum", "decode", None] == 6
    assert samples["sidecar_batch_size_bucket", "classify", "128.0"] == 1  # 200 counts only under +Inf
    assert samples["sidecar_batch_size_bucket", "classify", "+Inf"] == 2
    assert samples["sidecar_batch_size_count", "classify", None] == 2
    assert samples["sidecar_batch_size_count", "prefill", None] == 0


def test_unix_socket(serve, tiny_model_dir, tmp_path):
    from edgewatch.sidecar.client import SidecarClient

    sock = str(tmp_path / "sidecar.sock")
    with serve(tiny_model_dir, uds=sock) as s:
        wait_ready(s.url)
        with SidecarClient(s.url) as c:
            assert c.ready()["model"] == "tiny-nanogpt"
            assert c.classify(["over a unix socket"])["results"][0]["label"] in LABELS
            assert c.complete("x", max_tokens=2, ignore_eos=True)["usage"]["completion_tokens"] == 2


def test_ready_503_until_loaded_and_warm(serve, tiny_model_dir):
    gate, readied = threading.Event(), []
    with serve(tiny_model_dir, gate=gate, on_ready=lambda model, provider: readied.append((model, provider))) as s:
        with httpx.Client(base_url=s.url) as http:
            assert http.get("/health").status_code == 200  # at once, while the model loads
            r = http.get("/ready")
            assert r.status_code == 503 and r.json()["error"]["type"] == "not_ready"
            r = http.post("/v1/classify", json={"texts": ["early"]})
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert not readied
            gate.set()
            assert wait_ready(s.url, timeout=30)["model"] == "tiny-nanogpt"
            assert readied == [("tiny-nanogpt", "CPUExecutionProvider")]


def test_api_key_401(serve, tiny_model_dir):
    with serve(tiny_model_dir, api_key="s3cret") as s, httpx.Client(base_url=s.url) as http:
        wait_ready(s.url)
        body = {"texts": ["locked"]}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            r = http.post("/v1/classify", json=body, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert r.json()["error"]["type"] == "authentication_error"
        # every /v1 route, this one's and any added later, takes the key through its dependency
        v1 = [(method, path) for path, ops in http.get("/openapi.json").json()["paths"].items()
              if path.startswith("/v1/") for method in ops]
        assert len(v1) >= 4
        for method, path in v1:
            assert http.request(method, path, json={}).status_code == 401, (method, path)
        assert http.post("/v1/classify", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert http.get("/health").status_code == 200 and http.get("/ready").status_code == 200


def test_deadline_504(serve, tiny_model_dir):
    with serve(tiny_model_dir, step_delay=0.02, timeout=0.3) as s, httpx.Client(base_url=s.url) as http:
        wait_ready(s.url)
        r = http.post("/v1/completions", json={"prompt": "slow", "max_tokens": 60, "ignore_eos": True})
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"
        r = http.post("/v1/classify", json={"texts": ["x"]}, headers={"X-Request-Timeout": "0.000001"})
        assert r.status_code == 504
        assert http.post("/v1/classify", json={"texts": ["x"]}).status_code == 200


async def test_flood_429_with_retry_after(serve, tiny_model_dir):
    with serve(tiny_model_dir, step_delay=0.01, max_gen_batch=1, max_queue=2) as s:
        wait_ready(s.url)
        async with httpx.AsyncClient(base_url=s.url, timeout=30) as http:
            body = {"prompt": "flood", "max_tokens": 15, "ignore_eos": True}
            answers = await asyncio.gather(*(http.post("/v1/completions", json=body) for _ in range(12)))
            codes = sorted(r.status_code for r in answers)
            assert set(codes) == {200, 429} and codes.count(200) >= 2, codes  # at least the queued ones
            busy = next(r for r in answers if r.status_code == 429)
            assert busy.headers["retry-after"] == "1" and busy.json()["error"]["type"] == "rate_limit_error"
            # the queue drains: the server answers normally afterwards
            assert (await http.post("/v1/completions", json=body)).status_code == 200


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_cancels_generation(serve, tiny_model_dir, stream):
    with serve(tiny_model_dir, step_delay=0.02) as s, httpx.Client(base_url=s.url, timeout=30) as http:
        wait_ready(s.url)
        body = {"prompt": "bye", "max_tokens": 70, "ignore_eos": True, "stream": stream}
        before = metric(http, "sidecar_tokens_generated_total")
        if stream:
            with http.stream("POST", "/v1/completions", json=body) as r:
                next(r.iter_lines())  # the first token arrived; now hang up
        else:
            with pytest.raises(httpx.ReadTimeout):
                http.post("/v1/completions", json=body, timeout=0.3)
        deadline = time.monotonic() + 5
        while metric(http, "sidecar_queue_depth") > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metric(http, "sidecar_queue_depth") == 0  # the sequence left the decode batch...
        assert metric(http, "sidecar_tokens_generated_total") - before < 70  # ...before it had finished


def test_heartbeat_only_while_inference_is_alive(serve, tiny_model_dir):
    beats = []
    with serve(tiny_model_dir, on_heartbeat=lambda: beats.append(time.monotonic()), heartbeat_interval=0.05) as s:
        wait_ready(s.url)
        time.sleep(0.3)
        assert len(beats) >= 3  # loading and serving both count as healthy
        s.server.config.app.state.sidecar.batcher.stop()  # the inference thread is gone
        time.sleep(0.15)
        stopped = len(beats)
        time.sleep(0.3)
        assert len(beats) == stopped  # no more WATCHDOG=1: systemd restarts the service
