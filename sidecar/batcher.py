"""Coalescing concurrent requests into few ONNX Runtime runs, on one inference thread.

Classification: under concurrent load, requests arriving within `max_wait` (up to
`max_batch` texts) share one `Engine.classify_prompts` run. `max_batch` defaults to 16, not
more: on a CPU a text costs the engine about the same in a batch of 8 as of 32, and
a batch that takes every waiting request leaves the event loop idle while it runs
and the inference thread idle while the loop answers them all; two half-size
batches overlap those (measured in bench/README.md, Sidecar). Generation is continuously
batched: new sequences are prefilled and join the running decode batch, finished
or abandoned ones leave it, and every step is one batched `decode_step`.
The event loop never runs inference; it only hands work over and awaits results.

Hand-offs are few: a sequence's items pile up in its own deque on the inference thread, and the event
loop is woken for them only when someone reads them as they come (a stream) and no wake-up is pending
already, or else once, when the sequence ends. Waking the loop for every token cost a whole-request
completion a third of its speed on a busy 2-core box (each wake-up takes the GIL from the inference
thread between two decode steps).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Callable

import numpy as np
import structlog
from edgewatch.sidecar.sampling import SamplingParams, TextTracker, sample, token_logprobs

log = structlog.get_logger("edgewatch.sidecar.batcher")


class QueueFull(Exception):
    """More requests are waiting than `max_queue`: answer 429 instead of growing."""


class DeadlineExceeded(Exception):
    """The request's deadline passed before its work was done: answer 504."""


class Stopped(Exception):
    """The batcher is shutting down."""


@dataclasses.dataclass
class Stats:
    """Callbacks the server's metrics hang on; defaults do nothing."""

    batch: Callable[[str, int], None] = lambda kind, size: None
    tokens: Callable[[int], None] = lambda n: None


@dataclasses.dataclass(eq=False)
class _Work:
    loop: asyncio.AbstractEventLoop
    deadline: float  # time.monotonic()
    cancelled: bool = False

    def deliver(self, fn, *args) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


@dataclasses.dataclass(eq=False)
class _Classify(_Work):
    prompts: list[list[int]] = dataclasses.field(default_factory=list)  # token ids (Engine.classification_prompt)
    future: asyncio.Future | None = None
    taken: int = 0  # prompts handed to runs so far: a request bigger than a batch runs over several
    results: list[dict] = dataclasses.field(default_factory=list)

    @property
    def left(self) -> int:
        return len(self.prompts) - self.taken

    def finish(self, result=None, error: BaseException | None = None) -> None:
        def settle():
            if not self.future.done():
                self.future.set_exception(error) if error else self.future.set_result(result)

        self.deliver(settle)


@dataclasses.dataclass(eq=False)
class _Generate(_Work):
    prompt: list[int] = dataclasses.field(default_factory=list)
    params: SamplingParams = dataclasses.field(default_factory=SamplingParams)
    stream: bool = True  # wake the reader for every item (else only for the last)
    # ("logprob", (token, logprob, [(token, logprob), ...])) and ("text", str) … then ("done", finish_reason,
    # n_tokens) or ("error", exc); appended by the inference thread, taken by the event loop (deque: both atomic)
    items: collections.deque = dataclasses.field(default_factory=collections.deque)
    ready: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    waking: bool = False  # a wake-up is scheduled on the loop and has not run yet
    tracker: TextTracker | None = None
    rng: np.random.Generator | None = None
    cache: object = None
    last: int = 0
    limit: int = 0  # tokens this sequence may produce (max_tokens, capped by the context)
    finished: bool = False

    def emit(self, item: tuple) -> None:
        self.items.append(item)
        if (self.stream or item[0] in ("done", "error")) and not self.waking:
            self.waking = True
            self.deliver(self._wake)

    def _wake(self) -> None:  # on the event loop
        self.waking = False  # first: an item appended from now on schedules its own wake-up
        self.ready.set()


class Batcher:
    def __init__(
        self,
        engine,
        *,
        max_batch: int = 16,
        max_wait: float = 0.001,
        max_queue: int = 256,
        max_gen_batch: int = 8,
        stats: Stats | None = None,
    ):
        self.engine = engine
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.max_gen_batch = max_gen_batch
        self.stats = stats or Stats()
        self._cv = threading.Condition()
        self._classify: collections.deque[_Classify] = collections.deque()
        self._pending: collections.deque[_Generate] = collections.deque()
        self._active: list[_Generate] = []
        self._stopping = False
        self._concurrent = False  # did the last classification run serve more than one request?
        self._progress = time.monotonic()  # when the inference thread last finished a round
        self._thread = threading.Thread(target=self._run, name="sidecar-inference", daemon=True)

    # ---- event-loop side -------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self._thread.join(timeout)

    def healthy(self, stall: float = 30.0) -> bool:
        """The inference thread is alive, and idle or making progress: what the watchdog vouches for."""
        return self._thread.is_alive() and (self.depth == 0 or time.monotonic() - self._progress < stall)

    @property
    def depth(self) -> int:
        """Requests waiting for the inference thread plus sequences being generated."""
        return len(self._classify) + len(self._pending) + len(self._active)

    def _enqueue(self, queue: collections.deque, work: _Work) -> None:
        with self._cv:
            if self._stopping:
                raise Stopped("server is shutting down")
            if len(self._classify) + len(self._pending) >= self.max_queue:
                raise QueueFull(f"{self.max_queue} requests already queued")
            queue.append(work)
            self._cv.notify_all()

    async def classify(self, prompts: list[list[int]], deadline: float) -> list[dict]:
        """Label probabilities per classification prompt. Cancelling the call (client gone) or passing the
        deadline stops the request's work at its next batch of `max_batch` prompts."""
        loop = asyncio.get_running_loop()
        work = _Classify(loop=loop, deadline=deadline, prompts=prompts, future=loop.create_future())
        self._enqueue(self._classify, work)
        try:
            return await asyncio.wait_for(work.future, max(deadline - time.monotonic(), 0.0))
        except asyncio.TimeoutError:
            raise DeadlineExceeded("classification deadline exceeded") from None
        finally:
            work.cancelled = True  # a no-op when done; otherwise the thread skips it

    async def generate(self, prompt: list[int], params: SamplingParams, limit: int, deadline: float,
                       stream: bool = True) -> AsyncIterator[tuple]:
        """Yield ("text", delta) items (and, with `params.logprobs`, a ("logprob", …) item before each token's
        text), then ("done", finish_reason, n_tokens); raise on error. Without `stream` the items arrive all
        at once at the end (one hand-off instead of one per token).

        Leaving the iteration early (client gone) cancels the sequence at the next step."""
        loop = asyncio.get_running_loop()
        work = _Generate(loop=loop, deadline=deadline, prompt=prompt, params=params, limit=limit, stream=stream)
        self._enqueue(self._pending, work)
        try:
            while True:
                await work.ready.wait()
                work.ready.clear()
                while work.items:
                    item = work.items.popleft()
                    if item[0] == "error":
                        raise item[1]
                    yield item
                    if item[0] == "done":
                        return
        finally:
            work.cancelled = True

    # ---- inference thread ------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cv:
                while not (self._stopping or self._classify or self._pending or self._active):
                    self._cv.wait()
                if self._stopping:
                    break
                if self._classify and not self._active and self._concurrent:
                    # requests arrive concurrently: let the burst gather (a lone client never waits)
                    end = time.monotonic() + self.max_wait
                    while sum(w.left for w in self._classify) < self.max_batch and not self._stopping:
                        left = end - time.monotonic()
                        if left <= 0:
                            break
                        self._cv.wait(left)
                classify = self._take_classify()
                room = self.max_gen_batch - len(self._active)
                joining = [self._pending.popleft() for _ in range(min(room, len(self._pending)))]
            try:
                if classify:
                    self._run_classify(classify)
                if joining:
                    self._prefill(joining)
                if self._active:
                    self._step()
                # then steps back to back while nothing else waits: no lock and no queue scan per token
                while self._active and not (self._classify or self._pending or self._stopping):
                    self._step()
            except Exception as e:  # noqa: BLE001 - an engine failure fails its requests, not the server
                log.exception("inference failed")
                for w, _, _ in classify:
                    w.cancelled = True  # its remaining prompts are dropped
                    w.finish(error=e)
                for w in joining + self._active:
                    w.emit(("error", e))
                self._active = []
            self._progress = time.monotonic()
        self._fail_all(Stopped("server is shutting down"))

    def _take_classify(self) -> list[tuple[_Classify, int, int]]:
        """Up to `max_batch` prompts from the head of the queue as (request, start, end): whole requests, and
        the first part of one that does not fit (its rest goes to the next rounds, between which it can stop
        and generation steps)."""
        parts, n = [], 0
        while self._classify and n < self.max_batch:
            w = self._classify[0]
            if not w.cancelled:
                start, w.taken = w.taken, min(len(w.prompts), w.taken + self.max_batch - n)
                parts.append((w, start, w.taken))
                n += w.taken - start
            if w.cancelled or not w.left:
                self._classify.popleft()
        return parts

    def _run_classify(self, parts: list[tuple[_Classify, int, int]]) -> None:
        self._concurrent = len(parts) > 1
        now = time.monotonic()
        live = []
        for w, start, end in parts:
            if w.cancelled:
                continue
            if w.deadline <= now:
                w.cancelled = True  # its remaining prompts are dropped
                w.finish(error=DeadlineExceeded("classification deadline exceeded"))
            else:
                live.append((w, start, end))
        prompts = [p for w, start, end in live for p in w.prompts[start:end]]
        results = self.engine.classify_prompts(prompts)
        if prompts:
            self.stats.batch("classify", len(prompts))
        at = 0
        for w, start, end in live:
            w.results.extend(results[at : at + end - start])
            at += end - start
            if len(w.results) == len(w.prompts):
                w.finish(w.results)

    def _prefill(self, joining: list[_Generate]) -> None:
        now = time.monotonic()
        live = []
        for w in joining:
            if w.cancelled:
                continue
            if w.deadline <= now:
                w.emit(("error", DeadlineExceeded("generation deadline exceeded in the queue")))
            else:
                live.append(w)
        if not live:
            return
        logits, caches = self.engine.prefill([w.prompt for w in live])
        self.stats.batch("prefill", len(live))
        for w, row, cache in zip(live, logits, caches):
            w.cache = cache
            # read as it comes only when streamed or with per-token logprobs (their text is each token's)
            w.tracker = TextTracker(self.engine.decode, w.params, w.stream or w.params.logprobs is not None)
            # a greedy sequence never draws: no generator (making one costs ~20 µs)
            w.rng = None if w.params.greedy else np.random.default_rng(w.params.seed)
            self._accept(w, row)
        self._active.extend(w for w in live if not self._finished(w))

    def _step(self) -> None:
        now = time.monotonic()
        keep = []
        for w in self._active:
            if not w.cancelled and w.deadline > now:
                keep.append(w)
                continue
            self.stats.tokens(len(w.tracker.ids))  # what it generated before it left
            if not w.cancelled:
                w.emit(("error", DeadlineExceeded("generation deadline exceeded")))
        self._active = keep
        if not keep:
            return
        logits, caches = self.engine.decode_step([w.last for w in keep], [w.cache for w in keep])
        self.stats.batch("decode", len(keep))
        for w, row, cache in zip(keep, logits, caches):
            w.cache = cache
            self._accept(w, row)
        self._active = [w for w in keep if not self._finished(w)]

    def _accept(self, w: _Generate, logits: np.ndarray) -> None:
        """Sample the next token of `w`, stream its text, and finish it when it is done."""
        token = sample(logits, w.params, w.rng)
        eos = token in self.engine.end_ids and not w.params.ignore_eos
        if not eos:
            if w.params.logprobs is not None:
                w.emit(("logprob", token_logprobs(logits, token, w.params.logprobs)))
            w.last = token
            delta = w.tracker.add(token)
            if delta:
                w.emit(("text", delta))
        if eos or w.tracker.stopped:
            self._done(w, "stop")
        elif len(w.tracker.ids) >= w.limit:
            self._done(w, "length")

    @staticmethod
    def _finished(w: _Generate) -> bool:
        return w.finished or w.cancelled

    def _done(self, w: _Generate, reason: str) -> None:
        w.finished = True
        self.stats.tokens(len(w.tracker.ids))  # counted as a sequence leaves: an update per token cost 2 %
        rest = w.tracker.flush()
        if rest:
            w.emit(("text", rest))
        w.emit(("done", reason, len(w.tracker.ids)))

    def _fail_all(self, error: Exception) -> None:
        with self._cv:
            for w in self._classify:
                w.finish(error=error)
            for w in list(self._pending) + self._active:
                w.emit(("error", error))
            self._classify.clear()
            self._pending.clear()
            self._active = []
