"""Greedy text from the server (ONNX, KV cache, continuous batching) equals the PyTorch model's."""

from __future__ import annotations

import httpx
import pytest
from edgewatch.sidecar.testing import wait_ready

torch = pytest.importorskip("torch")


def test_greedy_completions_match_pytorch(tiny_model_dir, serve):
    from edgewatch.model.export import load_checkpoint, torch_greedy

    model, tok, _ = load_checkpoint(tiny_model_dir.parent / "run" / "ckpt.pt")
    prompts = ["$ACME upgraded", "Hooli shares", "€ Initech"]
    n = 40
    with serve(tiny_model_dir, max_gen_batch=2) as s, httpx.Client(base_url=s.url, timeout=60) as http:
        wait_ready(s.url)
        # three prompts, a decode batch of two: sequences join and leave the running batch mid-way
        body = {"prompt": prompts, "max_tokens": n, "temperature": 0, "ignore_eos": True}
        got = [c["text"] for c in http.post("/v1/completions", json=body).json()["choices"]]
    for prompt, text in zip(prompts, got):
        expected = tok.decode(torch_greedy(model, tok.encode(prompt), n))
        assert text == expected.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
