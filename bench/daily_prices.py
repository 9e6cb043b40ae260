"""The price alerts on real price paths: daily closes of stock indices and oil, each close a trade.

bench/price_alerts.py chose the alerts' multiples on simulated markets (Student-t moves with a wandering
volatility). No real tick data was available; real daily closes are, and they carry what a simulation can get
wrong: the heavy tails and the volatility bursts of real markets (the crashes of 2001, 2008, 2011, 2015, 2018 and
1986 – 2019 in oil). Not their microstructure: a close-to-close move is not a tick. So each series is replayed as
a symbol trading once a second (close i at second i, never a session gap) through the `price_alerts` node with
only its scale-relative rules on (`price_alert_threshold`, the fixed fraction that always alerts, set out of
reach: on daily index moves the default 2 % alerts on one S&P day in twelve and one NASDAQ day in six), and
the question is how often those rules fire on real moves at each multiple, against bench/price_alerts.py's
simulated volatile market (2 trades a second, its slides left out) through the same configurations in the same
run:

- tick alerts (`price_alert_multiple`, default 20) per 1,000 moves, and the dates they fall on;
- horizon alerts (`price_alert_horizon` of 60 moves, `price_alert_horizon_multiple`, default 8) per 1,000
  horizons, and their dates.

The input is any CSV (or .csv.gz) of dated prices: a `Date` column first, the price in `Close` or else the only
other column; rows without a price (a holiday's '.') are skipped. arch's bundled data sets are real daily series
of this kind (S&P 500 and NASDAQ Composite 1999 – 2018, WTI crude 1986 – 2019), in its wheel:

    pip download --no-deps arch==8.0.0 -d /tmp/arch
    unzip -o -j /tmp/arch/arch-8.0.0-*.whl 'arch/data/sp500/*.gz' 'arch/data/nasdaq/*.gz' 'arch/data/wti/*.gz' -d /tmp/prices
    python bench/daily_prices.py /tmp/prices/*.csv.gz [--tick-multiples 10,20] [--horizon-multiples 6,8,10]

Deterministic; prints one JSON line.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import gzip
import io
import json
import math
import sys
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from edgewatch.agent.config import MarketConfig  # noqa: E402
from edgewatch.agent.records import Trade  # noqa: E402

from bench.price_alerts import START, alerts, market  # noqa: E402

HORIZON = 60.0  # seconds = moves
NO_FLOOR = 1e9  # price_alert_threshold out of reach: only the scale-relative rules judge
SIMULATED = "volatile, 2/s"
SIMULATED_HOURS = 3.0
SIMULATED_SYMBOLS = 4


def read_prices(path: Path) -> list[tuple[str, float]]:
    """(date text, price) rows of a CSV of dated prices, in file order. Not `edge-agent score`'s reader: such
    files write dates as M/D/YYYY and a missing price as '.', and the dates are only shown here."""
    raw = path.read_bytes()
    text = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode("utf-8-sig")
    rows = csv.reader(io.StringIO(text))
    header = next(rows, [])
    col = header.index("Close") if "Close" in header else (1 if len(header) == 2 else None)
    if col is None:
        raise ValueError("no 'Close' column and more than one price column")
    out = []
    for row in rows:
        try:
            price = float(row[col])
        except (ValueError, IndexError):
            continue
        if price > 0.0 and math.isfinite(price):
            out.append((row[0], price))
    if len(out) < 2:
        raise ValueError("fewer than two prices")
    return out


def as_trades(prices: list[tuple[str, float]], symbol: str) -> list[Trade]:
    return [Trade(symbol=symbol, ts=START + timedelta(seconds=i), price=p, size=1.0) for i, (_, p) in enumerate(prices)]


def judge(trades: list[Trade], seconds: float, tick_multiples: list[float], horizon_multiples: list[float],
          dates: list[str] | None = None) -> dict:
    """Per multiple of the tick rule, its alerts per 1,000 moves; per multiple of the horizon rule, its alerts per
    1,000 horizons; with `dates`, also each alert: its date, move and multiple of the scale."""
    moves, horizons = len(trades) - len({t.symbol for t in trades}), seconds / HORIZON
    base = MarketConfig(price_alert_threshold=NO_FLOOR, price_alert_horizon=HORIZON)
    runs = {"tick": [(m, dataclasses.replace(base, price_alert_multiple=m, price_alert_horizon=0.0))
                     for m in tick_multiples],
            "horizon": [(m, dataclasses.replace(base, price_alert_horizon_multiple=m)) for m in horizon_multiples]}
    out: dict = {"moves": moves, "horizons": round(horizons, 1)}
    for rule, configs in runs.items():
        per = moves if rule == "tick" else horizons
        for m, cfg in configs:
            mine = [e for e in alerts(trades, cfg) if bool(e.data["horizon"]) == (rule == "horizon")]
            row = {"alerts": len(mine), f"per_1000_{'moves' if rule == 'tick' else 'horizons'}":
                   round(1000.0 * len(mine) / per, 3)}
            if dates is not None:
                row["dates"] = [f"{dates[int((e.ts - START).total_seconds())]} {e.data['move']:+.1%} "
                                f"({e.data['multiple']:.1f}x)" for e in mine]
            out[f"{rule}_multiple_{m:g}"] = row
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("prices", nargs="+", type=Path, help="CSV or .csv.gz files of dated prices")
    ap.add_argument("--tick-multiples", default="10,20", help="price_alert_multiple values (default: 10,20)")
    ap.add_argument("--horizon-multiples", default="6,8,10",
                    help="price_alert_horizon_multiple values (default: 6,8,10)")
    a = ap.parse_args(argv)
    ticks = [float(m) for m in a.tick_multiples.split(",")]
    hmult = [float(m) for m in a.horizon_multiples.split(",")]
    series = {}
    for p in a.prices:
        try:
            series[p.name.split(".")[0]] = read_prices(p)
        except (OSError, ValueError) as e:  # gzip's BadGzipFile and UnicodeDecodeError are ValueErrors too
            ap.exit(2, f"bench/daily_prices.py: {p}: {e.strerror if isinstance(e, OSError) else e}\n")
    sim = market(SIMULATED, SIMULATED_SYMBOLS, SIMULATED_HOURS, 0, with_slides=False)[0]
    result = {"bench": "daily_prices", "horizon_moves": HORIZON,
              "simulated_baseline": {"market": SIMULATED, "symbols": SIMULATED_SYMBOLS, "hours": SIMULATED_HOURS,
                                     **judge(sim, SIMULATED_SYMBOLS * SIMULATED_HOURS * 3600.0, ticks, hmult)},
              "series": {}}
    for name, prices in series.items():
        result["series"][name] = {"first": prices[0][0], "last": prices[-1][0],
                                  **judge(as_trades(prices, name), float(len(prices)), ticks, hmult,
                                          [d for d, _ in prices])}
    print(json.dumps(result, separators=(",", ":")))
    return result


if __name__ == "__main__":
    main()
