"""Horizon price alerts on simulated markets: false alerts in normal trading and slides found, by multiple.

A slide (a price that walks away within a minute by ticks each too small for the tick alert) is what the
horizon alert is for; normal trading must not raise it. Real tick data is not available here, so the markets
are simulated, and made hard on purpose: tick moves are Student t with 3 degrees of freedom (heavy tails) and
their volatility wanders (a stochastic-volatility walk: log volatility mean-reverting over ~30 minutes with a
standard deviation of 0.5, so a symbol spends stretches at twice and half its usual volatility). Each symbol
trades as a Poisson stream, 2 or 10 trades a second, calm (typical tick 0.02 %) or volatile (0.2 %).

For each `price_alert_horizon_multiple` the script runs the `price_alerts` node over the same trades and
prints, per market: the horizon alerts per 1,000 horizons of normal trading (the tick alerts beside them, the
baseline: the same node with the horizon off), and the share of injected slides found within a horizon of
their start. A slide moves the price by c times the symbol's typical |move| over a horizon, linearly over half a
horizon, for c = 6, 10, 15. The shipped multiple is the smallest that keeps every market at or under one false
alert per 1,000 horizons.

    python bench/price_alerts.py [--hours 6] [--symbols 8] [--multiples 6,8,10,12]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import sys
from datetime import datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import csp  # noqa: E402
from edgewatch.agent.analytics.market import price_alerts  # noqa: E402
from edgewatch.agent.config import MarketConfig  # noqa: E402
from edgewatch.agent.records import Event, Trade  # noqa: E402

START = datetime(2026, 3, 2, 9, 30)
HORIZON = 60.0  # seconds
SLIDES = (6.0, 10.0, 15.0)  # slide sizes, in typical |move| over a horizon
WARMUP = 3600.0  # seconds of trading before the first slide (the horizon scale is learnt over ~17 minutes)
MARKETS = {"calm, 2/s": (2.0, 0.0002), "calm, 10/s": (10.0, 0.0002),
           "volatile, 2/s": (2.0, 0.002), "volatile, 10/s": (10.0, 0.002)}


def t3(rng: random.Random) -> float:
    """Student t, 3 degrees of freedom, unit scale."""
    return rng.gauss(0.0, 1.0) / math.sqrt(sum(rng.gauss(0.0, 1.0) ** 2 for _ in range(3)) / 3.0)


def walk(rate: float, tick: float, hours: float, rng: random.Random) -> list[tuple[float, float]]:
    """(seconds, log-return) of one symbol's trades: Poisson times, t3 moves, wandering volatility."""
    out, t, logvol, next_vol = [], 0.0, 0.0, 1.0
    keep = math.exp(-1.0 / 1800.0)  # log volatility reverts over ~30 minutes (updated once a second)
    while t < hours * 3600.0:
        t += rng.expovariate(rate)
        while next_vol <= t:
            logvol = keep * logvol + math.sqrt(1.0 - keep * keep) * 0.5 * rng.gauss(0.0, 1.0)
            next_vol += 1.0
        out.append((t, tick * math.exp(logvol) * t3(rng)))
    return out


def typical_horizon_move(moves: list[tuple[float, float]]) -> float:
    """Mean |move| over a horizon, sampled once a horizon (the unit a slide is sized in)."""
    total, n, k, mark = 0.0, 0, 0, 0.0
    logp = 0.0
    for t, r in moves:
        logp += r
        if t >= (k + 1) * HORIZON:
            if k:
                total += abs(math.expm1(logp - mark))
                n += 1
            mark, k = logp, int(t // HORIZON)
    return total / n


def market(name: str, symbols: int, hours: float, seed: int,
           with_slides: bool = True) -> tuple[list[Trade], list[tuple[str, float, float]]]:
    """Trades of `symbols` symbols of one market, with slides injected; and the slides (symbol, start, size).
    `with_slides` False: the same trades without them (normal trading only)."""
    rate, tick = MARKETS[name]
    rng = random.Random(seed)
    trades, slides = [], []
    for i in range(symbols):
        sym = f"S{i}"
        moves = walk(rate, tick, hours, rng)
        unit = typical_horizon_move(moves)
        starts = [WARMUP + k * 1800.0 + rng.uniform(0.0, 600.0) for k in range(int((hours * 3600 - WARMUP) // 1800))]
        plan = [(s, SLIDES[(i + k) % len(SLIDES)]) for k, s in enumerate(starts)] if with_slides else []
        slides += [(sym, s, c) for s, c in plan]
        logp, j = math.log(100.0), 0
        for t, r in moves:
            while j < len(plan) and t >= plan[j][0] + HORIZON / 2:
                j += 1
            drift = 0.0
            if j < len(plan) and t >= plan[j][0]:
                drift = plan[j][1] * unit / (rate * HORIZON / 2.0)  # this trade's share: over half a horizon
            logp += r + (drift if (i + j) % 2 else -drift)
            trades.append(Trade(symbol=sym, ts=START + timedelta(seconds=t), price=math.exp(logp), size=100.0))
    trades.sort(key=lambda tr: tr.ts)
    return trades, slides


def alerts(trades: list[Trade], cfg: MarketConfig) -> list[Event]:
    """The `price_alerts` node's events on `trades`, fed in ~100 ms batches as ingest hands them to the graph."""
    batches, batch, cut = [], [], None
    for tr in trades:
        if cut is not None and tr.ts >= cut:
            batches.append((batch[-1].ts, batch))
            batch = []
        if not batch:
            cut = tr.ts + timedelta(milliseconds=100)
        batch.append(tr)
    batches.append((batch[-1].ts, batch))
    end = batches[-1][0] - START + timedelta(seconds=1)
    out = csp.run(price_alerts, csp.curve(list[Trade], batches), cfg, starttime=START, endtime=end)
    return [e for _, evs in out.get(0, []) for e in evs]


def judge(events: list[Event], slides: list, symbols: int, hours: float) -> dict:
    """False alerts (outside a slide and the horizon after it) per 1,000 horizons, by kind; slides found."""
    spans = {}
    for sym, s, c in slides:
        spans.setdefault(sym, []).append((START + timedelta(seconds=s), START + timedelta(seconds=s + 2 * HORIZON), c))
    found = {"horizon": set(), "tick": set()}
    false = {"horizon": 0, "tick": 0}
    for e in events:
        kind = "horizon" if e.data["horizon"] else "tick"
        hit = next(((e.key, a) for a, b, _ in spans.get(e.key, []) if a <= e.ts < b), None)
        if hit is None:
            if e.ts >= START + timedelta(seconds=WARMUP / 2):
                false[kind] += 1
        elif e.ts < hit[1] + timedelta(seconds=HORIZON):
            found[kind].add(hit)
    horizons = symbols * (hours * 3600.0 - WARMUP / 2) / HORIZON
    out = {f"false_{k}_per_1000_horizons": round(1000.0 * v / horizons, 3) for k, v in false.items()}
    for c in SLIDES:
        mine = [(sym, START + timedelta(seconds=s)) for sym, s, cc in slides if cc == c]
        out[f"slides_{c:g}x_found"] = {k: f"{sum(m in v for m in mine)}/{len(mine)}" for k, v in found.items()}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hours", type=float, default=6.0, help="hours of trading per symbol")
    ap.add_argument("--symbols", type=int, default=8, help="symbols per market")
    ap.add_argument("--multiples", default="6,8,10,12", help="price_alert_horizon_multiple values to run")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    multiples = [float(m) for m in a.multiples.split(",")]
    result = {"bench": "price_alerts", "horizon_s": HORIZON, "hours": a.hours, "symbols_per_market": a.symbols,
              "markets": {}}
    for k, name in enumerate(MARKETS):
        trades, slides = market(name, a.symbols, a.hours, a.seed + k)
        base = MarketConfig(price_alert_horizon=0.0)
        row = {"trades": len(trades), "tick_alerts_only": judge(alerts(trades, base), slides, a.symbols, a.hours)}
        for m in multiples:
            cfg = dataclasses.replace(base, price_alert_horizon=HORIZON, price_alert_horizon_multiple=m)
            row[f"multiple_{m:g}"] = judge(alerts(trades, cfg), slides, a.symbols, a.hours)
        result["markets"][name] = row
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
