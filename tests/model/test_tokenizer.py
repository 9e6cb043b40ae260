"""Byte-level BPE: any string round-trips, merges are learnt, specials never come from text."""

from __future__ import annotations

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
