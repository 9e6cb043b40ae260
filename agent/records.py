"""The typed values that flow through the agent's csp graphs and into the event log.

Inputs arrive from MQTT in batches (one list per engine cycle), so every input
edge of the graphs is `ts[list[Record]]`: a node handles a whole burst per call
instead of being woken once per message.
"""

import dataclasses
import hashlib
from datetime import datetime

import csp
from edgewatch.agent.kinds import EVENT_KINDS, SEVERITIES  # noqa: F401 - the vocabulary of the records


class SensorReading(csp.Struct):
    sensor_id: str
    ts: datetime
    metrics: dict  # metric name -> finite float
    attrs: dict  # other string/boolean fields, e.g. status


class MetricScore(csp.Struct):
    """The anomaly detector's verdict on one metric of one reading."""

    sensor_id: str
    metric: str
    ts: datetime
    value: float
    score: float  # [0, 1]


class Trade(csp.Struct):
    symbol: str
    ts: datetime
    price: float
    size: float


class Quote(csp.Struct):
    symbol: str
    ts: datetime
    bid: float
    ask: float
    bid_size: float
    ask_size: float


class Position(csp.Struct):
    symbol: str
    ts: datetime
    quantity: float


class Pnl(csp.Struct):
    ts: datetime
    pnl: float


class Headline(csp.Struct):
    source: str
    ts: datetime
    headline: str
    symbols: list  # [str]
    id: str


class Sentiment(csp.Struct):
    """Per-symbol news sentiment, the optional input of signal fusion."""

    symbol: str
    ts: datetime
    score: float  # -1 bearish .. +1 bullish, already weighted by confidence
    label: str
    confidence: float


class Bar(csp.Struct):
    """A VWAP bar: data, not an event (stored in its own table)."""

    symbol: str
    start: datetime
    end: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float
    vwap: float
    trades: int


class Event(csp.Struct):
    """One finding: one row in the event log and one MQTT message (docs/reference/events.md)."""

    event_id: str
    ts: datetime
    kind: str
    key: str
    severity: str
    message: str
    data: dict


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """A rejected input message, kept with the reason it was rejected."""

    topic: str
    payload: str  # UTF-8 text, or base64 when not UTF-8; truncated to 4 KiB
    reason: str
    received_at: datetime
    code: str  # the stable class of `reason` (kinds.REASON_CODES): metric label, query filter


def event_id(kind: str, key: str, ts: datetime, *discriminators: object) -> str:
    """Deterministic id: the same input yields the same id, so redelivery never duplicates."""
    text = "\x1f".join([kind, key, ts.isoformat(), *map(str, discriminators)])
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


def make_event(
    kind: str,
    key: str,
    ts: datetime,
    severity: str,
    message: str,
    data: dict,
    *discriminators: object,
) -> Event:
    """Build an Event whose id derives from (kind, key, ts, discriminators)."""
    return Event(
        event_id=event_id(kind, key, ts, *discriminators),
        ts=ts,
        kind=kind,
        key=key,
        severity=severity,
        message=message,
        data=data,
    )


class AnomalyScore(MetricScore):
    """A MetricScore at or above the anomaly threshold, carrying the detector's evidence."""

    expected: float  # the detector's forecast for this reading
    band: float  # one robust scale unit around the forecast
    surprise: float  # recent mean surprise in [0, 1)
    surprise_mean: float  # its long-run mean ...
    surprise_std: float  # ... and standard deviation
    readings: int  # readings of this (sensor, metric) learnt so far


class BatchMark(csp.Struct):
    """Ticks with every push batch: which batch, how many messages, when its first and its last one arrived."""

    seq: int
    count: int
    received_at: datetime
    last: datetime  # a snapshot taken after this batch includes every message received up to then


# the input feeds, by the kind named in their topic
RECORD_TYPES = {
    "sensor": SensorReading,
    "trade": Trade,
    "quote": Quote,
    "position": Position,
    "pnl": Pnl,
    "news": Headline,
}
