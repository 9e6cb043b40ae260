"""edgewatch.sidecar.engine.Engine on a tiny exported model: batching, padding and caches equal per-sequence runs."""

from __future__ import annotations

import numpy as np
import pytest
from edgewatch.sidecar.engine import RUN_MAX_TOKENS, Engine, length_groups
from edgewatch.sidecar.testing import without_decode_graph


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    """edgewatch.model.testing.tiny_model, built once for the sidecar tests (tests/sidecar/conftest.py)."""
    return tiny_model_dir


@pytest.fixture(scope="module")
def engine(model_dir) -> Engine:
    e = Engine(model_dir, device="cpu", threads=1)
    e.warmup()
    return e


def test_attributes(engine, model_dir):
    assert engine.provider == "CPUExecutionProvider"
    assert engine.labels == ["bearish", "bullish", "neutral"]
    assert engine.name == "tiny-nanogpt" and engine.meta["name"] == "tiny-nanogpt"
    assert engine.block_size == 80 and engine.eos_id == engine.tokenizer.eot_id


def test_classify_batch_equals_single(engine):
    texts = ["$ACME upgraded to Buy at Citi", "Globex misses earnings estimates https://t.co/x — €", "x" * 2000, ""]
    batch = engine.classify(texts)
    assert len(batch) == 4 and engine.classify([]) == []
    for text, got in zip(texts, batch):
        alone = engine.classify([text])[0]
        assert got["label"] == alone["label"] and set(got["scores"]) == set(engine.labels)
        assert sum(got["scores"].values()) == pytest.approx(1.0)
        assert got["confidence"] == pytest.approx(max(got["scores"].values()))
        for label in engine.labels:
            assert got["scores"][label] == pytest.approx(alone["scores"][label], abs=1e-5)


def test_length_groups_cover_every_prompt_with_little_padding():
    lengths = [27, 10, 71, 30, 12, 25, 26, 9] * 4  # tweet-like: mostly short, one long per eight
    groups = length_groups(lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        assert len(g) == 1 or len(g) * max(lengths[i] for i in g) <= RUN_MAX_TOKENS
    padded = sum(len(g) * max(lengths[i] for i in g) for g in groups)
    assert padded < 1.2 * sum(lengths) < 0.5 * len(lengths) * max(lengths)  # one padded run: 32 x 71
    assert length_groups([5] * 6) == [list(range(6))]  # equal lengths: one run
    assert length_groups([300, 300]) == [[0], [1]]  # over the run budget: alone
    assert length_groups([]) == []


def test_classify_in_length_groups_equals_alone(engine):
    texts = [("ACME " * k).strip() for k in (1, 30, 2, 12, 1, 3, 25, 4)]
    prompts = [engine.classification_prompt(t) for t in texts]
    assert len(length_groups([len(p) for p in prompts])) > 1
    batch = engine.label_scores(prompts)
    for prompt, row in zip(prompts, batch):
        assert row == pytest.approx(engine.label_scores([prompt])[0], abs=1e-5)


def test_prefill_batch_equals_single(engine):
    prompts = [engine.encode("$ACME shares jump"), engine.encode("Hooli files quarterly report today"), [5]]
    logits, caches = engine.prefill(prompts)
    assert logits.shape == (3, engine.vocab_size)
    for p, row, cache in zip(prompts, logits, caches):
        alone, (c,) = engine.prefill([p])
        np.testing.assert_allclose(row, alone[0], atol=1e-4)
        assert cache.length == c.length == len(p)


def greedy(engine, prompt: list[int], n: int) -> tuple[list[int], np.ndarray]:
    logits, caches = engine.prefill([prompt])
    out = []
    for _ in range(n):
        out.append(int(logits[0].argmax()))
        logits, caches = engine.decode_step([out[-1]], caches)
    return out, logits[0]


def test_decode_step_with_different_past_lengths(engine):
    """Sequences of different lengths, from different runs, joined into one step equal their solo runs."""
    a, b, c = engine.encode("$BOLT soars on deal"), engine.encode("Initech"), engine.encode("CEO interview with the board")
    la, ca = engine.prefill([a])
    lbc, cbc = engine.prefill([b, c])
    ta, tb, tc = int(la[0].argmax()), int(lbc[0].argmax()), int(lbc[1].argmax())
    _, ca = engine.decode_step([ta], ca)  # a is one step ahead: three different past lengths
    logits, caches = engine.decode_step([7, tb, tc], [ca[0], cbc[0], cbc[1]])
    assert [k.length for k in caches] == [len(a) + 2, len(b) + 1, len(c) + 1]
    for seq, row in zip([a + [ta, 7], b + [tb], c + [tc]], logits):
        solo, _ = engine.prefill([seq])
        np.testing.assert_allclose(row, solo[0], atol=1e-4)
    # the same caches stepped again as one batch (the fast path, presents fed back as they are)
    again, caches2 = engine.decode_step([1, 2, 3], caches)
    for seq, row in zip([a + [ta, 7, 1], b + [tb, 2], c + [tc, 3]], again):
        np.testing.assert_allclose(row, engine.prefill([seq])[0][0], atol=1e-4)
    assert caches2[1].arrays()[0].shape[1] == len(b) + 2  # padding is not part of a sequence's cache


def test_in_place_steps_keep_every_cache_meaning_what_it_did(engine):
    """The decode graph appends to its buffers in place: a cache stepped twice (two continuations of one
    prefix) and a cache left behind by later steps must still extend their own sequences."""
    a, b = engine.encode("$ACME upgraded to Buy"), engine.encode("Hooli files quarterly report")
    _, first = engine.prefill([a, b])
    _, one = engine.decode_step([5, 6], first)
    two, onetwo = engine.decode_step([7, 8], one)  # in place: the rows of `one` advance
    other, _ = engine.decode_step([9, 10], one)  # `one` again: copied out, `onetwo` untouched
    late, _ = engine.decode_step([11], [onetwo[1]])
    behind, _ = engine.decode_step([12, 13], first)  # two steps behind its buffers
    for seq, row in [(a + [5, 7], two[0]), (b + [6, 8], two[1]), (a + [5, 9], other[0]), (b + [6, 10], other[1]),
                     (b + [6, 8, 11], late[0]), (a + [12], behind[0]), (b + [13], behind[1])]:
        np.testing.assert_allclose(row, engine.prefill([seq])[0][0], atol=1e-4)


def test_a_model_without_decode_graph_steps_on_the_general_graph(engine, model_dir, tmp_path):
    """Models exported before the decode graph existed still generate, with the same numbers."""
    general = Engine(without_decode_graph(model_dir, tmp_path / "old"), device="cpu", threads=1)
    assert general._decode is None and engine._decode is not None
    prompts = [engine.encode("$WAYN cut to Sell"), engine.encode("Stark Industries beats earnings estimates")]
    (la, ca), (lb, cb) = engine.prefill(prompts), general.prefill(prompts)
    for _ in range(5):
        toks = [int(x) for x in la.argmax(1)]
        assert toks == [int(x) for x in lb.argmax(1)]
        (la, ca), (lb, cb) = engine.decode_step(toks, ca), general.decode_step(toks, cb)
        np.testing.assert_allclose(la, lb, atol=1e-4)


def test_batched_generation_equals_solo(engine):
    prompts = [engine.encode("$WAYN cut to Sell"), engine.encode("Stark Industries to present at Nomura conference")]
    solo = [greedy(engine, p, 10)[0] for p in prompts]
    logits, caches = engine.prefill(prompts)
    outs = [[], []]
    for _ in range(10):
        toks = [int(x) for x in logits.argmax(1)]
        for o, t in zip(outs, toks):
            o.append(t)
        logits, caches = engine.decode_step(toks, caches)
    assert outs == solo


def test_limits_and_errors(engine, model_dir):
    with pytest.raises(ValueError):
        engine.prefill([list(range(engine.block_size + 1))])
    with pytest.raises(ValueError):
        engine.prefill([[]])
    with pytest.raises(ValueError):
        engine.prefill([[engine.vocab_size]])
    _, caches = engine.prefill([[1] * engine.block_size])
    with pytest.raises(ValueError, match="context full"):
        engine.decode_step([1], caches)
    with pytest.raises(ValueError):
        engine.decode_step([1, 2], caches)
    with pytest.raises(ValueError):
        Engine(model_dir, device="tpu")
    with pytest.raises(FileNotFoundError):
        Engine(model_dir / "nowhere")
    with pytest.raises(FileNotFoundError, match="int8"):
        Engine(model_dir, int8=True)


def test_cuda_fails_loudly_without_gpu(model_dir):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(RuntimeError, match="cuda"):
        Engine(model_dir, device="cuda")
    assert Engine(model_dir, device="auto").provider == "CPUExecutionProvider"


def test_long_text_is_cut_from_the_left(engine):
    """Texts longer than the context that differ only at their start classify identically."""
    tail = " filler words" * 100 + " $ACME upgraded to Buy at Citi"
    a, b = engine.classify(["Globex plunges on probe" + tail, "Hooli soars on deal" + tail])
    assert len(engine.encode(tail)) > engine.block_size
    assert a["scores"] == pytest.approx(b["scores"], abs=1e-6)
