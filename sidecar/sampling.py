"""Turning next-token logits into tokens and tokens into text, one request at a time.

Each request owns its RNG (seeded when asked) so concurrent requests in one
decode batch never disturb each other's randomness: the same seed gives the
same text whatever else the server is doing.
"""

from __future__ import annotations

import dataclasses

import numpy as np

GREEDY_BELOW = 1e-4  # temperatures this small are greedy (dividing by them overflows float64)


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = no top-k cut
    top_p: float = 1.0  # 1 = no nucleus cut
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # end-of-text is then an ordinary token (vLLM's meaning)
    logprobs: int | None = None  # report each token's log-probability and this many alternatives' (None: off)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator | None) -> int:
    """One token id from a [vocab] logit vector: greedy (`rng` unused, may be None), or temperature + top-k +
    top-p."""
    if params.greedy:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / params.temperature
    if 0 < params.top_k < z.shape[0]:
        kth = np.partition(z, -params.top_k)[-params.top_k]
        z[z < kth] = -np.inf
    z -= z.max()
    probs = np.exp(z)
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs)
        cum = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cum, params.top_p)) + 1]  # smallest set reaching top_p
        kept = np.zeros_like(probs)
        kept[keep] = probs[keep]
        probs = kept / kept.sum()
    return int(rng.choice(probs.shape[0], p=probs))


def token_logprobs(logits: np.ndarray, token: int, top: int) -> tuple[int, float, list[tuple[int, float]]]:
    """(token, its log-probability, the `top` most likely tokens with theirs), under the model's own
    distribution (before temperature and cuts, as OpenAI reports them)."""
    z = logits.astype(np.float64)
    logp = z - (z.max() + np.log(np.exp(z - z.max()).sum()))
    best = np.argpartition(-logp, top)[:top] if 0 < top < logp.shape[0] else np.arange(logp.shape[0])[:top]
    best = best[np.argsort(-logp[best])]
    return token, float(logp[token]), [(int(i), float(logp[i])) for i in best]


def find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Index where the earliest stop sequence starts, None when none occurs."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def stable_length(text: str, stops: tuple[str, ...]) -> int:
    """How much of `text` can be streamed now: hold back an incomplete UTF-8 tail and any suffix
    that could still grow into a stop sequence, so a client never sees text that is later retracted."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":  # a multi-byte character cut mid-way
        end -= 1
    hold = 0
    for s in stops:
        for n in range(min(len(s) - 1, end), 0, -1):
            if text.endswith(s[:n], 0, end):
                hold = max(hold, n)
                break
    return end - hold


def valid_unicode(text: str) -> str:
    """Lone surrogates (bytes the byte-level tokenizer can produce) → U+FFFD, so the text is valid UTF-8/JSON."""
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


class TextTracker:
    """Generated ids of one sequence → the text it has produced, its stop, and the unsent delta.

    Only the ids since the text last ended on a whole character are decoded again for each token (a token
    can end mid-character), so a sequence's text costs linear time, not quadratic. A tracker that is not
    `incremental` (nobody reads the text as it comes, and no stop sequence needs it) decodes once, at the end:
    the per-token decode is a twentieth of a decode step."""

    def __init__(self, decode, params: SamplingParams, incremental: bool = True):
        self._decode = lambda ids: valid_unicode(decode(ids))
        self._stops = tuple(s for s in params.stop if s)
        self.incremental = incremental or bool(self._stops)
        self.ids: list[int] = []
        self._whole = ""  # the text of the ids before `_tail`, ending on a whole character
        self._tail: list[int] = []
        self.text = ""
        self.sent = 0
        self.stopped = False

    def add(self, token: int) -> str:
        """Append a token; return the newly streamable text (empty while held back)."""
        self.ids.append(token)
        if not self.incremental:
            return ""
        self._tail.append(token)
        tail = self._decode(self._tail)
        text = self._whole + tail
        if not tail.endswith("\ufffd"):
            self._whole, self._tail = text, []
        cut = find_stop(text, self._stops)
        if cut is not None:
            self.stopped = True
            self.text = text[:cut]
            return self.flush()
        self.text = text
        end = stable_length(text, self._stops)
        delta = text[self.sent : end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return delta

    def flush(self) -> str:
        """The rest of the text, once the sequence is finished."""
        if not self.incremental:
            self.text = self._decode(self.ids)
        delta = self.text[self.sent :]
        self.sent = len(self.text)
        return delta
