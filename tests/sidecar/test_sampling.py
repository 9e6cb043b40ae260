"""Sampling and streamed-text bookkeeping: pure functions, checked exhaustively where cheap."""

from __future__ import annotations

import numpy as np
from edgewatch.sidecar.sampling import (
    SamplingParams,
    TextTracker,
    find_stop,
    sample,
    stable_length,
    valid_unicode,
)
from hypothesis import given
from hypothesis import strategies as st

LOGITS = np.array([0.1, 3.0, 2.0, -1.0, 2.5], dtype=np.float32)


def draws(params: SamplingParams, n: int = 400) -> set[int]:
    rng = np.random.default_rng(params.seed)
    return {sample(LOGITS, params, rng) for _ in range(n)}


def test_greedy_is_argmax():
    assert draws(SamplingParams(temperature=0.0), 5) == {1}
    assert draws(SamplingParams(temperature=5e-324, top_p=5e-324, top_k=1), 5) == {1}  # found by the API fuzzer


def test_top_k_keeps_only_the_k_best():
    assert draws(SamplingParams(temperature=1.5, top_k=2, seed=1)) == {1, 4}


def test_top_p_keeps_the_smallest_nucleus():
    # softmax ≈ [.03, .49, .18, .01, .30]
    assert draws(SamplingParams(top_p=0.45, seed=2)) == {1}
    assert draws(SamplingParams(top_p=0.75, seed=2)) == {1, 4}


def test_same_seed_same_tokens_and_temperature_spreads():
    def run(seed):
        rng = np.random.default_rng(seed)
        return [sample(LOGITS, SamplingParams(seed=seed), rng) for _ in range(50)]

    assert run(7) == run(7)
    assert run(7) != run(8)
    assert len(draws(SamplingParams(temperature=2.0, seed=3))) == 5


def test_find_stop_earliest():
    assert find_stop("abc END x STOP", ("STOP", "END")) == 4
    assert find_stop("nothing", ("STOP",)) is None


@given(st.text(max_size=30), st.lists(st.text(min_size=1, max_size=4), max_size=3))
def test_stable_length_never_exposes_a_stop_prefix(text, stops):
    n = stable_length(text, tuple(stops))
    assert 0 <= n <= len(text)
    # no released character may start a stop sequence that later tokens could still complete
    for s in stops:
        for start in range(n):
            rest = text[start:]
            assert not (len(rest) < len(s) and s.startswith(rest))


def test_tracker_streams_text_and_cuts_at_stop():
    vocab = {1: "Hel", 2: "lo", 3: " wo", 4: "rld", 5: "\n\n", 6: "more"}
    tracker = TextTracker(lambda ids: "".join(vocab[i] for i in ids), SamplingParams(stop=("\n\n", "rld!")))
    out = [tracker.add(t) for t in (1, 2, 3, 4)]
    assert "".join(out) == "Hello wo"  # "rld" held back: it may become "rld!"
    assert not tracker.stopped
    assert tracker.add(5) == "rld"
    assert tracker.stopped and tracker.text == "Hello world"


@given(st.lists(st.integers(0, 5), max_size=20), st.lists(st.sampled_from(["ab", "b", "ca", "x"]), max_size=2))
def test_tracker_deltas_concatenate_to_the_final_text(ids, stops):
    vocab = "abcx y"
    tracker = TextTracker(lambda seq: "".join(vocab[i] for i in seq), SamplingParams(stop=tuple(stops)))
    parts = []
    for t in ids:
        parts.append(tracker.add(t))
        if tracker.stopped:
            break
    parts.append(tracker.flush())
    assert "".join(parts) == tracker.text
    assert find_stop(tracker.text, tuple(stops)) is None


@given(st.text())
def test_valid_unicode_always_encodes(text):
    clean = valid_unicode(text)
    clean.encode("utf-8")  # raises on a lone surrogate
    assert len(clean) >= len(text) or "\ufffd" in clean


def test_valid_unicode_replaces_lone_surrogates():
    assert valid_unicode("ok ✓") == "ok ✓"
    assert valid_unicode("a\udce9b").startswith("a\ufffd") and valid_unicode("a\udce9b").endswith("b")


def test_a_tracker_read_only_at_the_end_gives_the_same_text():
    """Non-streamed completions decode once at the end: the same text as token by token, split characters
    included (byte-level tokens that end mid-character)."""
    vocab = {1: b"caf", 2: b"\xc3", 3: b"\xa9 ", 4: b"ok"}
    decode = lambda ids: b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")  # noqa: E731
    ids = [1, 2, 3, 4, 2]
    streamed, once = TextTracker(decode, SamplingParams()), TextTracker(decode, SamplingParams(), incremental=False)
    parts = [streamed.add(t) for t in ids] + [streamed.flush()]
    assert [once.add(t) for t in ids] == [""] * len(ids)
    assert once.flush() == "".join(parts) == streamed.text == once.text
    assert TextTracker(decode, SamplingParams(stop=("é",)), incremental=False).incremental  # a stop needs the text
