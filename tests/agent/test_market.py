"""Market analytics in historical mode: price alerts, VWAP bars, regime-adaptive signals, news fusion."""

from __future__ import annotations

import itertools
import math
import random
from datetime import datetime, timedelta

import csp
import pytest
from edgewatch.agent.analytics.market import bucket_of, check, market_analytics, price_alerts
from edgewatch.agent.analytics.topology import market_graph
from edgewatch.agent.config import Config, ConfigError, MarketConfig
from edgewatch.agent.records import Pnl, Position, Quote, Sentiment, Trade
from edgewatch.agent.testing.simulator import SimConfig, Simulator, to_batches

T0 = datetime(2026, 3, 2, 14, 30)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def trade(sym: str, s: float, price: float, size: float = 100.0) -> Trade:
    return Trade(symbol=sym, ts=at(s), price=price, size=size)


def batches(records: list) -> list:
    """One batch per record, delivered at its own data time (times never go backwards for csp)."""
    out, last = [], T0
    for r in records:
        last = max(last, r.ts)
        out.append((last, [r]))
    return out


def run_alerts(trades: list[Trade], cfg: MarketConfig | None = None) -> list:
    end = max(t.ts for t in trades) - T0 + timedelta(seconds=1)
    out = csp.run(price_alerts, csp.curve(list[Trade], batches(trades)), cfg or MarketConfig(), starttime=T0,
                  endtime=end)
    return [e for _, evs in out.get(0, []) for e in evs]


def ticks(sym: str, n: int, move, start: float = 0.0, price: float = 100.0, every: float = 0.05) -> list[Trade]:
    """`n` trades of `sym`, `every` seconds apart, each moving by the fraction `move()` from the last."""
    out = []
    for i in range(n):
        price *= 1.0 + move()
        out.append(trade(sym, start + i * every, price))
    return out


def run_market(trades: list[Trade], sentiment: list[Sentiment] = (), cfg: MarketConfig | None = None,
               end: float = 100.0) -> dict:
    cfg = cfg or MarketConfig()

    @csp.graph
    def g():
        sent = csp.curve(list[Sentiment], batches(list(sentiment))) if sentiment else csp.null_ts(list[Sentiment])
        out = market_analytics(csp.curve(list[Trade], batches(trades)), sent, cfg)
        csp.add_graph_output("bars", out.bars)
        csp.add_graph_output("signals", out.signals)

    out = csp.run(g, starttime=T0, endtime=timedelta(seconds=end))
    return {k: [x for _, xs in v for x in xs] for k, v in out.items()}


# --- price alerts -------------------------------------------------------------------------------------------

def test_price_alert_fires_on_a_fast_move_and_never_on_the_first_trade():
    evs = run_alerts([trade("AAA", 1, 100.0), trade("AAA", 2, 101.0), trade("AAA", 3, 104.0), trade("BBB", 3, 5.0)])
    assert len(evs) == 1
    e = evs[0]
    assert (e.kind, e.key, e.ts) == ("price_alert", "AAA", at(3))
    assert e.data["prev_price"] == 101.0 and e.data["price"] == 104.0
    assert e.data["move"] == pytest.approx(104 / 101 - 1) and e.data["threshold"] == 0.02
    assert e.severity == "warning"


def test_price_alert_down_move_big_is_critical_and_ids_are_deterministic():
    trades = [trade("AAA", 1, 100.0), trade("AAA", 2, 90.0)]
    a, b = run_alerts(trades), run_alerts(trades)
    assert [e.severity for e in a] == ["critical"]
    assert a[0].data["move"] == pytest.approx(-0.1)
    assert [e.event_id for e in a] == [e.event_id for e in b]


def test_price_alert_out_of_order_trades_compare_in_arrival_order():
    # the second trade is older than the first: it still is the "previous" trade for the third
    evs = run_alerts([trade("AAA", 5, 100.0), Trade(symbol="AAA", ts=at(4), price=100.5, size=1.0),
                      trade("AAA", 6, 100.6)])
    assert evs == []


def test_a_calm_symbol_alerts_on_a_jump_thirty_times_its_tick_scale():
    """Normal tick moves of about 0.02 % (mean |move|); a 0.6 % jump is far below the 2 % floor, yet 30x the
    symbol's own scale: it alerts, with the move, the scale and the multiple as evidence."""
    rng = random.Random(3)
    sigma = 0.0002 / math.sqrt(2 / math.pi)  # a normal move with mean |move| = 0.02 %
    calm = ticks("CALM", 400, lambda: rng.gauss(0, sigma))
    jump = trade("CALM", 20.0, calm[-1].price * 1.006)
    evs = run_alerts(calm + [jump] + ticks("CALM", 50, lambda: rng.gauss(0, sigma), 20.05, jump.price))
    assert [(e.key, e.ts) for e in evs] == [("CALM", at(20.0))]
    d = evs[0].data
    assert d["move"] == pytest.approx(0.006) and d["scale"] == pytest.approx(0.0002, rel=0.25)
    assert d["multiple"] == pytest.approx(d["move"] / d["scale"]) and d["multiple"] > 20
    assert d["threshold"] == 0.02 and d["alert_multiple"] == 20.0
    assert evs[0].severity == "warning" and "x its tick scale" in evs[0].message
    # six 1.2 % jumps (60x) in a row of calm ticks: every one alerts, and is critical (twice the multiple)
    trades, t = list(calm), 20.0
    for k in range(6):
        trades.append(trade("CALM", t, trades[-1].price * (1.012 if k % 2 else 0.988)))
        trades += ticks("CALM", 100, lambda: rng.gauss(0, sigma), t + 0.05, trades[-1].price)
        t += 6.0
    evs = run_alerts(trades)
    assert len(evs) == 6 and all(e.severity == "critical" for e in evs)


def test_a_volatile_symbol_raises_at_most_one_alert_per_hundred_normal_ticks():
    """Heavy-tailed tick moves (Student t, 3 degrees of freedom) about ten times the calm symbol's: its own scale
    keeps the multiple-based alert quiet, while a fixed fraction low enough for the calm symbol would not be."""
    rng = random.Random(5)

    def t3() -> float:  # Student t with 3 degrees of freedom, scaled to a typical move of about 0.2 %
        return 0.002 * rng.gauss(0, 1) / math.sqrt(sum(rng.gauss(0, 1) ** 2 for _ in range(3)) / 3)

    wild = ticks("WILD", 5000, t3)
    evs = run_alerts(wild)
    assert len(evs) <= len(wild) / 100
    moves = [abs(b.price / a.price - 1) for a, b in itertools.pairwise(wild)]
    assert sum(moves) / len(moves) > 10 * 0.0002  # it is volatile
    assert sum(m > 0.006 for m in moves) > len(wild) / 50  # a fixed 0.6 % (the calm symbol's 30x) would be chatty


def test_symbols_named_in_the_per_symbol_settings_alert_by_their_own_floor_and_multiple():
    """Two calm symbols trade alike and both jump 0.3 % (about 15 x their tick scale, below the multiple of 20),
    then 3 % (beyond the 2 % floor). `price_alert_multiples` gives LIQ (through the pattern `LI*`, the first
    entry that matches it) a multiple of 12: its first jump alerts, the other's does not;
    `price_alert_thresholds` lifts OTHER's floor to 5 %, so its 3 % jump (150 x its scale) alerts by the multiple, and names that floor as its threshold."""
    cfg = MarketConfig(price_alert_multiples="LI*=12,LIQ=30", price_alert_thresholds="OTHER=0.05")
    sigma = 0.0002 / math.sqrt(2 / math.pi)

    def day(sym: str) -> list[Trade]:
        rng = random.Random(3)
        calm = ticks(sym, 400, lambda: rng.gauss(0, sigma))
        small = trade(sym, 20.0, calm[-1].price * 1.003)
        after = ticks(sym, 100, lambda: rng.gauss(0, sigma), 20.05, small.price)
        return [*calm, small, *after, trade(sym, 30.0, after[-1].price * 1.03)]

    evs = run_alerts(sorted(day("LIQ") + day("OTHER"), key=lambda t: (t.ts, t.symbol)), cfg)
    assert [(e.key, e.ts) for e in evs] == [("LIQ", at(20.0)), ("LIQ", at(30.0)), ("OTHER", at(30.0))]
    assert [e.data["alert_multiple"] for e in evs] == [12.0, 12.0, 20.0]  # the first entry that matches wins
    assert [e.data["threshold"] for e in evs] == [0.02, 0.02, 0.05]


@pytest.mark.parametrize("key,value,named", [
    ("price_alert_multiples", "AAPL", "market.price_alert_multiples: expected SYMBOL=number, got 'AAPL'"),
    ("price_alert_multiples", "AAPL=0", "market.price_alert_multiples: expected SYMBOL=number with a positive"),
    ("price_alert_thresholds", "=0.05", "market.price_alert_thresholds: expected SYMBOL=number with a positive"),
    ("price_alert_thresholds", "PENNY=0.001", "market.price_alert_thresholds: PENNY: must be above"),
])
def test_bad_per_symbol_settings_name_the_key(key, value, named):
    with pytest.raises(ConfigError, match=named.replace("(", r"\(")):
        check(MarketConfig(**{key: value}))


def test_the_open_after_a_closed_night_is_not_a_tick():
    """A calm symbol trades every second for an hour, the market closes for 17.5 hours and opens 0.8 % higher:
    40x its tick scale, but a gap, not a tick. No tick or horizon alert; the gap teaches no scale, so a 0.8 % jump
    a second later still alerts, and a gap beyond the fixed threshold (2 %) alerts whatever the pause."""
    rng = random.Random(3)
    sigma = 0.0002 / math.sqrt(2 / math.pi)
    day = ticks("CALM", 3600, lambda: rng.gauss(0, sigma), every=1.0)
    night = 17.5 * 3600

    def after_the_night(gap: float, jump: float) -> list:
        opened = trade("CALM", 3600 + night, day[-1].price * (1 + gap))
        nxt = ticks("CALM", 30, lambda: rng.gauss(0, sigma), opened.ts.timestamp() - T0.timestamp() + 1, opened.price,
                    every=1.0)
        jumped = trade("CALM", nxt[-1].ts.timestamp() - T0.timestamp() + 1, nxt[-1].price * (1 + jump))
        return run_alerts(day + [opened] + nxt + [jumped])

    evs = after_the_night(0.008, 0.008)
    assert len(evs) == 1 and evs[0].data["prev_ts"] != day[-1].ts.isoformat() + "Z"  # the jump, not the open
    assert evs[0].data["multiple"] > 20 and evs[0].data["scale"] == pytest.approx(0.0002, rel=0.25)
    assert [e.data["move"] for e in after_the_night(0.025, 0.0)] == [pytest.approx(0.025)]
    # the same open one second after the close: a tick, and it alerts
    assert len(run_alerts(day + [trade("CALM", 3600, day[-1].price * 1.008)])) == 1


def test_a_flat_symbol_cannot_alert_on_a_cent():
    flat = [trade("FLAT", i * 0.1, 100.0) for i in range(200)]
    cent = trade("FLAT", 20.0, 100.01)  # 0.01 %: infinitely many scales of a symbol that never moved
    assert run_alerts(flat + [cent]) == []
    assert [e.data["multiple"] for e in run_alerts(flat + [trade("FLAT", 20.0, 101.0)])] == [None]  # 1 %: alerts


def test_a_low_priced_symbol_on_a_cent_grid_alerts_on_a_jump_not_on_single_cents():
    """A $5 stock whose price behind the trades moves about 0.02 % a trade prints whole cents (0.2 %): most
    trades repeat the last price, so the typical move falls far below one cent after a quiet stretch, and a
    single cent used to be twenty typical moves. A move is judged less one step of the grid: 6,000 ordinary
    trades raise no alert; a jump of 8 cents (1.6 %, below the 2 % floor) does."""
    from bench.price_alerts import t3

    rng = random.Random(11)
    mid, out = 5.0, []
    for i in range(6000):
        mid *= 1.0 + 0.0002 * t3(rng)  # heavy-tailed: long quiet stretches, now and then a burst
        out.append(trade("PENNY", i * 0.5, round(mid, 2)))
    assert sum(a.price == b.price for a, b in itertools.pairwise(out)) > len(out) / 2  # mostly the last price
    assert run_alerts(out) == []
    jump = trade("PENNY", 3000.0, round(out[-1].price + 0.08, 2))
    assert [(e.key, e.ts) for e in run_alerts([*out, jump])] == [("PENNY", at(3000.0))]


def test_a_slide_of_small_ticks_alerts_once_as_a_move_within_the_horizon():
    """A calm symbol (one trade a second, typical move 0.02 %) slides 3 % in 30 s by ticks of 0.1 %: each tick is
    five times its tick scale, far below the tick alert's 20, but the move within a minute is many times the
    symbol's typical minute. One alert, from the last trade about a horizon back, with its evidence; without the
    horizon nothing alerts."""
    rng = random.Random(7)
    sigma = 0.0002 / math.sqrt(2 / math.pi)
    calm = ticks("CALM", 2400, lambda: rng.gauss(0, sigma), every=1.0)  # 40 minutes: the horizon scale is learnt
    slide = ticks("CALM", 30, lambda: -0.001, 2400.0, calm[-1].price, every=1.0)
    after = ticks("CALM", 300, lambda: rng.gauss(0, sigma), 2430.0, slide[-1].price, every=1.0)
    evs = run_alerts(calm + slide + after)
    assert len(evs) == 1
    e = evs[0]
    assert slide[0].ts < e.ts <= slide[-1].ts and e.kind == "price_alert" and e.key == "CALM"
    d = e.data
    assert d["horizon"] == 60.0 and d["threshold"] is None and d["alert_multiple"] == 8.0
    assert -0.035 < d["move"] < -0.01 and d["move"] == pytest.approx(d["price"] / d["prev_price"] - 1)
    assert 50.0 <= (e.ts - datetime.fromisoformat(d["prev_ts"].rstrip("Z"))).total_seconds() <= 61.0
    assert d["multiple"] == pytest.approx(abs(d["move"]) / d["scale"]) and d["multiple"] >= 8.0
    assert "in 5" in e.message or "in 6" in e.message
    assert run_alerts(calm + slide + after, MarketConfig(price_alert_horizon=0.0)) == []


def test_a_slide_alerts_within_the_horizon_however_often_the_symbol_jumps():
    """A calm symbol (one trade a second, typical move 0.02 %) starts to jump 1 % every 10 s, up and down in
    turn (tick alerts). A minute of that raises no horizon alert: the jumps are left out of horizon moves.
    Then it also slides 3 % in 60 s by ticks of 0.05 %: the horizon alert finds the slide between the jumps, with
    the jumps it left out in `data` (before, every jump restarted the horizon from the jumping trade, and no
    10 s between two jumps held enough of the slide to alert)."""
    rng = random.Random(7)
    sigma = 0.0002 / math.sqrt(2 / math.pi)
    calm = ticks("CALM", 2400, lambda: rng.gauss(0, sigma), every=1.0)

    def jumpy(start: float, price: float, n: int, drift: float) -> list[Trade]:
        out = []
        for i in range(n):
            k = int(start) + i
            price *= 1.0 + rng.gauss(0, sigma) + drift + (0.0 if k % 10 else (0.01 if k % 20 else -0.01))
            out.append(trade("CALM", float(k), price))
        return out

    steady = jumpy(2400.0, calm[-1].price, 60, 0.0)
    slide = jumpy(2460.0, steady[-1].price, 60, -0.0005)
    evs = run_alerts(calm + steady + slide)
    jumps = [e for e in evs if e.data["horizon"] is None]
    assert len(jumps) >= 10 and all(e.ts.second % 10 == 0 for e in jumps)  # the jumps alert tick to tick, once
    horizon = [e for e in evs if e.data["horizon"]]
    assert len(horizon) == 1 and slide[0].ts < horizon[0].ts <= slide[-1].ts
    d = horizon[0].data
    assert d["move"] < -0.015 and d["jumps"] != 0.0
    assert d["move"] == pytest.approx(d["price"] / d["prev_price"] / (1.0 + d["jumps"]) - 1.0)


def test_normal_trading_raises_no_horizon_alert_and_a_jump_alerts_once():
    """Two hours of a volatile symbol's heavy-tailed ticks (two trades a second) raise no move-within-the-horizon
    alert; a calm symbol's 2 % jump alerts tick to tick, and the horizon, whose moves now hold it, does not repeat
    it."""
    rng = random.Random(11)

    def t3() -> float:
        return 0.002 * rng.gauss(0, 1) / math.sqrt(sum(rng.gauss(0, 1) ** 2 for _ in range(3)) / 3)

    wild = ticks("WILD", 14400, t3, every=0.5)
    assert [e for e in run_alerts(wild) if e.data["horizon"]] == []
    sigma = 0.0002 / math.sqrt(2 / math.pi)
    calm = ticks("CALM", 2400, lambda: rng.gauss(0, sigma), every=1.0)
    jump = trade("CALM", 2400.0, calm[-1].price * 1.02)  # ~13 typical minutes: a horizon move would alert too
    evs = run_alerts(calm + [jump] + ticks("CALM", 120, lambda: rng.gauss(0, sigma), 2401.0, jump.price, every=1.0))
    assert [(e.ts, e.data["horizon"]) for e in evs if e.ts >= jump.ts] == [(jump.ts, None)]


def test_the_horizon_bench_runs_and_its_alerts_find_slides_the_tick_alerts_miss():
    """bench/price_alerts.py, cut short: one slide of each size per market; the default multiple finds most of
    the larger ones and raises no false horizon alert."""
    from bench import price_alerts as bench

    r = bench.main(["--hours", "1.6", "--symbols", "3", "--multiples", "8"])

    def found(row: dict, kind: str) -> int:
        return sum(int(row[f"slides_{c}x_found"][kind].split("/")[0]) for c in (10, 15))

    by_ticks = by_horizon = 0
    for row in r["markets"].values():
        assert row["multiple_8"]["false_horizon_per_1000_horizons"] == 0.0
        by_ticks += found(row["tick_alerts_only"], "tick")  # the baseline: tick alerts alone, horizon off
        by_horizon += found(row["multiple_8"], "horizon")
    assert by_horizon >= 6 and by_horizon > by_ticks


def test_the_trading_days_bench_runs_and_the_scale_rules_hold_at_the_open():
    """bench/trading_days.py, cut to one day of one symbol: a U-shaped day (three times the volatility at the
    open) raises no horizon alert and every injected jump is found without a bounce; a spread three times the
    tick process's scale hides jumps from the calm symbol's tick rule unless the symbol has a multiple of its own
    (12), and a floor of its own (5 %) quiets the volatile symbol's opening."""
    from bench import trading_days as bench

    r = bench.main(["--days", "1", "--symbols", "1"])
    for rows in r["markets"].values():
        for row in rows.values():
            assert all(p["horizon"] == 0.0 for p in row["false_alerts_per_1000_trades"].values())
        assert rows["open and close"]["jumps_30x_found"] == "5/5"
    calm, volatile = r["markets"]["calm, 2/s"], r["markets"]["volatile, 2/s"]
    assert calm["open and close, spread of 3 ticks"]["jumps_30x_found"] != "5/5"
    assert calm["open and close, spread of 3 ticks"]["typical_move_in_mid_ticks"] > 2.0
    assert calm["open and close, spread of 3 ticks, their multiple 12"]["jumps_30x_found"] == "5/5"
    cents = calm["open and close, spread of 1 tick, whole cents at $5"]["false_alerts_per_1000_trades"]
    assert cents["rest"]["multiple"] < 1.0  # a single cent of a quiet $5 stock does not alert
    floor = {case: volatile[case]["false_alerts_per_1000_trades"]["opening"]["floor"]
             for case in ("open and close, spread of 1 tick", "open and close, spread of 1 tick, their floor 5 %")}
    assert floor["open and close, spread of 1 tick, their floor 5 %"] < floor["open and close, spread of 1 tick"] / 4


# --- VWAP bars ---------------------------------------------------------------------------------------------

def test_vwap_bar_values_and_the_quiet_symbol_bar_closes_on_the_timer():
    trades = [trade("AAA", 0.1, 10.0, 100), trade("AAA", 0.5, 12.0, 300), trade("AAA", 0.9, 11.0, 100),
              trade("AAA", 1.2, 11.5, 50), trade("BBB", 1.3, 50.0, 10)]
    bars = run_market(trades, end=10)["bars"]
    by = {(b.symbol, b.start): b for b in bars}
    b0 = by[("AAA", at(0))]
    assert (b0.open, b0.high, b0.low, b0.close, b0.volume, b0.trades) == (10.0, 12.0, 10.0, 11.0, 500.0, 3)
    assert b0.vwap == pytest.approx((10 * 100 + 12 * 300 + 11 * 100) / 500)
    assert b0.end == at(1)
    # AAA's and BBB's second-second bars have no later trade: the engine-time alarm closes them
    assert by[("AAA", at(1))].vwap == 11.5 and by[("BBB", at(1))].trades == 1
    assert len(bars) == 3


def test_gaps_make_no_empty_bars_and_bars_align_to_the_interval():
    bars = run_market([trade("AAA", 0.5, 10.0), trade("AAA", 7.25, 11.0)], end=20)["bars"]
    assert [(b.start, b.end) for b in bars] == [(at(0), at(1)), (at(7), at(8))]
    assert bucket_of(at(7.999), 1.0) == bucket_of(at(7), 1.0)


def test_late_trade_is_counted_in_the_open_bar():
    trades = [trade("AAA", 0.5, 10.0), trade("AAA", 1.5, 11.0), Trade(symbol="AAA", ts=at(0.7), price=9.0, size=100)]
    bars = run_market(trades, end=5)["bars"]
    assert [b.trades for b in bars] == [1, 2]
    assert bars[1].low == 9.0


def test_zero_volume_bar_uses_the_last_price():
    bars = run_market([trade("AAA", 0.2, 10.0, 0.0), trade("AAA", 0.4, 10.5, 0.0)], end=3)["bars"]
    assert bars[0].volume == 0 and bars[0].vwap == 10.5 and math.isfinite(bars[0].vwap)


# --- signals -----------------------------------------------------------------------------------------------

def walk(n_bars: int, jump_at: int | None = None, jump: float = 0.004, seed: int = 1, volume_boost: float = 1.0):
    """A quiet random walk at 4 trades per second, with a burst of steady moves from bar `jump_at`."""
    rng = random.Random(seed)
    price, out = 100.0, []
    for i in range(n_bars * 4):
        bar = i // 4
        burst = jump_at is not None and jump_at <= bar < jump_at + 6
        price *= math.exp(rng.gauss(0, 0.0005) + (jump if burst else 0.0))
        out.append(trade("AAA", i * 0.25, price, 100.0 * (volume_boost if burst else 1.0)))
    return out


def test_the_first_bar_after_a_closed_night_restarts_the_references_instead_of_signalling():
    """Two sessions of a quiet walk, 17.5 hours apart, the second opening 1 % higher: against the evening's slow
    average that is a move of many bar volatilities. As the first bar of a session it restarts the references;
    with the pause not taken for a session gap it signals at the open."""
    night = 17.5 * 3600
    day1 = walk(200)
    day2 = [trade("AAA", night + t.ts.timestamp() - T0.timestamp(), t.price * 1.01 * day1[-1].price / 100.0)
            for t in walk(60, seed=2)]
    end = night + 70

    def open_signals(cfg: MarketConfig) -> list:  # in the first five bars of the second session
        return [e for e in run_market(day1 + day2, cfg=cfg, end=end)["signals"] if at(night) <= e.ts <= at(night + 5)]

    assert open_signals(MarketConfig()) == []
    gapped = open_signals(MarketConfig(session_gap=10 * night))  # the night not taken for a session gap
    assert [e.data["signal"] for e in gapped] == ["BUY"] and gapped[0].data["z"] > 3


def test_a_strong_move_gives_a_signal_with_regime_threshold_and_reference_price():
    sig = run_market(walk(200, jump_at=120, volume_boost=4.0), end=250)["signals"]
    assert sig, "a 6-bar burst of +0.4% per trade must signal"
    e = next(e for e in sig if e.ts >= at(120))
    assert e.kind == "signal" and e.key == "AAA"
    assert e.data["signal"] == "STRONG_BUY"
    assert e.data["regime"] in ("calm", "normal", "volatile", "trending")
    assert e.data["z"] >= e.data["threshold"] > 0
    assert e.data["reference_price"] > 100 and e.data["news_score"] is None
    assert e.ts == at(int((e.ts - T0).total_seconds()))  # stamped at its bar's end: data time


def test_cooldown_allows_one_signal_per_window():
    cfg = MarketConfig(signal_cooldown=1000.0)
    sig = run_market(walk(200, jump_at=120), cfg=cfg, end=250)["signals"]
    assert len([e for e in sig if e.ts >= at(120)]) <= 1


def test_no_signal_during_warmup_or_on_the_first_tick():
    assert run_market([trade("AAA", 0.1, 100.0)], end=5)["signals"] == []
    assert run_market(walk(8), end=20)["signals"] == []


def test_strong_signal_can_require_news_agreement():
    cfg = MarketConfig(strong_requires_news=True)
    trades = walk(200, jump_at=120, volume_boost=4.0)
    without = run_market(trades, cfg=cfg, end=250)["signals"]
    assert without and without[-1].data["signal"] == "BUY"  # no news: plain signal, never STRONG_*
    bullish = [Sentiment(symbol="AAA", ts=at(110), score=0.8, label="bullish", confidence=0.9)]
    agree = run_market(trades, sentiment=bullish, cfg=cfg, end=250)["signals"]
    assert agree[-1].data["signal"] == "STRONG_BUY" and agree[-1].data["news_agrees"] is True
    bearish = [Sentiment(symbol="AAA", ts=at(110), score=-0.8, label="bearish", confidence=0.9)]
    disagree = run_market(trades, sentiment=bearish, cfg=cfg, end=250)["signals"]
    assert disagree[-1].data["signal"] == "BUY"


# --- the whole market graph ------------------------------------------------------------------------------

def simulated(seed: int = 5, duration: float = 400):
    cfg = Config()
    sim = Simulator(SimConfig(sensors=0, symbols=3, duration=duration, seed=seed, jump_rate=0.003), T0)
    return cfg, sim, to_batches(sim.messages(), cfg)


def run_graph(cfg, feeds, end):
    @csp.graph
    def g():
        out = market_graph(
            csp.curve(list[Trade], feeds["trade"]), csp.curve(list[Quote], feeds["quote"]),
            csp.curve(list[Position], feeds["position"]), csp.curve(list[Pnl], feeds["pnl"]),
            csp.null_ts(list[Sentiment]), cfg,
        )
        csp.add_graph_output("events", out.events)
        csp.add_graph_output("bars", out.bars)

    out = csp.run(g, starttime=T0, endtime=timedelta(seconds=end))
    return [e for _, l in out["events"] for e in l], [b for _, l in out["bars"] for b in l]


def test_simulated_market_produces_every_market_event_kind_and_replays_identically(documented_fields):
    cfg, sim, feeds = simulated()
    events, bars = run_graph(cfg, feeds, 400)
    kinds = {e.kind for e in events}
    assert {"price_alert", "signal", "risk"} <= kinds
    undocumented = {(e.kind, k) for e in events for k in e.data if k not in documented_fields(e.kind)}
    assert not undocumented, sorted(undocumented)  # the events reference names every field they carry
    jumps = sim.jump_faults()
    alerted = {(e.key, e.ts) for e in events if e.kind == "price_alert"}
    assert jumps and all((f.key, f.start) in alerted for f in jumps)
    assert {b.symbol for b in bars} == set(sim.symbols)
    again, bars2 = run_graph(cfg, feeds, 400)
    assert [e.event_id for e in again] == [e.event_id for e in events]
    assert len(bars2) == len(bars)


def bars_when_delivered(delivered: float) -> list[tuple]:
    """(tick time, bar) of one trade at 0.5 s and one of data time 0.9 s delivered at `delivered` s."""
    late = Trade(symbol="AAA", ts=at(0.9), price=11.0, size=100)

    @csp.graph
    def g():
        feed = csp.curve(list[Trade], [(at(0.5), [trade("AAA", 0.5, 10.0)]), (at(delivered), [late])])
        out = market_analytics(feed, csp.null_ts(list[Sentiment]), MarketConfig())
        csp.add_graph_output("bars", out.bars)

    out = csp.run(g, starttime=T0, endtime=timedelta(seconds=5))
    return [(t, b) for t, bs in out["bars"] for b in bs]


def test_a_trade_arriving_within_the_grace_still_counts_in_its_own_bar():
    # data time 0.9 s, delivered at 1.1 s (in transit): the quiet bar [0, 1) is still open until 1.25 s
    bars = bars_when_delivered(1.1)
    assert len(bars) == 1 and bars[0][1].trades == 2 and bars[0][1].end == at(1)
    assert bars[0][0] == at(1.25)


def test_a_trade_later_than_the_grace_joins_the_next_bar_and_never_reopens_a_cut_one():
    bars = [b for _, b in bars_when_delivered(1.6)]
    assert [(b.start, b.trades, b.close) for b in bars] == [(at(0), 1, 10.0), (at(1), 1, 11.0)]


# --- bounds ---------------------------------------------------------------------------------------------------

def test_numbers_at_the_input_bound_keep_bars_and_signals_finite():
    """The largest values validation lets through (±1e15): price x size and the volume sums stay finite."""
    trades = [trade("BIG", i * 0.3, 1e15, 1e15) for i in range(40)] + [trade("BIG", 13.0, 1e-6, 1e15)]
    out = run_market(trades, end=20.0)
    assert out["bars"]
    for bar in out["bars"]:
        assert all(math.isfinite(v) for v in (bar.open, bar.high, bar.low, bar.close, bar.volume, bar.vwap))
    for e in out.get("signals", []):
        assert all(math.isfinite(v) for v in e.data.values() if isinstance(v, float))


def test_symbol_cap_forgets_the_longest_silent_symbol():
    from edgewatch.agent.ops import metrics

    def evictions(state: str) -> float:
        return metrics.REGISTRY.get_sample_value("edgewatch_state_evictions_total", {"state": state}) or 0.0

    before = evictions("market"), evictions("price_alerts")
    trades = [trade(f"S{i}", i * 0.01, 10.0) for i in range(50)]
    run_market(trades, cfg=MarketConfig(max_symbols=8), end=5.0)
    run_alerts(trades, MarketConfig(max_symbols=8))
    assert (evictions("market") - before[0], evictions("price_alerts") - before[1]) == (42, 42)
