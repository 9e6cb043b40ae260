"""The market side of the agent: trades, quotes, portfolio and news sentiment in; events and bars out."""

from __future__ import annotations

import csp
from csp import ts

from agent.config import Config
from agent.market import check, market_analytics, price_alerts
from agent.records import Bar, Event, Pnl, Position, Quote, Sentiment, Trade
from agent.risk import risk_checks


@csp.node
def merge_events(parts: [ts[list[Event]]]) -> ts[list[Event]]:
    """One list per engine cycle from several event streams (csp.merge would drop all but one)."""
    out = []
    for part in parts.tickedvalues():
        out += part
    return out


@csp.graph(memoize=False)
def market_graph(
    trades: ts[list[Trade]],
    quotes: ts[list[Quote]],
    positions: ts[list[Position]],
    pnl: ts[list[Pnl]],
    sentiment: ts[list[Sentiment]],
    cfg: Config,
) -> csp.Outputs(events=ts[list[Event]], bars=ts[list[Bar]]):
    """Price alerts, VWAP bars, regime signals and risk checks. `sentiment` may be csp.null_ts(list[Sentiment])."""
    check(cfg.market)  # a bad key fails here, at wiring, not inside the running engine
    alerts = price_alerts(trades, cfg.market.price_alert_threshold)
    analytics = market_analytics(trades, sentiment, cfg.market)
    risk = risk_checks(trades, quotes, positions, pnl, analytics.vols, cfg.risk)
    return csp.output(events=merge_events([alerts, analytics.signals, risk]), bars=analytics.bars)
