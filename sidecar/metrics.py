"""The sidecar's Prometheus metrics, on a registry of its own (one per app, so tests can run several)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from edgewatch.sidecar.batcher import Stats
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

BATCH_KINDS = ("classify", "prefill", "decode")


class BatchSizes:
    """`sidecar_batch_size`, a histogram of sequences per inference run by kind, as plain counts that only the
    inference thread adds to and a scrape reads. A Histogram.observe per run (two locks, ~2.5 µs) was 1 % of a
    decode step; counting a run here is one dict update, and a scrape sees every run it counts whole (sum and
    buckets come from the same counts)."""

    def __init__(self, registry: CollectorRegistry, buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)):
        self.buckets = buckets
        self.runs: dict[str, dict[int, int]] = {kind: {} for kind in BATCH_KINDS}  # kind -> {size: runs}
        registry.register(self)

    def observe(self, kind: str, size: int) -> None:
        runs = self.runs[kind]
        runs[size] = runs.get(size, 0) + 1

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily("sidecar_batch_size", "sequences per inference run, by kind (classify, "
                                       "prefill, decode)", labels=["kind"])
        for kind, runs in self.runs.items():
            seen = dict(runs)  # one copy: the inference thread may add a run meanwhile
            cumulative = [(floatToGoString(bound), sum(n for size, n in seen.items() if size <= bound))
                          for bound in self.buckets]
            family.add_metric([kind], [*cumulative, ("+Inf", sum(seen.values()))],
                              sum_value=sum(size * n for size, n in seen.items()))
        yield family


class SidecarMetrics:
    def __init__(self, registry: CollectorRegistry, depth: Callable[[], int]):
        self.requests = Counter("sidecar_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=registry)
        self.latency = Histogram("sidecar_request_latency_seconds", "HTTP request latency (streams: until the last byte)",
                                 ["endpoint"], registry=registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.queue_depth = Gauge("sidecar_queue_depth", "requests waiting for or in inference", registry=registry)
        self.queue_depth.set_function(depth)
        self.batch_size = BatchSizes(registry)
        self.tokens = Counter("sidecar_tokens_generated", "completion tokens generated", registry=registry)
        self.model = Info("sidecar_model", "the model being served and the execution provider in use", registry=registry)
        self.ready = Gauge("sidecar_ready", "1 once the model is loaded and warmed", registry=registry)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def set_model(self, name: str, provider: str) -> None:
        self.model.info({"model": name, "provider": provider})
        self.ready.set(1)

    def batcher_stats(self) -> Stats:
        """Called for every engine run (a decode step each ~0.3 ms) and every sequence that ends."""
        return Stats(batch=self.batch_size.observe, tokens=self.tokens.inc)
