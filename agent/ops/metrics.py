"""The agent's Prometheus metrics, in their own registry.

One module-level registry so that every part of the agent (MQTT thread, csp
nodes, writer, outbox) updates the same objects; the HTTP endpoint serves
`REGISTRY`, apart from prometheus_client's global default registry, with the
same standard collectors that registry has (`process_cpu_seconds_total`, resident
memory, open file descriptors, Python's GC and version), so CPU per message can be
read off a running agent.
"""

from __future__ import annotations

import typing

from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

MAX_SENSOR_GROUPS = 100  # `group` labels at most: sensor ids come from outside, and every label is a series kept
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
REGISTRY.register(GC_COLLECTOR)

MESSAGES_IN = Counter(
    "edgewatch_messages_in_total", "Accepted input messages, by topic kind", ["kind"], registry=REGISTRY
)
SENSOR_READINGS = Counter(
    "edgewatch_sensor_readings_total",
    f"Accepted sensor readings, by group: the sensor id up to its first '/' (at most {MAX_SENSOR_GROUPS}, then 'other')",
    ["group"], registry=REGISTRY,
)
MESSAGES_DONE = Counter(
    "edgewatch_messages_done_total",
    "Input messages fully handled: their batch's events and dead letters committed, PUBACK sent",
    registry=REGISTRY,
)
MESSAGES_SHED = Counter(
    "edgewatch_messages_shed_total",
    "QoS 0 input messages dropped on arrival: mqtt.max_qos0_backlog messages were already waiting for the engine",
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "edgewatch_dead_letters_total", "Rejected input messages, by reason code", ["reason"], registry=REGISTRY
)
EVENTS = Counter("edgewatch_events_total", "Events logged (newly inserted), by kind", ["kind"], registry=REGISTRY)
EVENTS_PUBLISHED = Counter(
    "edgewatch_events_published_total", "Events acknowledged by the broker (PUBACK)", registry=REGISTRY
)
ENGINE_LAG = Gauge(
    "edgewatch_engine_lag_seconds", "Receive time to engine cycle, for the latest input batch", registry=REGISTRY
)
ENGINE_HEARTBEAT = Gauge(
    "edgewatch_engine_heartbeat_timestamp_seconds", "Unix time of the engine's latest heartbeat", registry=REGISTRY
)
LOG_WRITE_SECONDS = Histogram(
    "edgewatch_log_write_seconds",
    "Submit-to-durable time of one writer batch",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
    registry=REGISTRY,
)
STATE_KEYS = Gauge(
    "edgewatch_state_keys", "Keys (sensors, series, symbols) an analytic tracks, by state", ["state"], registry=REGISTRY
)
STATE_EVICTIONS = Counter(
    "edgewatch_state_evictions_total",
    "Longest-silent keys forgotten because a state reached its cap, by state",
    ["state"],
    registry=REGISTRY,
)
STATE_FORGOTTEN = Counter(
    "edgewatch_sensors_forgotten_total", "Sensors forgotten after health.forget_after seconds of silence",
    registry=REGISTRY,
)
STATE_SNAPSHOT_SECONDS = Gauge(
    "edgewatch_state_snapshot_seconds", "Engine time spent taking the last snapshot of the analytics' state",
    registry=REGISTRY,
)
STATE_SNAPSHOT_BYTES = Gauge(
    "edgewatch_state_snapshot_bytes", "Size of the last state snapshot saved in the event log (compressed)",
    registry=REGISTRY,
)
STATE_SNAPSHOT_SAVED = Gauge(
    "edgewatch_state_snapshot_saved_timestamp_seconds", "When the last state snapshot was saved (Unix time)",
    registry=REGISTRY,
)
UNACKED = Gauge(
    "edgewatch_unacked_messages", "Received QoS 1 messages not yet acknowledged to the broker", registry=REGISTRY
)
UNACKED_AGE = Gauge(
    "edgewatch_oldest_unacked_seconds",
    "Age of the oldest received message not yet acknowledged (0 when none): above mqtt.ack_deadline, /health fails",
    registry=REGISTRY,
)
WRITER_BACKLOG_AGE = Gauge(
    "edgewatch_writer_backlog_age_seconds", "How long the oldest uncommitted submission has waited (0 when none)",
    registry=REGISTRY,
)
MQTT_CONNECTED = Gauge("edgewatch_mqtt_connected", "1 while connected to the broker", registry=REGISTRY)
MQTT_RECONNECTS = Counter("edgewatch_mqtt_reconnects_total", "Connections after the first", registry=REGISTRY)
MQTT_SUBSCRIPTIONS_REFUSED = Gauge("edgewatch_mqtt_subscriptions_refused",
                                   "Topic filters the broker refused at the last SUBACK (readiness fails while > 0)",
                                   registry=REGISTRY)
MQTT_PUBLISHES_REFUSED = Counter("edgewatch_mqtt_publishes_refused_total",
                                 "PUBACKs with a failure reason code (the message was not accepted)", registry=REGISTRY)


def count_sensor_groups(sensor_ids: typing.Iterable[str]) -> None:
    """One batch's readings into `SENSOR_READINGS`, so an alert can see a group of sensors fall silent."""
    counts: dict[str, int] = {}
    for sensor_id in sensor_ids:
        group = sensor_id.partition("/")[0]
        counts[group] = counts.get(group, 0) + 1
    for group, n in counts.items():
        child = _groups.get(group)
        if child is None:
            label = group if len(_groups) < MAX_SENSOR_GROUPS else "other"
            child = _groups[label] = SENSOR_READINGS.labels(label)
        child.inc(n)


_groups: dict = {}  # group -> its counter child, the first MAX_SENSOR_GROUPS groups seen


class _EventLogCollector:
    """The log writer's and the outbox's own counters, read when scraped: their hot paths keep plain integers.

    `writer` needs `rows_written`, `errors`, `dropped`, `commits` and `pending_rows`; `outbox` needs `backlog()`
    (rows in flight) and `store.unpublished_count()` (this agent's rows the log holds unpublished).
    """

    def __init__(self):
        self.writer = None
        self.outbox = None

    def describe(self):
        return self._families()

    def collect(self):
        return self._families(self.writer, self.outbox)

    @staticmethod
    def _families(writer=None, outbox=None):
        counters = (
            ("edgewatch_log_rows_written", "Rows committed to the event log", "rows_written"),
            ("edgewatch_log_commits", "Transactions committed by the log writer", "commits"),
            ("edgewatch_log_write_errors", "Failed log transactions (retried, or their rows written one by one)",
             "errors"),
            ("edgewatch_log_rows_dropped", "Rows the database refused even after cleaning (each logged in full)",
             "dropped"),
        )
        for name, doc, attr in counters:
            family = CounterMetricFamily(name, doc)
            if writer is not None:
                family.add_metric([], getattr(writer, attr))
            yield family
        pending = GaugeMetricFamily("edgewatch_log_pending_rows", "Rows submitted to the log writer, not yet committed")
        inflight = GaugeMetricFamily("edgewatch_outbox_inflight",
                                     "Events and bars published, not yet acknowledged by the broker")
        backlog = GaugeMetricFamily("edgewatch_outbox_backlog",
                                    "Events and bars in the log not yet acknowledged by the broker")
        if writer is not None:
            pending.add_metric([], writer.pending_rows)
        if outbox is not None:
            inflight.add_metric([], outbox.backlog())
            try:
                backlog.add_metric([], outbox.store.unpublished_count())
            except Exception:  # noqa: BLE001 - a log that is away right now: no sample, the scrape still answers
                pass
        yield from (pending, inflight, backlog)


EVENT_LOG = _EventLogCollector()
REGISTRY.register(EVENT_LOG)


def watch_event_log(writer, outbox) -> None:
    """Export this writer's and outbox's counters (the running agent's; one per process)."""
    EVENT_LOG.writer, EVENT_LOG.outbox = writer, outbox
