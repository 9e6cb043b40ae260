"""Advisor hit rate with news against technical-only, on simulated markets where news moves prices.

Ground truth: the simulator (edgewatch.agent.testing.simulator) with `news_impact` set, so every
bullish or bearish headline sets off a drift of that size in its direction over the next
`news_impact_horizon` seconds, on top of the usual random walk and regimes. The agent's whole
analytics graph runs over the feeds in historical mode twice: with the real sidecar (the shipped
model, CPU) classifying the headlines, and with news off (technical-only advice). An advice
BUY / SELL at time t is a hit when the symbol's last trade price `--horizon` seconds later has moved
in its direction. Several seeds; prints ONE JSON line.

    python bench/advisor.py [--seeds 3] [--duration 3600] [--impact 0.01] [--horizon 60]
"""

from __future__ import annotations

import argparse
import bisect
import json
import sys
import time
from datetime import datetime, timedelta

import csp

from edgewatch.agent.analytics.topology import analytics
from edgewatch.agent.config import Config
from edgewatch.agent.records import RECORD_TYPES, Event
from edgewatch.agent.testing.simulator import SimConfig, Simulator, to_batches
from edgewatch.sidecar.testing import SidecarProcess

START = datetime(2026, 1, 5, 14, 30)


def run_graph(batches: dict, cfg: Config, duration: float) -> list[Event]:
    @csp.graph
    def g():
        feeds = {
            kind: csp.curve(list[typ], batches[kind]) if kind in batches else csp.null_ts(list[typ])
            for kind, typ in RECORD_TYPES.items()
        }
        out = analytics(feeds["sensor"], feeds["trade"], feeds["quote"], feeds["position"], feeds["pnl"],
                        feeds["news"], cfg)
        csp.add_graph_output("events", out.events)

    out = csp.run(g, starttime=START, endtime=timedelta(seconds=duration + 5))
    return [e for _, batch in out.get("events", []) for e in batch]


def hit_rate(advice: list[Event], prices: dict[str, tuple[list, list]], horizon: float) -> dict:
    """Share of BUY/SELL advice whose symbol moved its way `horizon` seconds later."""
    hits = calls = 0
    for e in advice:
        action = e.data["action"]
        if action == "HOLD":
            continue
        times, values = prices[e.key]
        now = bisect.bisect_right(times, e.ts) - 1
        later = bisect.bisect_right(times, e.ts + timedelta(seconds=horizon)) - 1
        if now < 0 or later >= len(times) - 1:  # no price yet, or the run ends before the horizon
            continue
        calls += 1
        hits += (values[later] > values[now]) == (action == "BUY")
    return {"calls": calls, "hits": hits, "hit_rate": hits / calls if calls else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3600.0, help="simulated seconds per seed")
    ap.add_argument("--impact", type=float, default=0.01, help="log-price drift a headline sets off")
    ap.add_argument("--horizon", type=float, default=60.0, help="seconds after an advice to judge it")
    args = ap.parse_args()

    totals = {"with_news": {"calls": 0, "hits": 0}, "technical_only": {"calls": 0, "hits": 0}}
    started = time.perf_counter()
    with SidecarProcess(None) as sidecar:
        for seed in range(args.seeds):
            sim = Simulator(SimConfig(sensors=0, symbols=3, faults=False, seed=seed, duration=args.duration,
                                      news_impact=args.impact), START)
            messages = list(sim.messages())
            prices: dict[str, tuple[list, list]] = {s: ([], []) for s in sim.symbols}
            for m in messages:
                if m.topic.endswith("/trade"):
                    sym = m.topic.split("/")[1]
                    prices[sym][0].append(m.ts)
                    prices[sym][1].append(m.payload["price"])
            for variant, news_on in (("with_news", True), ("technical_only", False)):
                cfg = Config()
                cfg.sidecar.url = sidecar.url
                cfg.news.enabled = news_on
                cfg.news.timeout = 5.0
                batches = to_batches(messages, cfg)
                events = run_graph(batches, cfg, args.duration)
                got = hit_rate([e for e in events if e.kind == "advice"], prices, args.horizon)
                totals[variant]["calls"] += got["calls"]
                totals[variant]["hits"] += got["hits"]
    for t in totals.values():
        t["hit_rate"] = t["hits"] / t["calls"] if t["calls"] else None
    with_news, technical = totals["with_news"]["hit_rate"], totals["technical_only"]["hit_rate"]
    print(json.dumps({
        "bench": "advisor", "seeds": args.seeds, "duration_s": args.duration, "impact": args.impact,
        "horizon_s": args.horizon, **totals,
        "ratio_hit_rate_news_vs_technical": with_news / technical if with_news and technical else None,
        "wall_s": round(time.perf_counter() - started, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
