"""Byte-level BPE: any string round-trips, merges are learnt, specials never come from text."""

from __future__ import annotations

import string

import pytest
from edgewatch.model.format.prompt import SPECIAL_TOKENS
from edgewatch.model.format.tokenizer import EOT, Tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

CORPUS = ["$AAPL upgraded to Buy at Citi", "$TSLA shares fall after recall", "Fed holds rates steady",
          "Ölpreis steigt — €100?", "日経平均が上昇"] * 20


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(CORPUS, vocab_size=400, special=SPECIAL_TOKENS)


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(codec=None, categories=None)))  # every code point, lone surrogates and NUL included
def test_round_trip_any_unicode(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


@pytest.mark.parametrize("text", ["", "\x00", "a\x00b", "\ud800", "x\udfffy", "💹📉", " \n\t ", "$AAPL $AAPL"])
def test_round_trip_edge_cases(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_merges_compress_training_text(tok):
    text = "$AAPL upgraded to Buy at Citi"
    assert len(tok.encode(text)) < len(text.encode()) / 2
    assert tok.vocab_size <= 400


def test_special_names_in_text_are_plain_text(tok):
    ids = tok.encode(f"a {EOT} b")
    assert tok.eot_id not in ids
    assert tok.decode(ids) == f"a {EOT} b"
    assert tok.decode([tok.eot_id]) == EOT and tok.decode([65, tok.eot_id], skip_special=True) == "A"


def test_save_load_identical(tok, tmp_path):
    tok.save(tmp_path / "t.json")
    again = Tokenizer.load(tmp_path / "t.json")
    assert again.encode("$TSLA shares fall — 日経") == tok.encode("$TSLA shares fall — 日経")
    assert again.special == tok.special


def test_decode_broken_utf8_and_bad_ids(tok):
    assert tok.decode([0xE2]) == "\ufffd"  # half a character, as generation can produce
    with pytest.raises(ValueError):
        tok.decode([tok.vocab_size])


def test_vocab_too_small():
    with pytest.raises(ValueError):
        Tokenizer.train(CORPUS, vocab_size=200, special=SPECIAL_TOKENS)


def _bpe_by_passes(tok: Tokenizer, piece: str) -> list[int]:
    """The textbook merge loop (every occurrence of the lowest-ranked pair per pass): the oracle for `_bpe`."""
    ids = list(piece.encode("utf-8", errors="surrogatepass"))
    while len(ids) > 1:
        best = min(zip(ids, ids[1:]), key=lambda p: tok.ranks.get(p, 1 << 30))
        if best not in tok.ranks:
            return ids
        out, i = [], 0
        while i < len(ids):
            if ids[i:i + 2] == list(best):
                out.append(256 + tok.ranks[best])
                i += 2
            else:
                out.append(ids[i])
                i += 1
        ids = out
    return ids


@settings(max_examples=300, deadline=None)
@given(st.text(st.sampled_from("aAPLTS$ upgrdeatoBuyCi€日経Ö"), max_size=400))
def test_heap_merges_equal_the_textbook_loop(tok, text):
    assert tok._bpe(text) == _bpe_by_passes(tok, text)


def test_long_text_without_spaces_costs_near_linear_time():
    import random
    import time

    rng = random.Random(7)
    words = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9))) for _ in range(3000)]
    tok = Tokenizer.train([" ".join(words)], vocab_size=1000, special=SPECIAL_TOKENS)  # merges of letters
    letters = "".join(rng.choice(string.ascii_lowercase) for _ in range(32_000))
    start = time.process_time()
    ids = tok.encode(letters)  # one pre-token of 32,000 letters: merging pass by pass took ~16 s
    assert time.process_time() - start < 1.5
    assert tok.decode(ids) == letters
