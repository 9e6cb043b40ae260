"""News headlines → `news` events (docs/reference/events.md) and per-symbol sentiment, by asking the sidecar.

Realtime: the engine thread only hands headlines to a worker thread; the worker
asks the sidecar (short timeout, circuit breaker) and its results come back into
the graph through a push adapter, so a slow or dead sidecar never delays the
sensor and market paths. When the sidecar cannot answer, the headline still
becomes a `news` event at once, with `degraded: true` and neutral sentiment;
when it is back (the breaker lets a trial through every `news.breaker_reset`
seconds) analysis resumes by itself.

Historical (`edge-agent replay`): push adapters cannot run there, so the same
analysis runs synchronously on the engine thread, in event time. Replay is
deterministic as long as the sidecar is up; when it is not, its headlines are
logged degraded, exactly as the live agent would have logged them.

Event key: the headline's first symbol, else its source, so `edge-agent events
--key AAPL` shows a symbol's news next to its signals. The event id derives from
(source, headline id, or a hash of the text when the message has no id).
"""

from __future__ import annotations

import collections
import hashlib
import queue
import threading
import time

import csp
import structlog
from csp import ts
from csp.impl.pushadapter import PushInputAdapter
from csp.impl.wiring import py_push_adapter_def
from csp.impl.wiring.runtime import GraphRunInfo
from edgewatch.agent.config import Config, read_secret
from edgewatch.agent.records import Event, Headline, Sentiment, make_event
from edgewatch.sidecar.client import CircuitBreaker, SidecarClient

log = structlog.get_logger("edgewatch.agent.analytics.news")

class NewsAnalyzer:
    """Headlines → `news` events: an LRU cache by text in front of the sidecar, degraded when it cannot answer."""

    def __init__(self, cfg: Config, client: SidecarClient | None = None):
        self.batch_size = max(1, cfg.news.batch_size)
        self.cache_size = cfg.news.cache_size
        self.client = client or SidecarClient(
            cfg.sidecar.url,
            api_key=read_secret("sidecar.api_key_file", cfg.sidecar.api_key_file),
            timeout=cfg.news.timeout,
            retries=0,  # the breaker, not retries, handles a sidecar that is away
            breaker=CircuitBreaker(cfg.news.breaker_failures, cfg.news.breaker_reset),
        )
        self._cache: collections.OrderedDict[str, tuple[dict, str]] = collections.OrderedDict()
        self.degraded = False  # logged on change only: an outage is one warning, not one per headline

    def analyze(self, headlines: list[Headline], since: float | None = None) -> list[Event]:
        """One event per headline; `since` (perf_counter) is when they were handed over, for latency_ms."""
        since = time.perf_counter() if since is None else since
        missing = list(dict.fromkeys(h.headline for h in headlines if h.headline not in self._cache))
        error = None
        for i in range(0, len(missing), self.batch_size):
            chunk = missing[i : i + self.batch_size]
            try:
                answer = self.client.classify(chunk)
                for text, result in zip(chunk, answer["results"]):
                    self._remember(text, result, answer["model"])
            except Exception as e:  # noqa: BLE001 - any failure degrades these headlines, never the agent
                error = str(e) or type(e).__name__
        if missing and (error is not None) != self.degraded:
            self.degraded = error is not None
            if error:
                log.warning("news analysis degraded: sidecar unavailable", error=error)
            else:
                log.info("news analysis resumed", url=self.client.url)
        latency_ms = round((time.perf_counter() - since) * 1000, 3)
        return [self._event(h, self._lookup(h.headline), latency_ms, error) for h in headlines]

    def close(self) -> None:
        self.client.close()

    def _remember(self, text: str, result: dict, model: str) -> None:
        self._cache[text] = (result, model)
        self._cache.move_to_end(text)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _lookup(self, text: str) -> tuple[dict, str] | None:
        hit = self._cache.get(text)
        if hit is not None:
            self._cache.move_to_end(text)
        return hit

    @staticmethod
    def _event(h: Headline, analysis: tuple[dict, str] | None, latency_ms: float, error: str | None) -> Event:
        symbols = list(getattr(h, "symbols", None) or [])
        key = symbols[0] if symbols else h.source
        headline_id = getattr(h, "id", "") or hashlib.blake2b(h.headline.encode("utf-8", "surrogatepass"),
                                                              digest_size=8).hexdigest()
        data = {"source": h.source, "headline": h.headline, "headline_id": headline_id, "symbols": symbols,
                "latency_ms": latency_ms}
        if analysis is None:
            data |= {"sentiment": "neutral", "confidence": 0.0, "degraded": True, "model": None,
                     "error": error or "sidecar unavailable"}
            message = f"{h.source}: sentiment unavailable (sidecar down): {h.headline[:100]}"
        else:
            result, model = analysis
            data |= {"sentiment": result["label"], "confidence": result["confidence"], "scores": result["scores"],
                     "degraded": False, "model": model}
            message = f"{h.source}: {result['label']} ({result['confidence']:.0%}): {h.headline[:100]}"
        return make_event("news", key, h.ts, "info", message, data, h.source, headline_id)


class NewsWorker:
    """The thread between the engine and the sidecar: takes whatever headlines are waiting, analyses
    them in one request, pushes the events. `stop()` joins it, and it never pushes after `stop()`."""

    def __init__(self, analyzer: NewsAnalyzer, join_timeout: float):
        self.analyzer = analyzer
        self.join_timeout = join_timeout
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._push = None
        self._thread = threading.Thread(target=self._run, name="news-sidecar", daemon=True)

    def submit(self, headlines: list[Headline]) -> None:
        self._queue.put((time.perf_counter(), headlines))

    def start(self, push) -> None:
        self._push = push
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._push = None  # from here on nothing reaches the (stopping) push adapter
        self._queue.put(None)
        self._thread.join(self.join_timeout)
        self.analyzer.close()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            since, batch = item
            while len(batch) < self.analyzer.batch_size:  # a burst becomes one request
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    return
                batch = batch + more[1]
            try:
                events = self.analyzer.analyze(batch, since)
            except Exception:  # noqa: BLE001 - the thread must outlive any bad headline
                log.exception("news analysis failed", headlines=len(batch))
                continue
            with self._lock:
                if self._push is not None:
                    self._push(events)


class _NewsResultsImpl(PushInputAdapter):
    def __init__(self, worker: NewsWorker):
        self._worker = worker

    def start(self, starttime, endtime):
        self._worker.start(self.push_tick)

    def stop(self):
        self._worker.stop()  # join the thread BEFORE the engine goes: a late push would crash it


_NewsResults = py_push_adapter_def("NewsResults", _NewsResultsImpl, ts[list[Event]], worker=object)


@csp.node
def _hand_over(headlines: ts[list[Headline]], worker: object):
    """Engine thread → worker queue; returns at once."""
    if csp.ticked(headlines):
        worker.submit(headlines)


@csp.node
def _analyze_now(headlines: ts[list[Headline]], analyzer: object) -> ts[list[Event]]:
    """Historical mode: ask the sidecar synchronously, in event time."""
    with csp.stop():
        analyzer.close()
    if csp.ticked(headlines):
        return analyzer.analyze(headlines)


@csp.node
def sentiment_of(events: ts[list[Event]]) -> ts[list[Sentiment]]:
    """Per-symbol sentiment for signal fusion: score = P(bullish) - P(bearish); degraded events carry none."""
    if csp.ticked(events):
        out = [
            Sentiment(symbol=symbol, ts=e.ts, label=e.data["sentiment"], confidence=e.data["confidence"],
                      score=e.data["scores"].get("bullish", 0.0) - e.data["scores"].get("bearish", 0.0))
            for e in events
            if not e.data["degraded"]
            for symbol in e.data["symbols"]
        ]
        if out:
            return out


def _realtime_run() -> bool:
    info = GraphRunInfo.get_cur_run_times_info(raise_if_missing=False)
    return bool(info and info.is_realtime)


@csp.graph(memoize=False)  # cfg is a mutable dataclass: nothing to memoize on
def news_graph(
    headlines: ts[list[Headline]], cfg: Config, realtime: object = None
) -> csp.Outputs(events=ts[list[Event]], sentiment=ts[list[Sentiment]]):
    """`realtime` None = follow the engine's mode (push adapter live, synchronous calls in replay).
    With `news.enabled = false` headlines are not analysed and no news events are made."""
    if not cfg.news.enabled:
        return csp.output(events=csp.null_ts(list[Event]), sentiment=csp.null_ts(list[Sentiment]))
    realtime = _realtime_run() if realtime is None else realtime
    analyzer = NewsAnalyzer(cfg)
    if realtime:
        worker = NewsWorker(analyzer, join_timeout=cfg.news.timeout + 1.0)
        _hand_over(headlines, worker)
        events = _NewsResults(worker=worker)
    else:
        events = _analyze_now(headlines, analyzer)
    return csp.output(events=events, sentiment=sentiment_of(events))
