"""Completions of headline-length text end by themselves (finish_reason "stop"), as the model was trained."""

from __future__ import annotations

import httpx
import pytest
from edgewatch.agent.testing.simulator import HEADLINES
from edgewatch.sidecar.testing import wait_ready


@pytest.fixture(scope="module")
def shipped_server(shipped_dir, serve):
    with serve(shipped_dir) as s:
        wait_ready(s.url)
        yield s


def test_greedy_completions_of_unseen_headline_prefixes_stop_within_64_tokens(shipped_server):
    # the simulator's headlines were written for this project: none is in the model's training data
    prefixes = [" ".join(t.format(sym="ACME").split()[:k]) for t, _ in HEADLINES for k in (2, 3, 4)]
    reasons = []
    with httpx.Client(base_url=shipped_server.url, timeout=30) as c:
        for prefix in prefixes:
            r = c.post("/v1/completions", json={"prompt": prefix, "max_tokens": 64, "temperature": 0})
            assert r.status_code == 200, r.text
            choice = r.json()["choices"][0]
            reasons.append(choice["finish_reason"])
            assert "<|" not in choice["text"]  # the end tokens are never text
    assert reasons.count("stop") >= 0.9 * len(reasons), reasons


def test_ignore_eos_generates_to_the_limit(shipped_server):
    body = {"prompt": "ACME declares", "max_tokens": 16, "temperature": 0, "ignore_eos": True}
    r = httpx.post(f"{shipped_server.url}/v1/completions", json=body, timeout=30).json()
    assert r["choices"][0]["finish_reason"] == "length" and r["usage"]["completion_tokens"] == 16
