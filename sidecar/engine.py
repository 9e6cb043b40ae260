"""ONNX Runtime inference for the exported GPT: classification, prefill and cached decoding. Torch-free.

The graph (model/export.py) takes `input_ids`, `attention_mask` [B, past+seq],
`position_ids` and `past_key_values.{i}.key|value` and returns `logits` and
`present.{i}.key|value`. Prompts in one run are LEFT-padded (so every row's
last position is its next-token position) with the mask zeroing the padding
and position_ids counting only real tokens.

Classification runs a batch as few runs of similar-length prompts (`length_groups`): padding every row to
the longest cost a batch of real tweets more per text than one tweet alone; a run's fixed cost (its ~150
kernels) is worth about `RUN_COST_TOKENS` tokens, and a run past `RUN_MAX_TOKENS` (padding included) has
activations that no longer fit a core's L2 cache. It fetches only the scores, not the presents it has no
use for (a padded batch of 32 tweets copied out 9 MB of them a run).

Context limits: classification cuts text from the LEFT to fit block_size;
generation stops at block_size (prefill raises ValueError for longer prompts,
decode_step raises ValueError once a cache is full; check `cache.length`).

Decode steps on the CPU run the model's decode graph (`files.decode` in
model.json, model.builder.build_decode) when it has one: each batch's keys and
values live in fixed [B, n_head, block_size, head_dim] buffers (`_Slots`) that
the graph appends to in place, bound once with the step's inputs and logits
through IO binding, so a step copies nothing but a token and a length per row.
A KVCache is one sequence's row in a `_Slots` or, straight after a prefill, in
the presents of the run that made it (`_Run`). When the next decode_step gets
exactly a `_Slots`' rows in order, each at the length that row has reached (the
usual generation loop), it steps them in place; any other combination
(sequences joining or leaving a batch, a prefill's presents, a cache stepped
twice) is copied into new buffers first, so a cache keeps meaning what it did.
Without a decode graph, and on CUDA, steps run the general graph: its
presents are fed back as they are (on CUDA as OrtValues bound through IO
binding that never leave the GPU), other combinations gathered on the host into
a left-padded past with the matching mask.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnxruntime as ort
import structlog
from edgewatch.model.format import meta as model_meta
from edgewatch.model.format import shipped_model_dir
from edgewatch.model.format.prompt import classification_ids, label_probs
from edgewatch.model.format.tokenizer import Tokenizer

log = structlog.get_logger("edgewatch.sidecar.engine")
RUN_COST_TOKENS = 8  # a graph run's fixed cost in tokens' worth of compute (bench/README.md, Sidecar: Batches)
RUN_MAX_TOKENS = 512  # rows x longest prompt per classification run
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class _Run:
    """Presents of one run (per layer key, value: [B, n_head, L, head_dim]) and its keep-mask [B, L]."""

    __slots__ = ("kv", "mask", "_host")

    def __init__(self, kv: list, mask: np.ndarray):
        self.kv = kv
        self.mask = mask
        self._host: list[np.ndarray] | None = None

    def host(self) -> list[np.ndarray]:
        """The presents as host arrays, copied from the device once per run however many rows are read."""
        if self._host is None:
            self._host = [t if isinstance(t, np.ndarray) else t.numpy() for t in self.kv]
        return self._host

    def arrays(self, row: int, length: int) -> list[np.ndarray]:
        return [t[row][:, self.mask[row].astype(bool), :] for t in self.host()]


class _Slots:
    """A decode batch's keys/values in fixed buffers that the decode graph appends to in place, and the
    step's inputs and logits, all bound once by address: a step writes tokens and lengths, then runs."""

    __slots__ = ("kv", "written", "ids", "positions", "seqlens", "total", "logits", "binding")

    def __init__(self, session: ort.InferenceSession, rows: int, shape: tuple[int, int, int], vocab: int,
                 past: list[str], present: list[str]):
        self.kv = [np.zeros((rows, *shape), dtype=np.float32) for _ in past]
        self.written = [0] * rows  # per row: how many positions hold its sequence (where the next key goes)
        self.ids, self.positions = np.zeros((rows, 1), np.int64), np.zeros((rows, 1), np.int64)
        self.seqlens, self.total = np.zeros(rows, np.int32), np.zeros((), np.int32)
        self.logits = np.zeros((rows, 1, vocab), np.float32)
        self.binding = session.io_binding()
        for name, a in (("input_ids", self.ids), ("position_ids", self.positions), ("seqlens_k", self.seqlens),
                        ("total_sequence_length", self.total)):
            self.binding.bind_input(name, "cpu", 0, a.dtype, list(a.shape), a.ctypes.data)
        for p, q, a in zip(past, present, self.kv):  # past and present: the same memory
            self.binding.bind_input(p, "cpu", 0, a.dtype, list(a.shape), a.ctypes.data)
            self.binding.bind_output(q, "cpu", 0, a.dtype, list(a.shape), a.ctypes.data)
        self.binding.bind_output("logits", "cpu", 0, np.float32, list(self.logits.shape), self.logits.ctypes.data)

    def arrays(self, row: int, length: int) -> list[np.ndarray]:
        return [t[row, :, :length, :] for t in self.kv]


class KVCache(NamedTuple):  # a NamedTuple: made every step for every row, ~5 times cheaper than a frozen dataclass
    """One sequence's keys/values; `length` real tokens = the position of its next token."""

    run: _Run | _Slots
    row: int
    length: int

    def arrays(self) -> list[np.ndarray]:
        """Per layer key, value as host arrays [n_head, length, head_dim], padding removed."""
        return self.run.arrays(self.row, self.length)


class Engine:
    def __init__(self, model_dir: str | Path | None = None, device: str = "auto", int8: bool = False,
                 threads: int | None = None):
        self.model_dir = Path(model_dir) if model_dir is not None else shipped_model_dir()
        self.meta: dict = model_meta.load(self.model_dir)
        onnx_name = self.meta["files"]["int8" if int8 else "model"]
        if not onnx_name or not (self.model_dir / onnx_name).is_file():
            raise FileNotFoundError(f"{self.model_dir}: no {'int8 ' if int8 else ''}ONNX model "
                                    f"({onnx_name or 'not exported; run edge-model export --int8'})")
        self.tokenizer = Tokenizer.load(self.model_dir / self.meta["tokenizer"]["file"])

        opts = ort.SessionOptions()
        # a small edge CPU: a few intra-op threads, no inter-op pool competing with the server's threads
        opts.intra_op_num_threads = threads or min(4, os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.model_dir / onnx_name), opts, providers=_providers(device))
        self.provider: str = self.session.get_providers()[0]
        if device == "cuda" and self.provider != CUDA:
            raise RuntimeError(f"device cuda: onnxruntime fell back to {self.provider} (no usable GPU)")
        # the decode graph is fp32, which GroupQueryAttention runs on the CPU only (its CUDA kernel: fp16/bf16)
        decode_name = self.meta["files"].get("decode_int8" if int8 else "decode")
        self._decode = (ort.InferenceSession(str(self.model_dir / decode_name), opts, providers=[CPU])
                        if decode_name and self.provider == CPU else None)

        arch = self.meta["architecture"]
        self.name: str = self.meta["name"] + ("-int8" if int8 else "")
        self.labels: list[str] = list(self.meta["labels"])
        self.eos_id: int = int(self.meta["eos_id"])
        # the model was trained on `text <|sentiment|> <|label|> <|endoftext|>`: its text ends where it would
        # start classifying, so a completion ends at either token
        self.end_ids: frozenset[int] = frozenset({self.eos_id, int(self.meta["prompt"]["sentiment_token_id"])})
        self.block_size: int = int(arch["block_size"])
        self.vocab_size: int = int(arch["vocab_size"])
        self._n_layer, self._n_head = int(arch["n_layer"]), int(arch["n_head"])
        self._head_dim = int(arch["n_embd"]) // self._n_head
        self._label_ids: list[int] = list(self.meta["prompt"]["label_token_ids"])
        self._temperature = float(self.meta.get("calibration_temperature", 1.0))
        self._lowercase = bool(self.meta["prompt"].get("lowercase", False))  # as the model was trained
        self._past = [f"past_key_values.{i}.{kv}" for i in range(self._n_layer) for kv in ("key", "value")]
        self._present = [f"present.{i}.{kv}" for i in range(self._n_layer) for kv in ("key", "value")]
        # a graph with the n-gram head (model/ngrams.py) scores sentiment itself; generation never asks for it
        self._sentiment = any(o.name == "sentiment_logits" for o in self.session.get_outputs())
        self._fetch = {(sentiment, kv): ["logits", *(self._present if kv else ()),
                                         *(["sentiment_logits"] if sentiment else ())]
                       for sentiment in (False, True) for kv in (False, True)}  # by (sentiment, presents)
        log.info("engine", model=self.name, provider=self.provider, threads=opts.intra_op_num_threads,
                 decode_graph=self._decode is not None)

    # --- text ---
    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: list[int]) -> str:
        """Generated text: control tokens (<|sentiment|>, labels, <|endoftext|>) are not text and are dropped."""
        return self.tokenizer.decode(ids, skip_special=True)

    def token_bytes(self, token: int) -> bytes:
        """The bytes one token adds to the text (none for a control token): what a log-probability names."""
        vocab = self.tokenizer.vocab
        return vocab[token] if 0 <= token < len(vocab) else b""

    def warmup(self) -> None:
        """One classification and one decode step, so the first request does not pay for allocation."""
        self.classify(["warm up the engine"])
        _, caches = self.prefill([[self.eos_id]])
        self.decode_step([self.eos_id], caches)

    # --- runs ---
    def _run(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, past: list,
             sentiment: bool = False, presents: bool = True) -> tuple[np.ndarray, list, np.ndarray | None]:
        """One graph run -> (logits at the last position [B, vocab], presents (empty unless asked),
        `sentiment_logits` if asked)."""
        feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        if self.provider != CUDA:  # plain run: on the CPU IO binding's per-tensor calls cost more than they save
            out = self.session.run(self._fetch[sentiment, presents], {**feeds, **dict(zip(self._past, past))})
            return out[0][:, -1, :], out[1:-1 if sentiment else None], out[-1] if sentiment else None
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name, t in zip(self._past, past):
            if isinstance(t, np.ndarray):
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(t, "cuda", 0))
            else:
                binding.bind_ortvalue_input(name, t)
        binding.bind_output("logits", "cpu")
        for name in self._present if presents else ():
            binding.bind_output(name, "cuda", 0)
        if sentiment:
            binding.bind_output("sentiment_logits", "cpu")
        self.session.run_with_iobinding(binding)
        out = binding.get_outputs()
        return (out[0].numpy()[:, -1, :], out[1:-1 if sentiment else None],
                out[-1].numpy() if sentiment else None)

    def _check_ids(self, seq: list[int]) -> None:
        if any(not 0 <= t < self.vocab_size for t in seq):
            raise ValueError(f"token ids must be in [0, {self.vocab_size})")

    def _prompts(self, prompts: list[list[int]], sentiment: bool = False,
                 presents: bool = True) -> tuple[np.ndarray, _Run, np.ndarray | None]:
        """Left-padded prompts with an empty past -> last-position logits, the run's presents (`presents`) and
        (`sentiment`) the graph's sentiment scores."""
        B, L = len(prompts), max(len(p) for p in prompts)
        ids = np.full((B, L), self.eos_id, dtype=np.int64)
        mask = np.zeros((B, L), dtype=np.int64)
        for i, p in enumerate(prompts):
            ids[i, L - len(p):] = p
            mask[i, L - len(p):] = 1
        empty = np.zeros((B, self._n_head, 0, self._head_dim), dtype=np.float32)
        positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)  # padding does not shift a prompt's positions
        logits, kv, scores = self._run(ids, mask, positions, [empty] * len(self._past), sentiment, presents)
        return logits, _Run(kv, mask), scores

    def classify(self, texts: list[str]) -> list[dict]:
        """Label probabilities for a batch of texts, in ONE run."""
        return self.classify_prompts([self.classification_prompt(t) for t in texts])

    def classification_prompt(self, text: str) -> list[int]:
        """The ids `classify_prompts` takes for `text` (its end, cut to the context)."""
        return classification_ids(self.tokenizer, text, self.block_size, self._lowercase)

    def classify_prompts(self, prompts: list[list[int]]) -> list[dict]:
        """Label probabilities for a batch of classification prompts, in ONE run."""
        if not prompts:
            return []
        scores = self.label_scores(prompts)
        probs = label_probs(scores, list(range(len(self.labels))), self._temperature)
        return [{"label": self.labels[int(p.argmax())], "confidence": float(p.max()),
                 "scores": {label: float(x) for label, x in zip(self.labels, p)}} for p in probs]

    def label_scores(self, prompts: list[list[int]]) -> np.ndarray:
        """Uncalibrated label scores [B, 3] of classification prompts (ending in `<|sentiment|>`), one run per
        group of similar lengths: the graph's `sentiment_logits` when it has the n-gram head, else the LM's
        label-token logits."""
        out = np.empty((len(prompts), len(self._label_ids)), dtype=np.float32)
        for rows in length_groups([len(p) for p in prompts]):
            logits, _, scores = self._prompts([prompts[i] for i in rows], sentiment=self._sentiment, presents=False)
            out[rows] = scores if self._sentiment else logits[:, self._label_ids]
        return out

    def prefill(self, prompts: list[list[int]]) -> tuple[np.ndarray, list[KVCache]]:
        """Run whole prompts (1..block_size tokens each) -> next-token logits [B, vocab], one cache each."""
        if not prompts:
            raise ValueError("prefill needs at least one prompt")
        for p in prompts:
            if not 1 <= len(p) <= self.block_size:
                raise ValueError(f"a prompt must have 1..{self.block_size} tokens (got {len(p)})")
            self._check_ids(p)
        logits, run, _ = self._prompts(prompts)
        return logits, [KVCache(run, i, len(p)) for i, p in enumerate(prompts)]

    def decode_step(self, tokens: list[int], caches: list[KVCache]) -> tuple[np.ndarray, list[KVCache]]:
        """Feed one token per sequence after its cache -> logits [B, vocab] and the extended caches."""
        if not tokens or len(tokens) != len(caches):
            raise ValueError("decode_step needs one token per cache")
        self._check_ids(tokens)
        if any(c.length >= self.block_size for c in caches):
            raise ValueError(f"context full: a sequence reached block_size {self.block_size}")
        if self._decode is not None:
            return self._step_in_place(tokens, caches)
        run = caches[0].run
        if all(c.run is run for c in caches) and [c.row for c in caches] == list(range(run.mask.shape[0])):
            past, past_mask = run.kv, run.mask
        else:
            past, past_mask = self._gather(caches)
        mask = np.concatenate([past_mask, np.ones((len(caches), 1), dtype=np.int64)], axis=1)
        ids = np.array(tokens, dtype=np.int64).reshape(-1, 1)
        positions = np.array([c.length for c in caches], dtype=np.int64).reshape(-1, 1)
        logits, presents, _ = self._run(ids, mask, positions, past)
        new = _Run(presents, mask)
        return logits, [KVCache(new, i, c.length + 1) for i, c in enumerate(caches)]

    def _step_in_place(self, tokens: list[int], caches: list[KVCache]) -> tuple[np.ndarray, list[KVCache]]:
        """A decode step on the decode graph: the caches' rows stepped in place (copied into new buffers first
        unless they are exactly one `_Slots`' rows, in order, each at the length its row has reached)."""
        slots = caches[0].run
        if not (isinstance(slots, _Slots) and len(caches) == len(slots.written)
                and all(c.run is slots and c.row == i and slots.written[i] == c.length for i, c in enumerate(caches))):
            slots = _Slots(self._decode, len(caches), (self._n_head, self.block_size, self._head_dim),
                           self.vocab_size, self._past, self._present)
            for i, c in enumerate(caches):
                for dst, src in zip(slots.kv, c.arrays()):
                    dst[i, :, :c.length, :] = src
                slots.written[i] = c.length
        lengths = [c.length for c in caches]
        slots.ids[:, 0], slots.positions[:, 0], slots.seqlens[:] = tokens, lengths, lengths
        slots.total[()] = max(lengths) + 1
        self._decode.run_with_iobinding(slots.binding)
        slots.written = [n + 1 for n in lengths]
        return slots.logits[:, 0, :].copy(), [KVCache(slots, i, n + 1) for i, n in enumerate(lengths)]

    def _gather(self, caches: list[KVCache]) -> tuple[list[np.ndarray], np.ndarray]:
        """Caches of different runs/lengths -> one left-padded past and its mask."""
        L = max(c.length for c in caches)
        past = [np.zeros((len(caches), self._n_head, L, self._head_dim), dtype=np.float32) for _ in self._past]
        mask = np.zeros((len(caches), L), dtype=np.int64)
        for i, c in enumerate(caches):
            mask[i, L - c.length:] = 1
            for dst, src in zip(past, c.arrays()):
                dst[i, :, L - c.length:, :] = src
        return past, mask


def length_groups(lengths: list[int], run_cost: int = RUN_COST_TOKENS,
                  max_tokens: int = RUN_MAX_TOKENS) -> list[list[int]]:
    """Indices of `lengths` split into runs of similar lengths at the least cost: each run costs `run_cost`
    plus its rows x its longest length (the padded tokens it computes), and stays within `max_tokens` unless
    it is one row. Exact (dynamic programming over the lengths sorted), O(n^2) for n prompts."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    best, cut = [0.0] + [float("inf")] * len(order), [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        longest = lengths[order[end - 1]]
        for start in range(end - 1, -1, -1):
            if end - start > 1 and (end - start) * longest > max_tokens:
                break
            cost = best[start] + run_cost + (end - start) * longest
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups, end = [], len(order)
    while end:
        groups.append(order[cut[end]:end])
        end = cut[end]
    return groups[::-1]


def _providers(device: str) -> list[str]:
    if device not in ("auto", "cuda", "cpu"):
        raise ValueError(f"device must be auto, cuda or cpu (got {device!r})")
    if device == "cpu":
        return [CPU]
    if CUDA in ort.get_available_providers():
        return [CUDA, CPU]
    if device == "cuda":
        raise RuntimeError("device cuda: this onnxruntime has no CUDA execution provider (install the gpu extra)")
    return [CPU]
