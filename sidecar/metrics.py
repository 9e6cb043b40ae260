"""The sidecar's Prometheus metrics, on a registry of its own (one per app, so tests can run several)."""

from __future__ import annotations

from collections.abc import Callable

from edgewatch.sidecar.batcher import Stats
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info


class SidecarMetrics:
    def __init__(self, registry: CollectorRegistry, depth: Callable[[], int]):
        self.requests = Counter("sidecar_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=registry)
        self.latency = Histogram("sidecar_request_latency_seconds", "HTTP request latency (streams: until the last byte)",
                                 ["endpoint"], registry=registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.queue_depth = Gauge("sidecar_queue_depth", "requests waiting for or in inference", registry=registry)
        self.queue_depth.set_function(depth)
        self.batch_size = Histogram("sidecar_batch_size", "sequences per inference run, by kind (classify, prefill, decode)",
                                    ["kind"], registry=registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128))
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
        """Called for every decode step: the labelled histograms are looked up once, not per step."""
        sizes = {kind: self.batch_size.labels(kind) for kind in ("classify", "prefill", "decode")}
        return Stats(batch=lambda kind, n: sizes[kind].observe(n), tokens=self.tokens.inc)
