"""Throughput of the analytics graphs in historical mode, against a graph that only counts ticks.

Prints ONE JSON line. The sensor graph (anomaly + health + maintenance) runs
over 10,000 simulated sensors (temperature, humidity, pressure, battery; faults
on); the market graph over simulated trades, quotes, positions and P&L. Each is
timed next to a graph that receives the same batches and only counts them, in
the same process, so `cost_ratio` is the price of the analytics per tick.
The price-alert node is also timed alone: the cheap path's cost per trade; the sensor graph
also with three anomaly groups (`grouped_cost_ratio`: against the graph without them).

    python bench/analytics.py [--sensors 10000] [--rounds 20] [--trades 200000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import csp  # noqa: E402
from csp import ts  # noqa: E402
from edgewatch.agent.analytics.anomaly import anomaly_events, anomaly_scores  # noqa: E402
from edgewatch.agent.analytics.market import price_alerts  # noqa: E402
from edgewatch.agent.analytics.topology import (
    market_graph,  # noqa: E402
    sensor_graph,  # noqa: E402
)
from edgewatch.agent.config import SensorGroup, Config  # noqa: E402
from edgewatch.agent.records import (  # noqa: E402
    Event,
    Pnl,
    Position,
    Quote,
    SensorReading,
    Sentiment,
    Trade,
)
from edgewatch.agent.testing.simulator import SimConfig, Simulator  # noqa: E402
from edgewatch.agent.timeutil import parse_timestamp  # noqa: E402

START = datetime(2026, 1, 1)
WARMUP = 10  # readings per sensor before drift/noise/anomaly scoring starts (bench only)
WINDOW = timedelta(milliseconds=10)  # live ingest hands the graph one batch per ~10 ms


def batched(messages, make) -> dict[str, list]:
    """Simulator messages -> {feed: [(time, [records])]} in WINDOW batches (records built directly: the
    validator is not what this bench measures)."""
    out: dict[str, list] = {}
    cur: dict[str, list] = {}
    edge = None
    for m in messages:
        if edge is None or m.ts >= edge:
            for k, v in cur.items():
                out.setdefault(k, []).append((edge, v))
            cur = {}
            edge = m.ts + WINDOW
        kind, rec = make(m)
        if kind:
            cur.setdefault(kind, []).append(rec)
    for k, v in cur.items():
        out.setdefault(k, []).append((edge, v))
    return out


def record(m):
    p = m.payload
    when = parse_timestamp(p["ts"])
    parts = m.topic.split("/")
    if parts[0] == "sensors":
        metrics = {k: float(v) for k, v in p.items() if k not in ("ts", "status")}
        attrs = {"status": p["status"]} if "status" in p else {}
        return "sensor", SensorReading(sensor_id="/".join(parts[1:]), ts=when, metrics=metrics, attrs=attrs)
    if parts[0] == "market" and parts[2] == "trade":
        return "trade", Trade(symbol=parts[1], ts=when, price=p["price"], size=float(p["size"]))
    if parts[0] == "market":
        return "quote", Quote(symbol=parts[1], ts=when, bid=p["bid"], ask=p["ask"],
                              bid_size=float(p["bid_size"]), ask_size=float(p["ask_size"]))
    if m.topic == "portfolio/positions":
        return "position", Position(symbol=p["symbol"], ts=when, quantity=p["quantity"])
    if m.topic == "portfolio/pnl":
        return "pnl", Pnl(ts=when, pnl=p["pnl"])
    return None, None


@csp.node
def count(xs: ts[list]) -> ts[int]:
    """The baseline: receive each batch and count its ticks."""
    with csp.state():
        s_n = 0
    s_n += len(xs)
    return s_n


@csp.node
def count_events(events: ts[list[Event]]) -> ts[int]:
    with csp.state():
        s_n = 0
    s_n += len(events)
    return s_n


def timed(graph, end) -> tuple[float, dict]:
    t0 = time.process_time()
    out = csp.run(graph, starttime=START, endtime=end)
    return time.process_time() - t0, out


def last(out, name) -> int:
    return out[name][-1][1] if out.get(name) else 0


def bench_sensors(n_sensors: int, rounds: int, repeat: int) -> dict:
    cfg = Config()
    # short warm-ups so most readings are fully judged: a graph still warming up would flatter the figure
    cfg.anomaly.warmup = cfg.health.warmup = WARMUP
    sim = Simulator(SimConfig(sensors=n_sensors, symbols=0, rate=1.0, duration=rounds, warmup=WARMUP), START)
    feeds = batched(sim.messages(), record)["sensor"]
    n = sum(len(b) for _, b in feeds)
    end = feeds[-1][0] - START

    @csp.graph
    def full():
        with csp.memoize(False):  # memoizing hashes every input record at build time: not what is measured
            events = sensor_graph(csp.curve(list[SensorReading], feeds), cfg)
            csp.add_graph_output("events", count_events(events), tick_count=1)

    @csp.graph
    def base():
        with csp.memoize(False):
            csp.add_graph_output("n", count(csp.curve(list[SensorReading], feeds)), tick_count=1)

    @csp.graph
    def detector_only():
        with csp.memoize(False):
            scores = anomaly_scores(csp.curve(list[SensorReading], feeds), cfg.anomaly, cfg.health.anomaly_score)
            csp.add_graph_output("events", count_events(anomaly_events(scores, cfg.anomaly)), tick_count=1)

    # the same fleet with three anomaly groups of ten sites each (settings as [anomaly]: the same events),
    # the rest under [anomaly]: what the split into four detectors costs
    grouped_cfg = copy.deepcopy(cfg)
    grouped_cfg.anomaly.groups = {
        f"g{g}": SensorGroup([f"site{10 * g + i}/#" for i in range(10)], dataclasses.replace(cfg.anomaly))
        for g in range(3)}

    @csp.graph
    def grouped():
        with csp.memoize(False):
            events = sensor_graph(csp.curve(list[SensorReading], feeds), grouped_cfg)
            csp.add_graph_output("events", count_events(events), tick_count=1)

    t_full = min(timed(full, end)[0] for _ in range(repeat))
    _, out = timed(full, end)
    t_grouped = min(timed(grouped, end)[0] for _ in range(repeat))
    _, grouped_out = timed(grouped, end)
    t_base = min(timed(base, end)[0] for _ in range(repeat))
    t_detector = min(timed(detector_only, end)[0] for _ in range(repeat))
    events = last(out, "events")
    return {
        "anomaly_detector_us_per_reading": 1e6 * (t_detector - t_base) / n,
        "health_maintenance_us_per_reading": 1e6 * (t_full - t_detector) / n,
        "sensors": n_sensors, "readings": n, "warmup": WARMUP, "batches": len(feeds),
        "readings_per_s": n / t_full, "events": events, "events_per_s": events / t_full,
        "events_per_reading": events / n, "us_per_reading": 1e6 * t_full / n,
        "baseline_readings_per_s": n / t_base, "cost_ratio": t_full / t_base,
        "meets_50k_per_s": n / t_full >= 50_000,
        "grouped_readings_per_s": n / t_grouped, "grouped_cost_ratio": t_grouped / t_full,
        "grouped_events": last(grouped_out, "events"),
    }


def bench_market(n_trades: int, symbols: int, repeat: int) -> dict:
    cfg = Config()
    rate = 20.0
    duration = n_trades / (rate * symbols)
    sim = Simulator(SimConfig(sensors=0, symbols=symbols, trade_rate=rate, duration=duration), START)
    feeds = batched(sim.messages(), record)
    trades = feeds["trade"]
    ticks = sum(len(b) for f in feeds.values() for _, b in f)
    n = sum(len(b) for _, b in trades)
    end = max(f[-1][0] for f in feeds.values()) - START

    def inputs():
        return (
            csp.curve(list[Trade], trades), csp.curve(list[Quote], feeds.get("quote", [])),
            csp.curve(list[Position], feeds.get("position", [])), csp.curve(list[Pnl], feeds.get("pnl", [])),
        )

    @csp.graph
    def full():
        with csp.memoize(False):  # no build-time hashing of every input record (see bench_sensors)
            t, q, p, x = inputs()
            out = market_graph(t, q, p, x, csp.null_ts(list[Sentiment]), cfg)
            csp.add_graph_output("events", count_events(out.events), tick_count=1)
            csp.add_graph_output("bars", count(out.bars), tick_count=1)

    @csp.graph
    def base():
        with csp.memoize(False):
            for name, feed in zip("tqpx", inputs()):
                csp.add_graph_output(name, count(feed), tick_count=1)

    def alerts_only(market):
        @csp.graph
        def g():
            with csp.memoize(False):
                alerts = price_alerts(csp.curve(list[Trade], trades), market)
                csp.add_graph_output("events", count_events(alerts), tick_count=1)
        return g

    @csp.graph
    def trades_only():
        with csp.memoize(False):
            csp.add_graph_output("n", count(csp.curve(list[Trade], trades)), tick_count=1)

    t_full = min(timed(full, end)[0] for _ in range(repeat))
    _, out = timed(full, end)
    t_base = min(timed(base, end)[0] for _ in range(repeat))
    tick_only = dataclasses.replace(cfg.market, price_alert_horizon=0.0)  # the baseline: tick-to-tick alerts only
    t_alert = min(timed(alerts_only(cfg.market), end)[0] for _ in range(repeat))
    t_tick = min(timed(alerts_only(tick_only), end)[0] for _ in range(repeat))
    t_trades = min(timed(trades_only, end)[0] for _ in range(repeat))
    events = last(out, "events")
    return {
        "symbols": symbols, "trades": n, "ticks": ticks, "batches": len(trades),
        "ticks_per_s": ticks / t_full, "trades_per_s": n / t_full, "events": events, "bars": last(out, "bars"),
        "events_per_s": events / t_full, "events_per_tick": events / ticks,
        "baseline_ticks_per_s": ticks / t_base, "cost_ratio": t_full / t_base,
        "price_alert_us_per_trade": 1e6 * (t_alert - t_trades) / n,
        "price_alert_us_per_batch": 1e6 * (t_alert - t_trades) / len(trades),
        "price_alert_cost_ratio": t_alert / t_trades,
        "price_alert_tick_only_us_per_trade": 1e6 * (t_tick - t_trades) / n,
        "price_alert_horizon_cost_ratio": (t_alert - t_trades) / (t_tick - t_trades),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sensors", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=40, help="readings per sensor")
    ap.add_argument("--trades", type=int, default=200_000)
    ap.add_argument("--symbols", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3, help="runs per graph; the fastest counts")
    a = ap.parse_args()
    print(json.dumps({
        "bench": "analytics", "python": sys.version.split()[0], "csp": csp.__version__,
        "sensor_graph": bench_sensors(a.sensors, a.rounds, a.repeat),
        "market_graph": bench_market(a.trades, a.symbols, a.repeat),
    }))


if __name__ == "__main__":
    main()
