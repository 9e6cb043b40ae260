"""Validation rules of docs/reference/topics.md, one table row per rule, plus properties over arbitrary input."""

import base64
import json
from datetime import datetime

import pytest
from edgewatch.agent.config import Config
from edgewatch.agent.ingest.validate import MAX_VALUE, Parsed, parse
from edgewatch.agent.kinds import REASON_CODES
from edgewatch.agent.records import (
    DeadLetter,
    Headline,
    Pnl,
    Position,
    Quote,
    SensorReading,
    Trade,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

NOW = datetime(2026, 1, 2, 3, 4, 5)
CFG = Config()


def check(topic: str, payload) -> Parsed | DeadLetter:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return parse(topic, raw, NOW, CFG)


ACCEPTED = [
    ("sensors/s1", {"temperature": 21.5}, "sensor"),
    ("sensors/site/a/b", {"temperature": 1, "humidity": 40, "status": "ok", "door_open": True}, "sensor"),
    ("sensors/s1", {"vibration_x2": -3.5}, "sensor"),
    ("sensors/s1", {"ts": "2026-01-02T03:04:00+00:00", "battery": 3.3}, "sensor"),
    ("sensors/s1", {"ts": 1767323045, "pressure": 1013}, "sensor"),
    ("market/AAPL/trade", {"price": 190.5, "size": 100}, "trade"),
    ("market/BRK.B/quote", {"bid": 1, "ask": 1}, "quote"),
    ("market/AAPL/quote", {"bid": 1, "ask": 1.1, "bid_size": 5, "ask_size": 0}, "quote"),
    ("portfolio/positions", {"symbol": "AAPL", "quantity": -50}, "position"),
    ("portfolio/pnl", {"pnl": -1234.5}, "pnl"),
    ("news/reuters", {"headline": "Apple beats estimates", "symbols": ["AAPL"], "id": "r-1"}, "news"),
    ("news/wire", {"headline": "x" * 2000}, "news"),
    ("sensors/s1", {"temperature": 20, "ts": "2026-01-02T03:08:05Z"}, "sensor"),  # 4 min ahead: allowed
]


@pytest.mark.parametrize("topic,payload,kind", ACCEPTED)
def test_accepted(topic, payload, kind):
    r = check(topic, payload)
    assert isinstance(r, Parsed), r
    assert r.kind == kind
    assert json.loads(r.text) == payload


REJECTED = [
    # (topic, payload, words the reason must contain)
    ("sensors/x", {"temperature": "hot"}, "field 'temperature' must be a number, got string"),
    ("sensors/x", {"humidity": None}, "field 'humidity' must be a number, got null"),
    ("sensors/x", {"battery": True}, "field 'battery' must be a number, got boolean"),
    ("sensors/x", {"pressure": 1, "nested": {"a": 1}}, "field 'nested' must be a number, string or boolean"),
    ("sensors/x", {"a": [1, 2]}, "got array"),
    ("sensors/x", {"status": "ok"}, "no metric"),
    ("sensors/x", {}, "no metric"),
    ("sensors/x", {"Temp": 1}, "not a metric name"),
    ("sensors/x", {"9lives": 1}, "not a metric name"),
    ("sensors/x", b'{"temperature": NaN}', "NaN"),
    ("sensors/x", b'{"temperature": Infinity}', "Infinity"),
    ("sensors/x", b'{"temperature": -Infinity}', "-Infinity"),
    ("sensors/x", b'{"temperature": 1e999}', "must be a finite number, got inf"),
    ("sensors/x", b'{"temperature": 1' + b"0" * 400 + b"}", "out of range"),
    ("sensors/x", b'{"temperature": 1' + b"0" * 5000 + b"}", "not acceptable JSON"),
    ("sensors/x", b'{"a": 1, "s": "\\ud800"}', "lone surrogate"),
    ("sensors/x", b'{"a": 1, "s\\udfff": "v"}', "lone surrogate"),
    ("sensors/x", b'{"a": 1, "s": "a\\u0000b"}', "NUL"),
    ("sensors/x", b'{"a": 1}\x00', "not JSON"),
    ("sensors/x", b"\xff\xfe{}", "not UTF-8"),
    ("sensors/x", b'{"a": "\xed\xa0\x80"}', "not UTF-8"),  # a surrogate encoded in UTF-8
    ("sensors/x", b"not json", "not JSON"),
    ("sensors/x", b"", "not JSON"),
    ("sensors/x", b"[1, 2]", "must be a JSON object, got array"),
    ("sensors/x", b"42", "got number"),
    ("sensors/x", b"[" * 30000 + b"]" * 30000, "nested too deeply"),
    ("sensors/x", b'{"a": ' + b"[" * 30000, "nested too deeply"),
    ("sensors/x", {"temperature": 1, "ts": "yesterday"}, "unparsable timestamp"),
    ("sensors/x", {"temperature": 1, "ts": "2026-01-02T03:04:05"}, "without a timezone"),
    ("sensors/x", {"temperature": 1, "ts": -5}, "out of range"),
    ("sensors/x", {"temperature": 1, "ts": 1767323045123}, "looks like milliseconds"),
    ("sensors/x", {"temperature": 1, "ts": True}, "boolean"),
    ("sensors/x", {"temperature": 1, "ts": "1677-01-01T00:00:00Z"}, "before 1970"),
    ("sensors/x", {"temperature": 1, "ts": "2026-01-02T03:10:06Z"}, "in the future"),
    ("sensors/x", {"temperature": 1, "ts": NOW.timestamp() + 3600 * 24}, "in the future"),
    ("sensors", {"temperature": 1}, "unknown topic shape"),
    ("sensors/", {"temperature": 1}, "no sensor id"),
    ("sensors//x", {"temperature": 1}, "empty topic segment"),
    ("sensors/x/", {"temperature": 1}, "empty topic segment"),
    ("sensors/x/+", {"temperature": 1}, "wildcard"),
    ("sensors/#", {"temperature": 1}, "wildcard"),
    ("sensors/\udc80", {"temperature": 1}, "lone surrogate"),
    ("weather/x", {"temperature": 1}, "unknown topic shape"),
    ("", {"temperature": 1}, "unknown topic shape"),
    ("market/AAPL/bars", {"price": 1, "size": 1}, "unknown topic shape"),
    ("market/trade", {"price": 1, "size": 1}, "no symbol"),
    ("market/A/B/trade", {"price": 1, "size": 1}, "one topic segment"),
    ("market/AAPL/trade", {"price": 0, "size": 1}, "field 'price' must be at least 1e-12"),
    ("market/AAPL/trade", {"price": 5e-324, "size": 1}, "field 'price' must be at least 1e-12"),  # inf moves
    ("sensors/x", {"ts": "0001-01-01T00:00:00+01:00", "temperature": 1}, "outside the years 1 to 9999 in UTC"),
    ("sensors/" + "s" * 1025, {"temperature": 1}, "is over 1024 bytes"),  # its events' topics: too long for MQTT
    ("market/" + "é" * 513 + "/trade", {"price": 1, "size": 1}, "is over 1024 bytes"),
    ("market/AAPL/trade", {"price": 1, "size": -1}, "field 'size' must be at least 1e-12"),
    ("market/AAPL/trade", {"price": "1", "size": 1}, "field 'price' must be a number, got string"),
    ("market/AAPL/trade", {"size": 1}, "missing required field 'price'"),
    ("market/AAPL/quote", {"bid": 2, "ask": 1}, "must be >= bid"),
    ("market/AAPL/quote", {"bid": 0, "ask": 1}, "field 'bid' must be at least 1e-12"),
    ("market/AAPL/quote", {"bid": 1, "ask": 2, "bid_size": -1}, "must be >= 0"),
    ("portfolio/positions", {"quantity": 5}, "missing required field 'symbol'"),
    ("portfolio/positions", {"symbol": 5, "quantity": 5}, "field 'symbol' must be a string, got number"),
    ("portfolio/positions", {"symbol": "AAPL", "quantity": "5"}, "field 'quantity' must be a number"),
    ("portfolio/pnl", {"pnl": None}, "field 'pnl' must be a number, got null"),
    ("portfolio/other", {"pnl": 1}, "unknown topic shape"),
    ("news/wire", {"headline": ""}, "must not be empty"),
    ("news/wire", {"headline": "x" * 2001}, "2001 characters (limit 2000)"),
    ("news/wire", {"headline": "h", "symbols": "AAPL"}, "field 'symbols' must be an array of strings"),
    ("news/wire", {"headline": "h", "symbols": ["AAPL", 3]}, "field 'symbols'[1] must be a non-empty string"),
    ("news/wire", {"headline": "h", "id": 7}, "field 'id' must be a string"),
    ("news/wire", {"symbols": []}, "missing required field 'headline'"),
]


@pytest.mark.parametrize("topic,payload,words", REJECTED)
def test_rejected_with_reason(topic, payload, words):
    r = check(topic, payload)
    assert isinstance(r, DeadLetter), r
    assert words in r.reason
    assert r.reason.startswith(r.topic[:50])
    assert r.received_at == NOW
    assert r.code in REASON_CODES
    r.reason.encode("utf-8")  # storable text, whatever the input
    r.topic.encode("utf-8")


CODES = [  # one message per reason code: the code is the stable label (metric, `deadletters --code`)
    ("sensors/x", b"\xff\xfe{}", "not_utf8"),
    ("sensors/x", b"not json", "bad_json"),
    ("sensors/x", b"[" * 30000 + b"]" * 30000, "bad_json"),
    ("sensors/x", b"[1, 2]", "not_object"),
    ("sensors/x", b'{"temperature": NaN}', "non_finite"),
    ("sensors/x", b'{"temperature": 1e999}', "non_finite"),
    ("sensors/x", b'{"a": 1, "s": "a\\u0000b"}', "bad_text"),
    ("sensors/x", b"{" + b" " * 70000 + b"}", "too_large"),
    ("news/wire", {"headline": "x" * 2001}, "too_large"),
    ("weather/x", {"temperature": 1}, "bad_topic"),
    ("sensors//x", {"temperature": 1}, "bad_topic"),
    ("market/AAPL/trade", {"size": 1}, "missing_field"),
    ("market/AAPL/trade", {"price": 0, "size": 1}, "bad_field"),
    ("sensors/x", {"temperature": 1, "ts": "yesterday"}, "bad_timestamp"),
    ("sensors/x", {"temperature": 1, "ts": "0001-01-01T00:00:00+01:00"}, "bad_timestamp"),  # was `internal`
    ("sensors/x", {"Temp": 1}, "unknown_metric"),
    ("sensors/x", {"status": "ok"}, "no_metric"),
]


@pytest.mark.parametrize("topic,payload,code", CODES)
def test_every_dead_letter_carries_a_stable_reason_code(topic, payload, code):
    assert check(topic, payload).code == code


def test_a_bug_in_validation_is_an_internal_dead_letter(monkeypatch):
    monkeypatch.setattr("edgewatch.agent.ingest.validate.Validator._route", lambda *a: 1 / 0)
    r = check("sensors/x", {"temperature": 1})
    assert r.code == "internal" and "ZeroDivisionError" in r.reason


def test_reason_reads_like_the_spec_example():
    r = check("sensors/x", {"temperature": "hot"})
    assert r.reason == "sensors/x: field 'temperature' must be a number, got string"


def test_size_limit_is_checked_before_decoding():
    big = b'{"temperature": 1, "pad": "' + b"x" * 70000 + b'"}'
    r = check("sensors/x", big)
    assert isinstance(r, DeadLetter) and "exceeds the 65536-byte limit" in r.reason
    assert len(r.payload.encode()) <= 4096
    cfg = Config()
    cfg.mqtt.max_payload = 200_000
    assert isinstance(parse("sensors/x", big, NOW, cfg), Parsed)


def test_dead_letter_payload_text_base64_and_truncation():
    r = check("sensors/x", b"\xff\x00binary")
    assert base64.b64decode(r.payload) == b"\xff\x00binary"
    assert r.reason.endswith("(payload shown base64)")  # the reader's only way to know
    r = check("sensors/x", b'{"a": "\x00"}')  # NUL is kept losslessly as base64
    assert base64.b64decode(r.payload) == b'{"a": "\x00"}' and r.reason.endswith("(payload shown base64)")
    r = check("sensors/x", ("é" * 40000).encode())
    assert r.payload == "é" * 2048  # cut at 4 KiB without splitting a character
    assert "base64" not in r.reason and "base64" not in check("sensors/x", b"{bad").reason
    r = check("sensors/x", b"\xff" * 10000)
    assert len(r.payload) == 4096 and base64.b64decode(r.payload) == b"\xff" * 3072


def test_records_are_typed():
    r = check("sensors/a/b", {"ts": 1767323045.25, "temperature": 20, "status": "ok", "door": False})
    assert isinstance(r.record, SensorReading)
    assert r.record.sensor_id == "a/b"
    assert r.record.ts == datetime(2026, 1, 2, 3, 4, 5, 250000)
    assert r.record.metrics == {"temperature": 20.0} and type(r.record.metrics["temperature"]) is float
    assert r.record.attrs == {"status": "ok", "door": False}
    assert check("sensors/s", {"a": 1}).record.ts == NOW  # no ts: the receive time
    t = check("market/AAPL/trade", {"price": 10, "size": 2, "ts": "2026-01-02T04:04:05+01:00"}).record
    assert isinstance(t, Trade) and (t.symbol, t.price, t.size, t.ts) == ("AAPL", 10.0, 2.0, NOW)
    q = check("market/AAPL/quote", {"bid": 1, "ask": 2}).record
    assert isinstance(q, Quote) and (q.bid_size, q.ask_size) == (0.0, 0.0)
    p = check("portfolio/positions", {"symbol": "AAPL", "quantity": 3}).record
    assert isinstance(p, Position) and p.quantity == 3.0
    assert isinstance(check("portfolio/pnl", {"pnl": 1}).record, Pnl)
    h = check("news/rt", {"headline": "Fed holds"}).record
    assert isinstance(h, Headline) and h.symbols == [] and h.id  # a content-derived id when none is sent
    assert h.id == check("news/rt", {"headline": "Fed holds"}).record.id != check("news/rt", {"headline": "x"}).record.id


def test_configured_prefixes():
    cfg = Config()
    cfg.mqtt.sensors_prefix = "plant7/sensors"
    cfg.mqtt.portfolio_prefix = "acct"
    assert parse("plant7/sensors/s1", b'{"a": 1}', NOW, cfg).record.sensor_id == "s1"
    assert parse("acct/pnl", b'{"pnl": 1}', NOW, cfg).kind == "pnl"
    wrong = parse("sensors/s1", b'{"a": 1}', NOW, cfg)
    assert isinstance(wrong, DeadLetter) and "expected plant7/sensors/{id}," in wrong.reason  # this agent's shapes
    assert "acct/positions|pnl or news/{source}" in wrong.reason


def test_non_bytes_payload_never_raises():
    assert isinstance(parse("sensors/x", None, NOW, CFG), DeadLetter)
    assert parse("sensors/x", bytearray(b'{"a": 1}'), NOW, CFG).kind == "sensor"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topic=st.text(max_size=40), payload=st.binary(max_size=300))
def test_never_raises_on_any_bytes(topic, payload):
    r = parse(topic, payload, NOW, CFG)
    assert isinstance(r, (Parsed, DeadLetter))
    if isinstance(r, DeadLetter):
        assert r.reason and r.reason.encode("utf-8")


_json = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=10),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3),
    max_leaves=10,
)


@settings(max_examples=400, deadline=None)
@given(
    prefix=st.sampled_from(["sensors/a", "market/X/trade", "market/X/quote", "portfolio/positions", "portfolio/pnl", "news/n"]),
    obj=st.dictionaries(st.sampled_from(["ts", "temperature", "price", "size", "bid", "ask", "symbol", "quantity",
                                         "pnl", "headline", "symbols", "id", "x", "Bad"]), _json, max_size=6),
)
def test_never_raises_on_any_json(prefix, obj):
    r = parse(prefix, json.dumps(obj).encode(), NOW, CFG)
    assert isinstance(r, (Parsed, DeadLetter))


_metric = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True).filter(lambda n: n != "ts")
_finite = st.floats(-MAX_VALUE, MAX_VALUE) | st.integers(-(10**15), 10**15)  # within the bound on numbers


@settings(max_examples=300, deadline=None)
@given(
    sensor_id=st.lists(st.from_regex(r"[A-Za-z0-9_.:-]{1,8}", fullmatch=True), min_size=1, max_size=3).map("/".join),
    metrics=st.dictionaries(_metric, _finite, min_size=1, max_size=8),
    attrs=st.dictionaries(st.from_regex(r"[A-Za-z_]{1,8}", fullmatch=True), st.text(max_size=20).filter(
        lambda s: "\x00" not in s) | st.booleans(), max_size=3),
    ts=st.none() | st.floats(0, NOW.timestamp()) | st.datetimes(min_value=datetime(1970, 1, 1), max_value=NOW).map(lambda d: d.isoformat() + "Z"),
)
def test_valid_generated_readings_are_accepted(sensor_id, metrics, attrs, ts):
    attrs = {k: v for k, v in attrs.items() if k not in metrics and k not in ("temperature", "humidity",
                                                                               "pressure", "battery", "ts")}
    obj = {**metrics, **attrs} | ({} if ts is None else {"ts": ts})
    r = parse(f"sensors/{sensor_id}", json.dumps(obj).encode(), NOW, CFG)
    assert isinstance(r, Parsed), r
    assert r.record.sensor_id == sensor_id
    assert r.record.metrics == {k: float(v) for k, v in metrics.items()}
    assert r.record.attrs == attrs


@settings(max_examples=200, deadline=None)
@given(
    symbol=st.from_regex(r"[A-Z][A-Z.]{0,5}", fullmatch=True),
    price=st.floats(1e-6, 1e9), size=st.floats(1e-6, 1e9), spread=st.floats(0, 10),
    qty=_finite, headline=st.text(min_size=1, max_size=2000).filter(lambda s: s.strip() and "\x00" not in s),
)
def test_valid_generated_market_and_news_are_accepted(symbol, price, size, spread, qty, headline):
    headline = headline.encode("utf-8", "replace").decode("utf-8", "replace")  # no lone surrogates
    for topic, obj in [
        (f"market/{symbol}/trade", {"price": price, "size": size}),
        (f"market/{symbol}/quote", {"bid": price, "ask": price + spread}),
        ("portfolio/positions", {"symbol": symbol, "quantity": qty}),
        ("portfolio/pnl", {"pnl": qty}),
        ("news/wire", {"headline": headline, "symbols": [symbol]}),
    ]:
        r = parse(topic, json.dumps(obj).encode(), NOW, CFG)
        assert isinstance(r, Parsed), (topic, r)


@pytest.mark.parametrize(("topic", "obj", "field"), [
    ("market/X/trade", {"price": 1e308, "size": 1e308}, "price"),
    ("market/X/trade", {"price": 10.0, "size": 2e15}, "size"),
    ("market/X/quote", {"bid": 1.0, "ask": 1e300}, "ask"),
    ("portfolio/positions", {"symbol": "X", "quantity": -(10**16)}, "quantity"),
    ("portfolio/pnl", {"pnl": 1e308}, "pnl"),
    ("sensors/s1", {"temperature": 20.0, "counter": 1e200}, "counter"),
])
def test_numbers_beyond_the_bound_are_dead_letters_with_the_reason(topic, obj, field):
    """Finite but huge numbers would overflow downstream (price x size, P&L sums): refused at the door."""
    r = parse(topic, json.dumps(obj).encode(), NOW, CFG)
    assert isinstance(r, DeadLetter), r
    assert f"field {field!r}" in r.reason and "beyond the bound on numbers" in r.reason
    assert r.code == "out_of_range"
    edge = {k: (MAX_VALUE if v == obj[field] else v) for k, v in obj.items()}
    assert isinstance(parse(topic, json.dumps(edge).encode(), NOW, CFG), Parsed)  # the bound itself is fine
