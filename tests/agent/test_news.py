"""News in the agent: headlines → `news` events through the real sidecar, degraded while it is away,
recovered when it is back, and never slowing the market path that runs beside it."""

from __future__ import annotations

import statistics
import threading
import time
from datetime import datetime, timedelta

import csp
import httpx
import pytest
from csp.impl.genericpushadapter import GenericPushAdapter
from edgewatch.agent.analytics.news import news_graph
from edgewatch.agent.analytics.topology import analytics
from edgewatch.agent.config import Config
from edgewatch.agent.records import Headline, Pnl, Position, Quote, SensorReading, Trade
from edgewatch.sidecar.testing import SidecarProcess, wait_ready


def config(url: str) -> Config:
    cfg = Config()
    cfg.sidecar.url = url
    cfg.news.timeout = 0.3
    cfg.news.breaker_reset = 0.5
    return cfg


def utcnow() -> datetime:
    return datetime.utcnow()  # naive UTC: csp's clock in realtime


def headline(text: str, ts: datetime, symbols=("ACME",), id_: str = "") -> Headline:
    return Headline(source="wire", ts=ts, headline=text, symbols=list(symbols), id=id_)


def classify_requests(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith('sidecar_requests_total{endpoint="/v1/classify"'))


def test_replay_mode_is_synchronous_deterministic_and_cached(tiny_model_dir):
    with SidecarProcess(tiny_model_dir) as sidecar:
        start = datetime(2024, 5, 1, 9, 30)
        texts = ["$ACME upgraded to Buy at Citi", "Initech shares fall after weak guidance", "$ACME upgraded to Buy at Citi"]
        items = [headline(t, start + timedelta(seconds=i), symbols=("ACME", "BOLT") if i == 1 else ("ACME",))
                 for i, t in enumerate(texts)]

        @csp.graph
        def g():
            out = news_graph(csp.curve(list[Headline], [(h.ts, [h]) for h in items]), config(sidecar.url))
            csp.add_graph_output("events", out.events)
            csp.add_graph_output("sentiment", out.sentiment)

        before = classify_requests(sidecar.url)
        runs = [csp.run(g, starttime=start, endtime=timedelta(seconds=10)) for _ in range(2)]
        # the repeated text is served from the cache: 2 distinct texts, 2 runs -> 4 requests
        assert classify_requests(sidecar.url) - before == 4
    events = [[e for _, batch in r["events"] for e in batch] for r in runs]
    assert [e.event_id for e in events[0]] == [e.event_id for e in events[1]]
    first = events[0]
    assert [e.ts for e in first] == [h.ts for h in items]  # event time, not wall time
    assert len({e.event_id for e in first}) == 3  # same text, different time: different events
    for e in first:
        assert e.kind == "news" and e.key == "ACME" and e.severity == "info"
        assert e.data["degraded"] is False and e.data["model"] == "tiny-nanogpt"
        assert e.data["sentiment"] in ("bullish", "bearish", "neutral") and 0 < e.data["confidence"] <= 1
    assert first[0].data["sentiment"] == first[2].data["sentiment"]
    sentiments = [s for _, batch in runs[0]["sentiment"] for s in batch]
    assert [s.symbol for s in sentiments] == ["ACME", "ACME", "BOLT", "ACME"]
    s = sentiments[0]
    assert s.score == pytest.approx(first[0].data["scores"]["bullish"] - first[0].data["scores"]["bearish"])


def test_replay_without_sidecar_degrades_at_once():
    start = datetime(2024, 5, 1)
    items = [headline(f"headline {i}", start + timedelta(seconds=i), symbols=(), id_=f"h{i}") for i in range(20)]

    @csp.graph
    def g():
        out = news_graph(csp.curve(list[Headline], [(h.ts, [h]) for h in items]), config("http://127.0.0.1:9"))
        csp.add_graph_output("events", out.events)
        csp.add_graph_output("sentiment", out.sentiment)

    t0 = time.perf_counter()
    result = csp.run(g, starttime=start, endtime=timedelta(minutes=1))
    assert time.perf_counter() - t0 < 2.0  # the breaker opens: no timeout per headline
    events = [e for _, batch in result["events"] for e in batch]
    assert len(events) == 20 and all(e.data["degraded"] for e in events)
    assert all(e.key == "wire" and e.data["sentiment"] == "neutral" and e.data["confidence"] == 0.0 for e in events)
    assert "sentiment" not in result or not result["sentiment"]


def test_disabled_news_makes_no_events():
    cfg = config("http://127.0.0.1:9")
    cfg.news.enabled = False
    start = datetime(2024, 5, 1)

    @csp.graph
    def g():
        out = news_graph(csp.const([headline("ignored", start)]), cfg)
        csp.add_graph_output("events", out.events)

    assert not csp.run(g, starttime=start, endtime=timedelta(seconds=1)).get("events")


def test_sidecar_outage_degrades_news_not_market_and_recovers(tiny_model_dir):
    """Live: the sidecar answers, hangs (SIGSTOP), dies (SIGKILL), comes back; trades flow throughout."""
    sidecar = SidecarProcess(tiny_model_dir)
    cfg = config(sidecar.url)
    feeds = {k: GenericPushAdapter(list[t]) for k, t in
             [("sensors", SensorReading), ("trades", Trade), ("quotes", Quote), ("positions", Position),
              ("pnl", Pnl), ("news", Headline)]}

    @csp.graph
    def g():
        f = {k: a.out() for k, a in feeds.items()}
        out = analytics(f["sensors"], f["trades"], f["quotes"], f["positions"], f["pnl"], f["news"], cfg)
        csp.add_graph_output("events", out.events)

    phases: list[tuple[str, float]] = []
    stop = threading.Event()

    def drive():
        i = 0
        while not stop.is_set():
            now = utcnow()
            feeds["trades"].push_tick([Trade(symbol="ACME", ts=now, price=100.0 if i % 2 else 110.0, size=1.0)])
            if i % 2 == 0:
                feeds["news"].push_tick([headline(f"ACME news number {i}", now)])
            i += 1
            time.sleep(0.05)

    driver = threading.Thread(target=drive)
    runner = None
    try:
        sidecar.start()
        runner = csp.run_on_thread(g, realtime=True, endtime=timedelta(seconds=60))
        for a in feeds.values():
            a.wait_for_start()
        phases.append(("up", time.time()))
        driver.start()
        time.sleep(1.5)
        phases.append(("hung", time.time()))
        sidecar.proc.send_signal(19)  # SIGSTOP: accepts connections, never answers
        time.sleep(1.5)
        phases.append(("dead", time.time()))
        sidecar.kill()
        time.sleep(1.5)
        phases.append(("restarting", time.time()))  # news may still degrade until it answers
        sidecar.start(wait=False)
        wait_ready(sidecar.url, process=sidecar.proc)
        phases.append(("back", time.time()))
        time.sleep(3.0)
    finally:
        stop.set()
        if driver.is_alive():
            driver.join()
        if runner is not None:
            time.sleep(0.5)  # let the last analyses land
        sidecar.stop()  # whatever failed above, never leave the process behind
        if runner is not None:
            runner.stop_engine()
    result = runner.join()

    def phase_of(ts: datetime) -> str:
        t = (ts - datetime(1970, 1, 1)).total_seconds()
        return [name for name, start in phases if start <= t][-1]

    out = [(tick, e) for tick, batch in result["events"] for e in batch]
    news = [(tick, e) for tick, e in out if e.kind == "news"]
    alerts = [(tick, e) for tick, e in out if e.kind == "price_alert"]
    by_phase: dict[str, list] = {}
    for tick, e in news:
        by_phase.setdefault(phase_of(e.ts), []).append(e)
    # every headline became exactly one news event
    assert len({e.data["headline"] for _, e in news}) == len(news) >= 50
    # up: analysed; hung/dead: degraded (after the first in-flight ones); back: analysed again
    assert not any(e.data["degraded"] for e in by_phase["up"])
    assert all(e.data["degraded"] for e in by_phase["hung"][3:]) and all(e.data["degraded"] for e in by_phase["dead"])
    back_at = dict(phases)["back"]
    recovered = [e for e in by_phase["back"] if not e.data["degraded"]]
    assert recovered, "analysis never resumed"
    assert (recovered[0].ts - datetime(1970, 1, 1)).total_seconds() - back_at < 5.0
    late = [e for e in by_phase["back"] if (e.ts - datetime(1970, 1, 1)).total_seconds() > back_at + 1.5]
    assert late and not any(e.data["degraded"] for e in late)
    # degraded news comes promptly: within the news timeout (plus scheduling)
    worst_news = max((tick - e.ts).total_seconds() for tick, e in news)
    assert worst_news < cfg.news.timeout + 0.5, worst_news
    # the market path ran beside it with unchanged latency
    lat = {}
    for tick, e in alerts:
        lat.setdefault(phase_of(e.ts), []).append((tick - e.ts).total_seconds())
    assert {"up", "hung", "dead", "back"} <= set(lat) and all(len(lat[p]) >= 15 for p in ("up", "hung", "dead", "back"))
    assert max(max(v) for v in lat.values()) < 0.25, lat
    assert statistics.median(lat["hung"] + lat["dead"]) < statistics.median(lat["up"]) + 0.02
