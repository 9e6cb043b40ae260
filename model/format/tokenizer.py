"""Byte-level BPE tokenizer, trained on the model's own training text.

Why byte-level: every string (any UTF-8, NUL, even lone surrogates via
`surrogatepass`) maps onto the 256 byte tokens, so nothing is ever <unk>.
Why trained here: a 2-4k vocabulary learnt from finance tweets turns `$AAPL`,
`upgrades`, `Neutral` into one or two tokens, which a tiny model needs; a
downloaded GPT-2 vocabulary (50k) would be mostly unused embedding rows.

Torch-free: the sidecar imports this module.
"""

from __future__ import annotations

import heapq
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

# GPT-2's pre-tokenizer, written for `re` ([^\W\d_] = any Unicode letter):
# merges never cross a word / number / punctuation / whitespace boundary.
PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d{1,3}| ?[^\s\w]+|\s+(?!\S)|\s+|[\d_]"""
EOT = "<|endoftext|>"
CACHE_SIZE = 100_000
CACHED_PIECE_CHARS = 64  # longer pieces are rare and would let a few requests fill the cache with megabytes


def _to_bytes(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogatepass")


class Tokenizer:
    """Encode text to ids and back. Ids: 0-255 bytes, then merges, then special tokens."""

    def __init__(self, merges: list[tuple[int, int]], special: list[str]):
        self.merges = [tuple(m) for m in merges]
        self.ranks = {pair: i for i, pair in enumerate(self.merges)}
        self.vocab: list[bytes] = [bytes([i]) for i in range(256)]
        for a, b in self.merges:
            self.vocab.append(self.vocab[a] + self.vocab[b])
        self.special = {name: len(self.vocab) + i for i, name in enumerate(special)}
        self.special_names = {i: name for name, i in self.special.items()}
        self.pattern = re.compile(PATTERN)
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab) + len(self.special)

    @property
    def eot_id(self) -> int:
        return self.special[EOT]

    def _bpe(self, piece: str) -> list[int]:
        """Merge the bytes of one pre-token, lowest merge rank first (as GPT-2 does), in O(n log n).

        A heap of (rank, position) over a linked list of tokens: the same result as merging every
        occurrence of the lowest-ranked pair in one left-to-right pass and repeating (a merge only makes
        pairs of a higher rank, and equal ranks pop leftmost first), without rescanning the whole piece
        per merge, which is quadratic on long runs without spaces."""
        ids = list(_to_bytes(piece))
        n, ranks = len(ids), self.ranks
        following = list(range(1, n + 1))  # index of the next live token; n = none
        preceding = list(range(-1, n - 1))
        heap = [(rank, i) for i, pair in enumerate(zip(ids, ids[1:])) if (rank := ranks.get(pair)) is not None]
        heapq.heapify(heap)
        while heap:
            rank, i = heapq.heappop(heap)
            j = following[i]
            if ids[i] < 0 or j >= n or ranks.get((ids[i], ids[j])) != rank:
                continue  # stale: a token of this pair was merged since
            ids[i], ids[j] = 256 + rank, -1
            following[i] = following[j]
            if following[i] < n:
                preceding[following[i]] = i
            for left in (preceding[i], i):
                right = following[left] if left >= 0 else n
                if right < n and (new := ranks.get((ids[left], ids[right]))) is not None:
                    heapq.heappush(heap, (new, left))
        return [t for t in ids if t >= 0]

    def encode(self, text: str) -> list[int]:
        """Text to ids. Special-token names inside `text` are plain text, never specials."""
        out: list[int] = []
        cache = self._cache
        for piece in self.pattern.findall(text):
            ids = cache.get(piece)
            if ids is None:
                ids = self._bpe(piece)
                if len(cache) < CACHE_SIZE and len(piece) <= CACHED_PIECE_CHARS:
                    cache[piece] = ids
            out.extend(ids)
        return out

    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        """Ids to text; special tokens print as their names (or nothing), broken UTF-8 as U+FFFD."""
        parts: list[bytes] = []
        for i in ids:
            if 0 <= i < len(self.vocab):
                parts.append(self.vocab[i])
            elif i in self.special_names:
                if not skip_special:
                    parts.append(self.special_names[i].encode())
            else:
                raise ValueError(f"token id {i} outside the vocabulary (size {self.vocab_size})")
        data = b"".join(parts)
        try:
            return data.decode("utf-8", errors="surrogatepass")
        except UnicodeDecodeError:
            return data.decode("utf-8", errors="replace")

    def to_json(self) -> dict:
        return {"type": "byte-bpe", "pattern": PATTERN, "merges": [list(m) for m in self.merges],
                "special": list(self.special)}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json()))

    @classmethod
    def from_json(cls, data: dict) -> "Tokenizer":
        if data.get("type") != "byte-bpe" or data.get("pattern") != PATTERN:
            raise ValueError("tokenizer file is not a byte-bpe tokenizer of this version")
        return cls([tuple(m) for m in data["merges"]], data["special"])

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        return cls.from_json(json.loads(Path(path).read_text()))

    @classmethod
    def train(cls, texts: list[str], vocab_size: int, special: list[str]) -> "Tokenizer":
        """Learn merges over pre-token counts; pair counts are updated incrementally per merge."""
        n_merges = vocab_size - 256 - len(special)
        if n_merges < 0:
            raise ValueError(f"vocab_size {vocab_size} < 256 bytes + {len(special)} special tokens")
        pattern = re.compile(PATTERN)
        counts = Counter(p for t in texts for p in pattern.findall(t))
        words = [list(_to_bytes(w)) for w in counts]
        freq = list(counts.values())
        pair_count: Counter = Counter()
        where: dict[tuple[int, int], set[int]] = defaultdict(set)
        for wi, w in enumerate(words):
            for pair in zip(w, w[1:]):
                pair_count[pair] += freq[wi]
                where[pair].add(wi)
        merges: list[tuple[int, int]] = []
        for _ in range(n_merges):
            if not pair_count:
                break
            best = max(pair_count, key=lambda p: (pair_count[p], -p[0], -p[1]))
            if pair_count[best] < 2:
                break
            new = 256 + len(merges)
            merges.append(best)
            for wi in list(where[best]):
                w = words[wi]
                for pair in zip(w, w[1:]):
                    pair_count[pair] -= freq[wi]
                    if pair_count[pair] <= 0:
                        del pair_count[pair]
                out, i = [], 0
                while i < len(w):
                    if i < len(w) - 1 and (w[i], w[i + 1]) == best:
                        out.append(new)
                        i += 2
                    else:
                        out.append(w[i])
                        i += 1
                words[wi] = out
                for pair in zip(out, out[1:]):
                    pair_count[pair] += freq[wi]
                    where[pair].add(wi)
            del where[best]
        return cls(merges, special)
