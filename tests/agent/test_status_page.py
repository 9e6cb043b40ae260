"""The status page's data and HTTP API: the reading ring, the log views, the JSON routes and the live stream."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from edgewatch.agent import config
from edgewatch.agent.commands.run import Service
from edgewatch.agent.eventlog.store import Store
from edgewatch.agent.eventlog.views import StatusViews, epoch
from edgewatch.agent.ingest.capture import CaptureWriter
from edgewatch.agent.ingest.ring import CHART_METRICS, ReadingRing
from edgewatch.agent.ops import status_page
from edgewatch.agent.ops.http import serve
from edgewatch.agent.records import Bar, SensorReading, make_event
from edgewatch.agent.testing.harness import wait_for
from edgewatch.agent.timeutil import utcnow
from prometheus_client import CollectorRegistry

SENSOR = "site0/s1"


def reading(sensor_id: str, ts, value: float) -> SensorReading:
    return SensorReading(sensor_id=sensor_id, ts=ts, metrics={"temperature": value}, attrs={})


def extend(ring: ReadingRing, readings: list[SensorReading]) -> None:
    ring.extend([r.sensor_id for r in readings], readings)


def test_ring_keeps_the_latest_readings_of_the_latest_sensors():
    ring = ReadingRing(length=3, sensors=2)
    t0 = utcnow()
    extend(ring, [reading("a", t0 + timedelta(seconds=i), float(i)) for i in range(5)])
    extend(ring, [reading("b", t0, 1.0), reading("a", t0 + timedelta(seconds=9), 9.0), reading("c", t0, 2.0)])
    assert [m["temperature"] for _, m in ring.readings("a")] == [3.0, 4.0, 9.0]
    assert ring.readings("b") == []  # least recently heard of three sensors: dropped
    assert set(ring.last_seen()) == {"a", "c"}
    off = ReadingRing(length=0, sensors=10)
    extend(off, [reading("a", t0, 1.0)])
    assert off.last_seen() == {}


def test_ring_holds_a_bounded_part_of_each_reading():
    """A message may carry 64 KiB of attributes or thousands of metrics: the ring keeps the time and the first
    CHART_METRICS metrics, so its memory is bounded by its counts, whatever the readings hold."""
    ring = ReadingRing(length=2, sensors=1)
    big = SensorReading(sensor_id="a", ts=utcnow(), metrics={f"m{i:04d}": float(i) for i in range(4000)},
                        attrs={f"a{i}": "x" * 10 for i in range(4000)})
    extend(ring, [big])
    [(when, held)] = ring.readings("a")
    assert when == big.ts and list(held) == [f"m{i:04d}" for i in range(CHART_METRICS)]
    small = reading("a", utcnow(), 1.0)
    extend(ring, [small])
    assert ring.readings("a")[-1][1] is small.metrics  # a usual reading's metrics are held without a copy


def health(sensor: str, ts, score: float, band: str):
    return make_event("health", sensor, ts, "info", f"{sensor} health", {"score": score, "band": band,
                                                                          "last_reading": ts.isoformat() + "Z"})


def maintenance(sensor: str, ts, state: str, active: list[str]):
    return make_event("maintenance", sensor, ts, "warning", f"{sensor} maintenance {state}",
                      {"state": state, "reasons": active or ["drift"], "active": active}, state)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def agent_cfg(request, tmp_path) -> config.Config:
    """An agent configuration whose log is SQLite or PostgreSQL, with a capture folder."""
    cfg = config.Config()
    cfg.store.url = str(tmp_path / "events.db") if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    cfg.record.path = str(tmp_path / "capture")
    return cfg


@pytest.fixture
def log(agent_cfg):
    store = Store(agent_cfg.store.url)
    yield store
    store.close()


def test_fleet_follows_the_log_and_readings_go_past_the_ring_into_the_capture_files(agent_cfg, log):
    now = utcnow()
    capture = CaptureWriter(agent_cfg.record)
    ring = ReadingRing(length=5, sensors=10)
    for i in range(20):  # 20 readings one second apart: the first 15 only in the capture file
        ts = now - timedelta(seconds=20 - i)
        capture.write(ts, f"sensors/{SENSOR}", f'{{"ts": {epoch(ts)}, "temperature": {i}}}')
        if i >= 15:
            extend(ring, [reading(SENSOR, ts, float(i))])
    capture.write(now - timedelta(seconds=10), "sensors/site0/s10", '{"temperature": 99}')  # a longer id, same prefix
    capture.close()
    log.write(events=[health(SENSOR, now - timedelta(seconds=5), 0.4, "poor"),
                      health("site1/s2", now - timedelta(seconds=5), 0.9, "good"),
                      maintenance(SENSOR, now - timedelta(seconds=4), "raised", ["drift"]),
                      make_event("anomaly", SENSOR, now - timedelta(seconds=3), "critical", "spike",
                                 {"metric": "temperature", "value": 19.0, "score": 1.0})])
    views = StatusViews(agent_cfg, ring)
    try:
        rows = views.fleet()
        assert [r["sensor"] for r in rows] == [SENSOR, "site1/s2"]  # worst first
        assert rows[0]["band"] == "poor" and rows[0]["flags"] == ["drift"] and rows[1]["flags"] == []
        assert rows[0]["last_seen"].startswith((now - timedelta(seconds=1)).isoformat()[:19])  # from the ring

        log.write(events=[maintenance(SENSOR, now, "cleared", []), health(SENSOR, now, 0.95, "good")])
        rows = views.fleet()  # caught up by tailing the log
        assert rows[0]["sensor"] == "site1/s2" and rows[1] == {**rows[1], "score": 0.95, "flags": []}

        view = views.sensor(SENSOR, timedelta(minutes=10))
        assert view["series"]["temperature"] == [float(i) for i in range(20)]  # 15 from the file, 5 from the ring
        assert view["t"] == sorted(view["t"]) and len(view["t"]) == 20
        assert [e["kind"] for e in view["events"]] == ["health", "maintenance", "anomaly", "maintenance", "health"]
        assert views.sensor(SENSOR, timedelta(seconds=8))["series"]["temperature"] == [float(i) for i in range(13, 20)]
    finally:
        views.close()


@pytest.fixture
def page(agent_cfg, log, monkeypatch):
    """The status page on a real HTTP server over a log with two events, one VWAP bar and its signal."""
    monkeypatch.setattr(status_page, "MAX_STREAMS", 2)
    monkeypatch.setattr(status_page, "POLL_SECONDS", 0.05)
    monkeypatch.setattr(status_page, "KEEPALIVE_SECONDS", 0.1)  # a gone client is noticed at the next write
    now = utcnow()
    bar = Bar(symbol="ACME", start=now - timedelta(seconds=2), end=now - timedelta(seconds=1), open=10.0, high=11.0,
              low=9.5, close=10.5, volume=300.0, vwap=10.2, trades=3)
    log.write(events=[health(SENSOR, now, 0.4, "poor"),
                      make_event("signal", "ACME", bar.end, "info", "ACME BUY", {"signal": "BUY"})], bars=[bar])
    views = StatusViews(agent_cfg, ReadingRing(10, 10))
    server = serve("127.0.0.1:0", CollectorRegistry(), lambda: True, status_page.StatusPage(views))
    yield "http://%s:%d" % server.address
    server.close()
    views.close()


def test_page_static_files_and_json_routes(page):
    html = httpx.get(page + "/status")
    assert html.status_code == 200 and "uPlot.iife.min.js" in html.text and html.headers["content-type"] == "text/html"
    assert html.headers["content-security-policy"].startswith("default-src 'self'")
    js = httpx.get(page + "/status/static/uplot/uPlot.iife.min.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"] and "uPlot" in js.text
    assert httpx.get(page + "/status/static/..%2F..%2Fconfig.py").status_code == 404
    assert httpx.get(page + "/status/api/fleet").json()["sensors"][0]["sensor"] == SENSOR
    assert httpx.get(page + "/status/api/symbols").json() == {"symbols": ["ACME"]}
    acme = httpx.get(page + "/status/api/symbol/ACME").json()
    assert acme["series"]["vwap"] == [10.2] and [e["kind"] for e in acme["events"]] == ["signal"]
    sensor = httpx.get(page + "/status/api/sensor/site0%2Fs1", params={"minutes": "5"}).json()
    assert sensor["sensor"] == SENSOR and [e["kind"] for e in sensor["events"]] == ["health"]
    bad = httpx.get(page + "/status/api/sensor/x", params={"minutes": "1e9"})
    assert bad.status_code == 400 and "minutes" in bad.json()["error"]
    assert httpx.get(page + "/status/api/nothing").status_code == 404
    assert httpx.post(page + "/status/api/fleet").status_code == 405
    assert httpx.get(page + "/metrics").status_code == 200 and httpx.get(page + "/health").json()["ok"] is True


def _frames(lines, count: int) -> list[tuple[int, str]]:
    """The next `count` (id, data) SSE frames from a stream's line iterator."""
    frames, event_id = [], None
    for line in lines:
        if line.startswith("id: "):
            event_id = int(line[4:])
        elif line.startswith("data: "):
            frames.append((event_id, line[6:]))
            if len(frames) == count:
                return frames
    raise AssertionError(f"stream ended after {frames}")


def test_event_stream_resumes_after_the_last_id_and_follows_new_events(page, log):
    first = log.events()
    with httpx.stream("GET", page + "/status/api/events", headers={"Last-Event-ID": str(first[0]["id"])},
                      timeout=10) as stream:
        assert stream.headers["content-type"] == "text/event-stream"
        lines = stream.iter_lines()
        assert _frames(lines, 1)[0][0] == first[1]["id"]  # resumed after the given id
        log.write(events=[make_event("anomaly", SENSOR, utcnow(), "critical", "live one", {})])
        (event_id, data), = _frames(lines, 1)
        assert event_id == first[1]["id"] + 1 and '"live one"' in data


def test_live_streams_are_capped(page):
    with httpx.Client(timeout=10) as client:
        with client.stream("GET", page + "/status/api/events") as a, client.stream("GET", page + "/status/api/events") as b:
            assert a.status_code == b.status_code == 200
            refused = client.get(page + "/status/api/events")
            assert refused.status_code == 503 and "at most 2" in refused.json()["error"]
        # both clients gone: their slots free up at the next keep-alive, and a new stream gets one
        wait_for(lambda: client.get(page + "/status/api/events?after=x").status_code == 400, what="a free slot")


def test_no_page_and_no_ring_when_metrics_are_off(agent_cfg):
    agent_cfg.metrics.listen = ""
    service = Service(agent_cfg)
    try:
        assert service.ring is None and service.manager.ring is None
    finally:
        service.store.close()


def test_sensor_groups_are_counted_and_capped(monkeypatch):
    from edgewatch.agent.ops import metrics

    monkeypatch.setattr(metrics, "MAX_SENSOR_GROUPS", 2)
    monkeypatch.setattr(metrics, "_groups", {})
    registry = metrics.REGISTRY

    def count(group: str) -> float:
        return registry.get_sample_value("edgewatch_sensor_readings_total", {"group": group}) or 0.0

    before = {g: count(g) for g in ("plantA", "plantB", "other")}
    metrics.count_sensor_groups(["plantA/s1", "plantA/s2", "plantB/s1"])
    metrics.count_sensor_groups(["plantA/s1", "plantC/s1", "loose-sensor", "plantD/x"])
    assert count("plantA") - before["plantA"] == 3 and count("plantB") - before["plantB"] == 1
    assert count("other") - before["other"] == 3  # past two groups every new one counts as "other"
    assert registry.get_sample_value("edgewatch_sensor_readings_total", {"group": "plantC"}) is None
