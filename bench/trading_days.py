"""Price alerts over simulated trading days: the open's volatility, the overnight gap and the bid-ask bounce.

The alert multiples were chosen on markets that trade round the clock at one level of volatility
(bench/price_alerts.py). An exchange's day is not like that: volatility is highest just after the open
(here three times the midday level, fading over about 20 minutes) and rises again into the close (1.8 times);
each day starts after an overnight gap; a trade prints at the bid or at the ask, so consecutive trades
bounce by the spread even when the price does not move; and prices are whole cents, which at $5 is ten times
the price's typical move (most trades print the last price again). Real intraday ticks are not available here,
so this script simulates those features on the same heavy-tailed tick process (Student t, 3 degrees of freedom)
and counts the `price_alerts` node's alerts per 1,000 trades at the shipped defaults, by rule:

- `floor`: alerts only the fixed `price_alert_threshold` (2 %) raises (the move is below the multiple rule's);
- `multiple`: tick-to-tick moves `price_alert_multiple` times the symbol's typical move;
- `horizon`: moves within `price_alert_horizon` against the typical horizon move;

each in the first half hour of the day and in the rest. In each hour after the first, one trade carries a jump
of the mid price of 30 tick scales (27 typical moves of the mid; the acceptance's calm-symbol case): the script
reports how many were alerted at their trade and leaves those alerts out of the rates, so every other alert is
a false one for the scale-relative rules (the floor alerts on what it is set to: any move of 2 %). The baseline
is the same process at a flat volatility without a bounce, in the same run. The last two cases give the symbols
settings of their own (`price_alert_multiples`, `price_alert_thresholds`): a multiple of 12 where the spread hides
the jumps, and a floor of 5 %, which quiets symbols whose single trades often move 2 % (the multiple still judges
them by their own scale).

    python bench/trading_days.py [--days 5] [--symbols 2] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from edgewatch.agent.config import MarketConfig  # noqa: E402
from edgewatch.agent.records import Event, Trade  # noqa: E402

from bench.price_alerts import START, alerts, t3  # noqa: E402

SESSION = 6.5 * 3600.0  # seconds of trading a day
OPENING = 1800.0  # the part of the day reported apart
JUMP = 30.0  # an injected jump of the mid price, in typical ticks (the acceptance's calm-symbol case)
# trades a second, typical tick scale, whether its prices can be whole cents (the volatile price wanders by
# factors a day, to fractions of a dollar, so its cents would measure the drift, not the grid)
MARKETS = {"calm, 2/s": (2.0, 0.0002, True), "volatile, 2/s": (2.0, 0.002, False)}
CASES = {  # intraday volatility shape, spread in typical ticks, the first price, whether prices are whole cents,
    # the symbols' own settings
    "flat, no bounce (baseline)": (False, 0.0, 100.0, False, {}),
    "open and close": (True, 0.0, 100.0, False, {}),
    "open and close, spread of 1 tick": (True, 1.0, 100.0, False, {}),
    "open and close, spread of 1 tick, whole cents at $100": (True, 1.0, 100.0, True, {}),
    "open and close, spread of 1 tick, whole cents at $5": (True, 1.0, 5.0, True, {}),
    "open and close, spread of 3 ticks": (True, 3.0, 100.0, False, {}),
    "open and close, spread of 3 ticks, their multiple 12": (True, 3.0, 100.0, False, {"price_alert_multiples": "S*=12"}),
    "open and close, spread of 1 tick, their floor 5 %": (True, 1.0, 100.0, False, {"price_alert_thresholds": "S*=0.05"}),
}
CENT = 0.01


def intraday(x: float) -> float:
    """Volatility at fraction `x` of the day, against midday's: 3 x at the open, 1.8 x at the close."""
    return 1.0 + 2.0 * math.exp(-x / 0.05) + 0.8 * math.exp(-(1.0 - x) / 0.05)


def trading_days(symbols: int, days: int, rate: float, tick: float, shaped: bool, spread: float,
                 seed: int, start: float = 100.0, cents: bool = False) -> tuple[list[Trade], set[tuple[str, datetime]]]:
    """Trades of `symbols` symbols over `days` sessions: Poisson times, t3 moves of the mid price scaled by the
    intraday shape, a 1 % (standard deviation) overnight move, each trade printed at the bid or the ask (with
    `cents`, at a whole cent: many consecutive trades then print the same price); and
    the (symbol, time) of the trades that carry a jump of the mid price (JUMP typical ticks, one in each hour of
    the day after the first, at the same times in every case)."""
    rng, jumps_at = random.Random(seed), random.Random(seed + 1)
    out, jumps = [], set()
    for i in range(symbols):
        logp = math.log(start)
        for d in range(days):
            logp += rng.gauss(0.0, 0.01)
            plan = [h * 3600.0 + jumps_at.uniform(0.0, 3600.0) for h in range(1, int(SESSION // 3600))]
            t = rng.expovariate(rate)
            while t < SESSION:
                logp += tick * (intraday(t / SESSION) if shaped else 1.0) * t3(rng)
                side = spread * tick / 2.0 if rng.random() < 0.5 else -spread * tick / 2.0
                ts = START + timedelta(days=d, seconds=t)
                if plan and t >= plan[0]:
                    plan.pop(0)
                    logp += JUMP * tick * (1.0 if rng.random() < 0.5 else -1.0)
                    jumps.add((f"S{i}", ts))
                price = math.exp(logp + side)
                out.append(Trade(symbol=f"S{i}", ts=ts, price=round(price / CENT) * CENT if cents else price,
                                 size=100.0))
                t += rng.expovariate(rate)
    out.sort(key=lambda tr: tr.ts)
    return out, jumps


def rule(e: Event) -> str:
    """Which rule raised the alert: the horizon, the multiple of the tick scale, or the fixed floor alone."""
    if e.data["horizon"]:
        return "horizon"
    multiple = e.data["multiple"]
    return "multiple" if multiple is not None and multiple >= e.data["alert_multiple"] else "floor"


def judge(events: list[Event], trades: list[Trade], jumps: set[tuple[str, datetime]]) -> dict:
    """Alerts per 1,000 trades by rule, in the first half hour of the day and in the rest, the jumps' own left
    out; and the share of jumps alerted at their trade."""
    def part(ts: datetime) -> str:
        return "opening" if (ts - START).total_seconds() % 86400.0 < OPENING else "rest"

    n = Counter(part(t.ts) for t in trades)
    k = Counter((part(e.ts), rule(e)) for e in events if (e.key, e.ts) not in jumps)
    found = {(e.key, e.ts) for e in events if not e.data["horizon"]} & jumps
    return {"false_alerts_per_1000_trades": {p: {r: round(1000.0 * k[(p, r)] / n[p], 3)
                                                 for r in ("floor", "multiple", "horizon")} for p in ("opening", "rest")},
            f"jumps_{JUMP:g}x_found": f"{len(found)}/{len(jumps)}"}


def typical_move(trades: list[Trade], tick: float) -> float:
    """Mean |move| between a symbol's consecutive trades within a day, in typical ticks of the mid price: what
    the tick scale learns (with a bounce, mostly the spread)."""
    last: dict[str, Trade] = {}
    total, n = 0.0, 0
    for tr in trades:
        prev = last.get(tr.symbol)
        if prev is not None and tr.ts.date() == prev.ts.date():
            total += abs(math.log(tr.price / prev.price))
            n += 1
        last[tr.symbol] = tr
    return round(total / n / tick, 2)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=5, help="trading days per symbol")
    ap.add_argument("--symbols", type=int, default=2, help="symbols per market")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    result = {"bench": "trading_days", "days": a.days, "symbols_per_market": a.symbols,
              "session_h": SESSION / 3600.0, "markets": {}}
    for name, (rate, tick, in_cents) in MARKETS.items():
        rows = {}
        for case, (shaped, spread, start, cents, own) in CASES.items():
            if cents and not in_cents:
                continue
            cfg = MarketConfig(**own)
            trades, jumps = trading_days(a.symbols, a.days, rate, tick, shaped, spread, a.seed, start, cents)
            rows[case] = {"trades": len(trades), "typical_move_in_mid_ticks": typical_move(trades, tick),
                          **judge(alerts(trades, cfg), trades, jumps)}
        base = rows[next(iter(CASES))]["false_alerts_per_1000_trades"]
        for row in rows.values():  # the scale-relative rules against the baseline's, in the same run
            mine = row["false_alerts_per_1000_trades"]
            row["multiple_vs_baseline"] = {p: round(mine[p]["multiple"] / base[p]["multiple"], 2) if base[p]["multiple"]
                                           else None for p in mine}
        result["markets"][name] = rows
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
