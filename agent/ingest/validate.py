"""Input validation: one MQTT message in, a typed record or a dead letter out (docs/reference/topics.md).

This is the hot path of ingest, so the valid path is one `json.loads` and a few
type checks per field (`type(v) is float`, set and dict lookups, no regex per
field). Anything wrong becomes a `DeadLetter` whose reason names the topic, the
field and what was wrong; `parse` never raises, whatever the bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import datetime, timedelta
from typing import NamedTuple

from edgewatch.agent.config import Config
from edgewatch.agent.records import (
    DeadLetter,
    Headline,
    Pnl,
    Position,
    Quote,
    SensorReading,
    Trade,
)
from edgewatch.agent.timeutil import MAX_EPOCH, milliseconds_hint, parse_timestamp

MAX_FUTURE = timedelta(minutes=5)  # a timestamp further ahead than this is a clock or encoding bug
DEAD_LETTER_BYTES = 4096  # dead-letter payloads are truncated to this many bytes
MAX_HEADLINE = 2000
# every number a message carries is within ±MAX_VALUE: the analytics multiply two of them (price x size,
# position x price, a value's square) and sum millions of those, and 1e15 keeps any such product or sum
# below 1e40, far from float overflow (1.8e308), so no inf or NaN can reach an event, a bar or the log
MAX_VALUE = 1e15
MIN_PRICE = 1e-12  # prices and sizes below this are refused: a denormal's moves and ratios overflow to inf
REQUIRED_NUMERIC = frozenset(("temperature", "humidity", "pressure", "battery"))
_METRIC_NAME = re.compile(r"[a-z][a-z0-9_]*")
_TYPE_NAMES = {str: "string", bool: "boolean", int: "number", float: "number", list: "array", dict: "object"}
_TOPIC_TEXT = 200  # topic characters quoted in a reason
MAX_ID_BYTES = 1024  # a sensor id, symbol or news source: its events' topics must stay within MQTT's 65,535 bytes
BASE64_NOTE = " (payload shown base64)"  # binary or NUL-bearing payloads are kept encoded
_EPOCH = datetime(1970, 1, 1)


class Parsed(NamedTuple):
    """An accepted message: `kind` names the feed, `record` is its csp.Struct."""

    kind: str  # sensor, trade, quote, position, pnl, news
    record: object
    text: str  # the decoded payload, for the capture record


class Invalid(ValueError):
    """Why a message was rejected: `code` (one of kinds.REASON_CODES) and the reason's text, without the topic."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code


def _type_name(value: object) -> str:
    return "null" if value is None else _TYPE_NAMES.get(type(value), type(value).__name__)


def _reject_constant(name: str) -> float:
    raise Invalid("non_finite", f"payload contains {name}, which is not a finite number")


_json = json.JSONDecoder(parse_constant=_reject_constant).decode  # built once: json.loads(**kw) builds one per call


def _decode(payload: bytes) -> tuple[str, dict]:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Invalid("not_utf8", f"payload is not UTF-8 (invalid byte at offset {e.start})") from None
    try:
        obj = _json(text)
    except Invalid:
        raise
    except RecursionError:
        raise Invalid("bad_json", "payload is nested too deeply") from None
    except json.JSONDecodeError as e:
        raise Invalid("bad_json", f"payload is not JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except ValueError as e:  # e.g. an integer with more than 4300 digits
        raise Invalid("bad_json", f"payload is not acceptable JSON: {str(e)[:120]}") from None
    if type(obj) is not dict:
        raise Invalid("not_object", f"payload must be a JSON object, got {_type_name(obj)}")
    return text, obj


def _clean_text(where: str, s: str) -> str:
    """Strings we keep must be storable anywhere: no NUL, no lone surrogates."""
    if s.isascii():
        if "\x00" in s:
            raise Invalid("bad_text", f"{where} contains a NUL character")
        return s
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise Invalid("bad_text", f"{where} contains a lone surrogate (not valid Unicode text)") from None
    if "\x00" in s:
        raise Invalid("bad_text", f"{where} contains a NUL character")
    return s


def _number(obj: dict, field: str, *, required: bool = True, default: float = 0.0) -> float:
    v = obj.get(field)
    t = type(v)
    if t is float or t is int:
        return _bounded(field, v)
    if v is None and field not in obj:
        if required:
            raise Invalid("missing_field", f"missing required field {field!r}")
        return default
    raise Invalid("bad_field", f"field {field!r} must be a number, got {_type_name(v)}")


def _bounded(field: str, v: float | int) -> float:
    """`v` as a float within ±MAX_VALUE (NaN and infinities included in what is refused)."""
    if type(v) is float:
        if v - v != 0.0:
            raise Invalid("non_finite", f"field {field!r} must be a finite number, got {v!r}")
    else:
        try:
            v = float(v)
        except OverflowError:
            raise Invalid("out_of_range", f"field {field!r} is out of range") from None
    if not -MAX_VALUE <= v <= MAX_VALUE:
        raise Invalid("out_of_range", f"field {field!r} is {v!r}, beyond the bound on numbers (±{MAX_VALUE:g})")
    return v


def _string(obj: dict, field: str, *, required: bool = True) -> str | None:
    v = obj.get(field)
    if type(v) is str:
        if not v.strip():
            raise Invalid("bad_field", f"field {field!r} must not be empty")
        return _clean_text(f"field {field!r}", v)
    if v is None and field not in obj and not required:
        return None
    if field not in obj:
        raise Invalid("missing_field", f"missing required field {field!r}")
    raise Invalid("bad_field", f"field {field!r} must be a string, got {_type_name(v)}")


def _path(rest: str, what: str) -> str:
    """The id part of a topic (`sensors/{id}`): non-empty, no empty segments, no wildcards."""
    if not rest:
        raise Invalid("bad_topic", f"topic has no {what}")
    if "//" in rest or rest[0] == "/" or rest[-1] == "/":
        raise Invalid("bad_topic", f"{what} {rest[:_TOPIC_TEXT]!r} has an empty topic segment")
    if "+" in rest or "#" in rest or "\x00" in rest:
        raise Invalid("bad_topic", f"{what} {rest[:_TOPIC_TEXT]!r} contains a wildcard or NUL character")
    if len(rest) > MAX_ID_BYTES // 4 and len(rest.encode()) > MAX_ID_BYTES:
        raise Invalid("bad_topic", f"{what} {rest[:_TOPIC_TEXT]!r}… is over {MAX_ID_BYTES} bytes")
    return _clean_text(what, rest)


class Validator:
    """Validation for one configuration (topic prefixes, payload limit)."""

    def __init__(self, cfg: Config):
        m = cfg.mqtt
        self.max_payload = m.max_payload
        self.sensors = m.sensors_prefix + "/"
        self.market = m.market_prefix + "/"
        self.positions = m.portfolio_prefix + "/positions"
        self.pnl = m.portfolio_prefix + "/pnl"
        self.news = m.news_prefix + "/"
        self.shapes = (f"expected {self.sensors}{{id}}, {self.market}{{symbol}}/trade|quote, "
                       f"{m.portfolio_prefix}/positions|pnl or {self.news}{{source}}")  # this agent's topics
        self._names: dict[str, bool] = {}  # field name -> is a metric name (bounded cache)

    def parse(self, topic: str, payload: bytes, received_at: datetime) -> Parsed | DeadLetter:
        try:
            if type(payload) is not bytes:
                payload = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else bytes(payload)
            if len(payload) > self.max_payload:
                raise Invalid("too_large", f"payload of {len(payload)} bytes exceeds the {self.max_payload}-byte limit")
            return self._route(topic, payload, received_at)
        except Invalid as e:
            return dead_letter(topic, payload, str(e), received_at, e.code)
        except Exception as e:  # noqa: BLE001 - a bug here must cost one message, never the agent
            return dead_letter(topic, payload, f"internal validation error: {type(e).__name__}: {e}", received_at,
                               "internal")

    def feed(self, topic: str) -> str | None:
        """The input feed (a `RECORD_TYPES` name) a topic's shape routes it to, None for none: what `parse` would
        make of it, without reading the payload (a replay of some feeds skips the others undecoded)."""
        if topic.startswith(self.sensors):
            return "sensor"
        if topic.startswith(self.market):
            feed = topic.rpartition("/")[2]
            return feed if feed == "trade" or feed == "quote" else None
        if topic == self.positions:
            return "position"
        if topic == self.pnl:
            return "pnl"
        return "news" if topic.startswith(self.news) else None

    def sensor_of(self, topic: str) -> str | None:
        """The sensor id a sensor topic names, unchecked (None: another feed's topic), without reading the
        payload (a replay of some sensors skips the others undecoded)."""
        return topic[len(self.sensors) :] if topic.startswith(self.sensors) else None

    def _route(self, topic: str, payload: bytes, received_at: datetime) -> Parsed:
        feed = self.feed(topic)
        if feed == "sensor":
            sensor_id = _path(self.sensor_of(topic), "sensor id")
            text, obj = _decode(payload)
            return Parsed("sensor", self._sensor(sensor_id, obj, received_at), text)
        if feed == "trade" or feed == "quote":
            symbol = _path(topic[len(self.market) :].rpartition("/")[0], "symbol")
            if "/" in symbol:
                raise Invalid("bad_topic", f"symbol {symbol[:_TOPIC_TEXT]!r} must be one topic segment")
            text, obj = _decode(payload)
            ts = self._ts(obj, received_at)
            if feed == "trade":
                return Parsed("trade", self._trade(symbol, ts, obj), text)
            return Parsed("quote", self._quote(symbol, ts, obj), text)
        if feed == "position":
            text, obj = _decode(payload)
            ts = self._ts(obj, received_at)
            symbol = _string(obj, "symbol")
            return Parsed("position", Position(symbol=symbol, ts=ts, quantity=_number(obj, "quantity")), text)
        if feed == "pnl":
            text, obj = _decode(payload)
            return Parsed("pnl", Pnl(ts=self._ts(obj, received_at), pnl=_number(obj, "pnl")), text)
        if feed == "news":
            source = _path(topic[len(self.news) :], "news source")
            text, obj = _decode(payload)
            return Parsed("news", self._headline(source, obj, received_at), text)
        raise Invalid("bad_topic", f"unknown topic shape ({self.shapes})")

    def _ts(self, obj: dict, received_at: datetime) -> datetime:
        raw = obj.get("ts")
        if raw is None and "ts" not in obj:
            return received_at
        try:
            if type(raw) is float and 0.0 <= raw < MAX_EPOCH:  # the common case, twice as fast as fromtimestamp
                ts = _EPOCH + timedelta(seconds=raw)
            else:
                ts = parse_timestamp(raw)
        except ValueError as e:
            raise Invalid("bad_timestamp", f"field 'ts': {e}{milliseconds_hint(raw)}") from None
        if ts < _EPOCH:
            raise Invalid("bad_timestamp", f"field 'ts' is before 1970: {raw!r}")
        if ts - received_at > MAX_FUTURE:
            raise Invalid("bad_timestamp", f"field 'ts' is {(ts - received_at).total_seconds():.0f} s in the future (limit 300 s)")
        return ts

    def _is_metric_name(self, name: str) -> bool:
        known = self._names.get(name)
        if known is None:
            known = _METRIC_NAME.fullmatch(name) is not None
            if len(self._names) < 65536:
                self._names[name] = known
        return known

    def _sensor(self, sensor_id: str, obj: dict, received_at: datetime) -> SensorReading:
        metrics: dict[str, float] = {}
        attrs: dict[str, object] = {}
        for name, v in obj.items():
            if name == "ts":
                continue
            t = type(v)
            if t is float or t is int:
                v = _bounded(name, v)
            elif name in REQUIRED_NUMERIC:
                raise Invalid("bad_field", f"field {name!r} must be a number, got {_type_name(v)}")
            elif t is str or t is bool:
                attrs[_clean_text("field name", name)] = _clean_text(f"field {name!r}", v) if t is str else v
                continue
            else:
                raise Invalid("bad_field", f"field {_clean_text('field name', name)!r} must be a number, string or "
                              f"boolean (a flat object), got {_type_name(v)}")
            if not self._is_metric_name(name):
                raise Invalid("unknown_metric", f"numeric field {name[:64]!r} is not a metric name ([a-z][a-z0-9_]*)")
            metrics[name] = v
        if not metrics:
            raise Invalid("no_metric", "no metric: a reading needs at least one numeric field")
        return SensorReading(sensor_id=sensor_id, ts=self._ts(obj, received_at), metrics=metrics, attrs=attrs)

    @staticmethod
    def _trade(symbol: str, ts: datetime, obj: dict) -> Trade:
        price, size = _number(obj, "price"), _number(obj, "size")
        if price < MIN_PRICE:
            raise Invalid("bad_field", f"field 'price' must be at least {MIN_PRICE:g}, got {price!r}")
        if size < MIN_PRICE:
            raise Invalid("bad_field", f"field 'size' must be at least {MIN_PRICE:g}, got {size!r}")
        return Trade(symbol=symbol, ts=ts, price=price, size=size)

    @staticmethod
    def _quote(symbol: str, ts: datetime, obj: dict) -> Quote:
        bid, ask = _number(obj, "bid"), _number(obj, "ask")
        if bid < MIN_PRICE:
            raise Invalid("bad_field", f"field 'bid' must be at least {MIN_PRICE:g}, got {bid!r}")
        if ask < bid:
            raise Invalid("bad_field", f"field 'ask' ({ask!r}) must be >= bid ({bid!r})")
        bid_size = _number(obj, "bid_size", required=False)
        ask_size = _number(obj, "ask_size", required=False)
        if bid_size < 0 or ask_size < 0:
            raise Invalid("bad_field", "fields 'bid_size' and 'ask_size' must be >= 0")
        return Quote(symbol=symbol, ts=ts, bid=bid, ask=ask, bid_size=bid_size, ask_size=ask_size)

    def _headline(self, source: str, obj: dict, received_at: datetime) -> Headline:
        headline = _string(obj, "headline")
        if len(headline) > MAX_HEADLINE:
            raise Invalid("too_large", f"field 'headline' is {len(headline)} characters (limit {MAX_HEADLINE})")
        symbols = obj.get("symbols", [])
        if type(symbols) is not list:
            raise Invalid("bad_field", f"field 'symbols' must be an array of strings, got {_type_name(symbols)}")
        for i, s in enumerate(symbols):
            if type(s) is not str or not s.strip():
                raise Invalid("bad_field", f"field 'symbols'[{i}] must be a non-empty string, got {_type_name(s)}")
            _clean_text(f"field 'symbols'[{i}]", s)
        ts = self._ts(obj, received_at)
        hid = _string(obj, "id", required=False)
        if hid is None:  # a stable id from the content, so replays and redeliveries agree
            hid = hashlib.blake2b(f"{source}\x1f{headline}".encode(), digest_size=8).hexdigest()
        return Headline(source=source, ts=ts, headline=headline, symbols=symbols, id=hid)


def _printable_topic(topic: object) -> str:
    """The topic as storable text: lone surrogates and NULs escaped."""
    text = topic if isinstance(topic, str) else repr(topic)
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def dead_letter(topic: str, payload: bytes, reason: str, received_at: datetime, code: str) -> DeadLetter:
    """A DeadLetter (docs/reference/events.md): payload as text, at most 4 KiB; base64 when not UTF-8 text,
    and then the reason ends with BASE64_NOTE, the one mark a reader of the log or MQTT has of the encoding."""
    topic = _printable_topic(topic)
    if not isinstance(payload, (bytes, bytearray)):
        payload = repr(payload).encode("utf-8", "backslashreplace")
    note = ""
    try:
        head = payload[:DEAD_LETTER_BYTES]
        text = payload.decode("utf-8")
        if "\x00" in text:
            raise UnicodeError("NUL")
        if len(payload) > DEAD_LETTER_BYTES:
            text = head.decode("utf-8", "ignore")  # drops only a character split by the cut
    except UnicodeError:
        text = base64.b64encode(payload[: DEAD_LETTER_BYTES // 4 * 3]).decode("ascii")
        note = BASE64_NOTE
    reason = _printable_topic(f"{topic[:_TOPIC_TEXT]}: {reason}{note}")
    return DeadLetter(topic=topic, payload=text, reason=reason, received_at=received_at, code=code)


_validators: dict[tuple, Validator] = {}


def parse(topic: str, payload: bytes, received_at: datetime, cfg: Config) -> Parsed | DeadLetter:
    """Validate one message: `Parsed(kind, record, text)` or a `DeadLetter` with its reason. Never raises."""
    m = cfg.mqtt
    key = (m.sensors_prefix, m.market_prefix, m.portfolio_prefix, m.news_prefix, m.max_payload)
    v = _validators.get(key)
    if v is None:
        v = _validators[key] = Validator(cfg)
    return v.parse(topic, payload, received_at)
