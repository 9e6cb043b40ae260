"""How a sentiment label is read off the language model. Torch-free; training and the sidecar share it.

Format: `normalise(text)` tokens, then `<|sentiment|>`, then one of three label
tokens, then `<|endoftext|>`. The label probabilities are the next-token logits
after `<|sentiment|>` restricted to the three label tokens, divided by a
calibration temperature (fitted on the validation split, stored in model.json)
and softmaxed. Dedicated label tokens make the read-off one position, one run.
"""

from __future__ import annotations

import re

import numpy as np
from edgewatch.model.format.tokenizer import EOT, Tokenizer

LABELS = ("bearish", "bullish", "neutral")  # index = the CSV label (0 bearish, 1 bullish, 2 neutral)
SENTIMENT = "<|sentiment|>"
LABEL_TOKENS = tuple(f"<|{label}|>" for label in LABELS)
SPECIAL_TOKENS = [EOT, SENTIMENT, *LABEL_TOKENS]
FORMAT = ("normalise(text) <|sentiment|> <|label|> <|endoftext|>; normalise = t.co links -> 'URL', whitespace "
          "collapsed, lower-cased when the model was trained so (prompt.lowercase)")

MAX_CHARS_PER_TOKEN = 64  # far above any BPE token of a small tweet vocabulary: a bound, not an estimate
_URL = re.compile(r"https?://\S+")
_SPACE = re.compile(r"\s+")


def normalise(text: str, lowercase: bool = False) -> str:
    """Links are random strings (t.co/...): one placeholder keeps tokens for words that carry sentiment.

    `lowercase`: headlines capitalise at will ("Upgrades", "UPGRADE"), which splits a word's few
    training examples over several token sequences; lower case carries no sentiment of its own.
    """
    text = _SPACE.sub(" ", _URL.sub("URL", text)).strip()
    return text.lower() if lowercase else text


def label_ids(tok: Tokenizer) -> list[int]:
    return [tok.special[name] for name in LABEL_TOKENS]


def classification_ids(tok: Tokenizer, text: str, block_size: int, lowercase: bool = False) -> list[int]:
    """Prompt ids ending in `<|sentiment|>`; text longer than the context is cut from the LEFT.

    Only the text's last `block_size * MAX_CHARS_PER_TOKEN` characters are tokenized: the tokens
    before them would be cut anyway, and the cost stays bounded by the context, not by the input."""
    if block_size < 2:
        return [tok.special[SENTIMENT]]
    tail = text[-block_size * MAX_CHARS_PER_TOKEN:]
    return tok.encode(normalise(tail, lowercase))[-(block_size - 1):] + [tok.special[SENTIMENT]]


def training_ids(tok: Tokenizer, text: str, label: int, block_size: int, lowercase: bool = False) -> list[int]:
    """The full training sequence: prompt, label token, end of text (fits block_size + 1 for shifting)."""
    return classification_ids(tok, text, block_size - 1, lowercase) + [tok.special[LABEL_TOKENS[label]], tok.eot_id]


def label_probs(logits: np.ndarray, ids: list[int], temperature: float = 1.0) -> np.ndarray:
    """[B, vocab] logits at `<|sentiment|>` -> [B, 3] calibrated label probabilities."""
    z = logits[:, ids].astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)
