"""Risk checks in historical mode: each limit fires once per crossing, re-arms, and unpriced positions are skipped."""

from __future__ import annotations

from datetime import datetime, timedelta

import csp
import pytest
from edgewatch.agent.analytics.risk import risk_checks
from edgewatch.agent.config import RiskConfig
from edgewatch.agent.records import Pnl, Position, Quote, Trade

T0 = datetime(2026, 3, 2, 14, 30)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def curve(typ, records):
    return csp.curve(list[typ], [(r.ts, [r]) for r in records])


def run_risk(cfg: RiskConfig, trades=(), quotes=(), positions=(), pnl=(), vols=(), end: float = 30.0) -> list:
    @csp.graph
    def g():
        v = csp.curve(dict, list(vols)) if vols else csp.null_ts(dict)
        out = risk_checks(curve(Trade, trades), curve(Quote, quotes), curve(Position, positions), curve(Pnl, pnl),
                          v, cfg)
        csp.add_graph_output("events", out.events)

    out = csp.run(g, starttime=T0, endtime=timedelta(seconds=end))
    return [e for _, l in out.get("events", []) for e in l]


def only(cfg_kwargs: dict) -> RiskConfig:
    """A config with every check off (limit 0) but the ones named."""
    base = dict(max_drawdown=0, max_gross_exposure=0, max_net_exposure=0, max_concentration=0, max_vol_exposure=0)
    return RiskConfig(**{**base, **cfg_kwargs})


def pnl_series(values, step=1.0):
    return [Pnl(ts=at(1 + i * step), pnl=v) for i, v in enumerate(values)]


def test_drawdown_from_high_water_mark_fires_once_per_crossing_and_rearms():
    cfg = only({"max_drawdown": 1000.0})
    evs = run_risk(cfg, pnl=pnl_series([0, 500, -600, -700, -400, 300, 450, -700]))
    assert [(e.ts, e.data["action"]) for e in evs] == [(at(3), "EMERGENCY_STOP"), (at(8), "EMERGENCY_STOP")]
    first = evs[0]
    assert first.severity == "critical" and first.key == "portfolio"
    assert first.data["limit"] == 1000.0 and first.data["value"] == 1100.0 and first.data["high_water_mark"] == 500
    assert first.data["check"] == "drawdown"


def test_a_dip_inside_one_batch_is_still_seen():
    cfg = only({"max_drawdown": 100.0})

    @csp.graph
    def g():
        batch = [Pnl(ts=at(1), pnl=0.0), Pnl(ts=at(1.1), pnl=-200.0), Pnl(ts=at(1.2), pnl=0.0)]
        out = risk_checks(csp.null_ts(list[Trade]), csp.null_ts(list[Quote]), csp.null_ts(list[Position]),
                          csp.curve(list[Pnl], [(at(1.2), batch)]), csp.null_ts(dict), cfg)
        csp.add_graph_output("e", out.events)

    out = csp.run(g, starttime=T0, endtime=timedelta(seconds=3))
    assert [e.ts for _, l in out["e"] for e in l] == [at(1.1)]


def test_gross_exposure_uses_last_trade_price_and_skips_positions_without_a_price():
    cfg = only({"max_gross_exposure": 100_000.0})
    positions = [Position(symbol="AAA", ts=at(1), quantity=1000.0), Position(symbol="ZZZ", ts=at(2), quantity=5e9)]
    evs = run_risk(cfg, trades=[Trade(symbol="AAA", ts=at(0.5), price=50.0, size=1)], positions=positions)
    assert evs == []  # AAA = 50k; ZZZ has no price: left out, not guessed
    trades = [Trade(symbol="AAA", ts=at(0.5), price=50.0, size=1), Trade(symbol="AAA", ts=at(3), price=120.0, size=1)]
    evs = run_risk(cfg, trades=trades, positions=positions)
    assert len(evs) == 1
    e = evs[0]
    assert e.data["action"] == "REDUCE_POSITIONS" and e.data["value"] == 120_000.0
    assert e.data["unpriced"] == ["ZZZ"]
    # the price move of a held symbol is checked at the trade's own (data) time
    assert e.ts == at(3)


def test_quote_mid_prices_a_position_until_the_first_trade():
    cfg = only({"max_gross_exposure": 100_000.0})
    evs = run_risk(cfg, quotes=[Quote(symbol="AAA", ts=at(0.5), bid=199.0, ask=201.0, bid_size=1, ask_size=1)],
                   positions=[Position(symbol="AAA", ts=at(1), quantity=-1000.0)])
    assert [e.data["value"] for e in evs] == [200_000.0]
    assert evs[0].ts == at(1)  # data-driven: the position update's time


def test_net_concentration_and_vol_exposure():
    cfg = only({"max_net_exposure": 150_000.0, "max_concentration": 0.7, "concentration_min_gross": 1000.0,
                "max_vol_exposure": 5_000.0})
    trades = [Trade(symbol="AAA", ts=at(0.2), price=100.0, size=1), Trade(symbol="BBB", ts=at(0.2), price=10.0, size=1)]
    positions = [Position(symbol="AAA", ts=at(1), quantity=1000.0), Position(symbol="BBB", ts=at(2), quantity=1000.0),
                 Position(symbol="AAA", ts=at(3), quantity=2000.0)]
    vols = [(at(0.5), {"AAA": 0.03, "BBB": 0.02})]
    evs = run_risk(cfg, trades=trades, positions=positions, vols=vols)
    got = {e.data["check"]: e for e in evs}
    assert got["concentration"].ts == at(1) and got["concentration"].data["largest_symbol"] == "AAA"
    assert got["net_exposure"].data["action"] == "REDUCE_NET_EXPOSURE" and got["net_exposure"].ts == at(3)
    assert got["vol_exposure"].data["value"] == pytest.approx(2000 * 100 * 0.03 + 1000 * 10 * 0.02)
    assert got["vol_exposure"].data["action"] == "REDUCE_RISK"
    assert len(evs) == 3


def test_the_timer_checks_when_no_data_arrives():
    cfg = only({"max_vol_exposure": 1000.0})
    evs = run_risk(cfg, trades=[Trade(symbol="AAA", ts=at(0.1), price=10.0, size=1)],
                   positions=[Position(symbol="AAA", ts=at(1), quantity=500.0)], vols=[(at(2.05), {"AAA": 0.5})])
    assert [e.data["check"] for e in evs] == ["vol_exposure"]
    assert at(2.05) < evs[0].ts <= at(2.15)  # found by the 100 ms timer, stamped with engine time


def test_breach_held_on_the_timer_is_not_repeated():
    cfg = only({"max_gross_exposure": 1000.0})
    evs = run_risk(cfg, trades=[Trade(symbol="AAA", ts=at(0.1), price=10.0, size=1)],
                   positions=[Position(symbol="AAA", ts=at(1), quantity=500.0)], end=20)
    assert len(evs) == 1


def test_no_input_no_events():
    assert run_risk(RiskConfig()) == []


def test_pnl_at_the_input_bound_gives_a_finite_drawdown():
    """P&L +1e15 then -1e15 (the largest validation accepts): a finite drawdown, not inf."""
    evs = run_risk(only({"max_drawdown": 1000.0}), pnl=pnl_series([1e15, -1e15]))
    assert [e.data["value"] for e in evs] == [2e15]


def test_symbol_cap_bounds_the_book():
    from edgewatch.agent.analytics.risk import Book

    book = Book(max_symbols=4)
    for i in range(20):
        book.positions[f"S{i}"] = 1.0
        book.prices[f"S{i}"] = 10.0
    assert list(book.positions) == ["S16", "S17", "S18", "S19"] and len(book.prices) == 4
    assert book.figures(RiskConfig())[0]["gross_exposure"] == 40.0
