"""The analytics on one page: six input feeds in, every finding out as events (and VWAP bars).

`analytics` is the one graph that both `edge-agent run` (realtime, fed by MQTT)
and `edge-agent replay` (historical, fed by captures) run, so the same input
yields the same events either way. The sensor side turns readings into anomaly,
health and maintenance events; the market side turns trades, quotes, the
portfolio and news sentiment into price alerts, bars, signals and risk events.
"""

from __future__ import annotations

import csp
from csp import ts
from edgewatch.agent.analytics.advisor import advisor
from edgewatch.agent.analytics.advisor import check as check_advisor
from edgewatch.agent.analytics.anomaly import anomaly_events, anomaly_scores
from edgewatch.agent.analytics.counters import counter_rates
from edgewatch.agent.analytics.drift import check as check_drift
from edgewatch.agent.analytics.health import check as check_health
from edgewatch.agent.analytics.health import sensor_health
from edgewatch.agent.analytics.market import check as check_market
from edgewatch.agent.analytics.market import market_analytics, price_alerts
from edgewatch.agent.analytics.news import news_graph
from edgewatch.agent.analytics.sensor_groups import GroupOf, split_by_group
from edgewatch.agent.analytics.risk import risk_checks
from edgewatch.agent.config import Config
from edgewatch.agent.records import (
    Bar,
    Event,
    Headline,
    MetricScore,
    Pnl,
    Position,
    Quote,
    SensorReading,
    Sentiment,
    Trade,
)


@csp.node
def merge_events(parts: [ts["T"]]) -> ts["T"]:
    """One list per engine cycle from several streams of lists (csp.merge would drop all but one)."""
    out = []
    for part in parts.tickedvalues():
        out += part
    return out


@csp.graph(memoize=False)
def anomaly_graph(readings: ts[list[SensorReading]], cfg: Config,
                  states: object = None) -> csp.Outputs(scores=ts[list[MetricScore]], events=ts[list[Event]]):
    """The scores (what health counts) and `anomaly` events; with `anomaly.groups`, one detector per group
    and one for the rest, each with its own settings and its own state (`anomaly:NAME`); running totals
    (`anomaly.counters`) reach the detector as rates."""
    min_score = cfg.health.anomaly_score
    if not cfg.anomaly.groups:
        if cfg.anomaly.counters:
            readings = counter_rates(readings, cfg.anomaly, states)
        scores = anomaly_scores(readings, cfg.anomaly, min_score, states)
        return csp.output(scores=scores, events=anomaly_events(scores, cfg.anomaly))
    group_of = GroupOf(cfg.anomaly, cfg.anomaly.max_series)
    parts = split_by_group(readings, group_of, len(group_of.settings))
    parts = [counter_rates(part, a, states, name) if a.counters else part
             for part, (name, a) in zip(parts, group_of.settings)]
    scores = [anomaly_scores(part, a, min_score, states, name) for part, (name, a) in zip(parts, group_of.settings)]
    events = [anomaly_events(part, a) for part, (_, a) in zip(scores, group_of.settings)]
    return csp.output(scores=merge_events(scores), events=merge_events(events))


@csp.graph(memoize=False)
def health_graph(readings: ts[list[SensorReading]], scores: ts[list[MetricScore]], cfg: Config,
                 states: object = None) -> ts[list[Event]]:
    """`health` and `maintenance` events; with `health.groups`, one node per group and one for the rest, each
    with its own settings and its own state (`health:NAME`)."""
    if not cfg.health.groups:
        return sensor_health(readings, scores, cfg.health, cfg.maintenance, cfg.drift, states)
    group_of = GroupOf(cfg.health, cfg.health.max_sensors)
    parts = split_by_group(readings, group_of, len(group_of.settings))
    score_parts = split_by_group(scores, group_of, len(group_of.settings))
    return merge_events([sensor_health(part, part_scores, h, cfg.maintenance, cfg.drift, states, name)
                         for part, part_scores, (name, h) in zip(parts, score_parts, group_of.settings)])


@csp.graph(memoize=False)
def sensor_graph(readings: ts[list[SensorReading]], cfg: Config, states: object = None) -> ts[list[Event]]:
    """Anomaly scores feed both the `anomaly` events and the health/maintenance node; one list per cycle.
    `states` (a snapshot.StateBook, or None) keeps the analytics' state across a restart."""
    check_health(cfg.health, cfg.maintenance)  # a bad key fails here, at wiring, not inside the running engine
    check_drift(cfg.drift, cfg.health)
    anomalies = anomaly_graph(readings, cfg, states)
    return merge_events([anomalies.events, health_graph(readings, anomalies.scores, cfg, states)])


@csp.graph(memoize=False)
def market_graph(
    trades: ts[list[Trade]],
    quotes: ts[list[Quote]],
    positions: ts[list[Position]],
    pnl: ts[list[Pnl]],
    sentiment: ts[list[Sentiment]],
    cfg: Config,
    states: object = None,
) -> csp.Outputs(events=ts[list[Event]], bars=ts[list[Bar]], views=ts[dict], limits=ts[dict]):
    """Price alerts, VWAP bars, regime signals and risk checks. `sentiment` may be csp.null_ts(list[Sentiment]).

    `views` (each bar's technical view) and `limits` (the risk state) are what the advisor fuses."""
    check_market(cfg.market)  # a bad key fails here, at wiring, not inside the running engine
    alerts = price_alerts(trades, cfg.market, states)
    market = market_analytics(trades, sentiment, cfg.market, states)
    risk = risk_checks(trades, quotes, positions, pnl, market.vols, cfg.risk, cfg.market.max_symbols, states)
    return csp.output(events=merge_events([alerts, market.signals, risk.events]), bars=market.bars,
                      views=market.views, limits=risk.limits)


@csp.graph(memoize=False)
def analytics(
    sensors: ts[list[SensorReading]],
    trades: ts[list[Trade]],
    quotes: ts[list[Quote]],
    positions: ts[list[Position]],
    pnl: ts[list[Pnl]],
    news: ts[list[Headline]],
    cfg: Config,
    states: object = None,
) -> csp.Outputs(events=ts[list[Event]], bars=ts[list[Bar]]):
    """Every analytic of the agent; news sentiment feeds the market signals. `states` (a snapshot.StateBook,
    or None) is where the stateful nodes keep their state, so that it can survive a restart."""
    news_out = news_graph(news, cfg)
    market = market_graph(trades, quotes, positions, pnl, news_out.sentiment, cfg, states)
    parts = [sensor_graph(sensors, cfg, states), news_out.events, market.events]
    if cfg.advisor.enabled:
        check_advisor(cfg.advisor)  # a bad key fails here, at wiring, not inside the running engine
        parts.append(advisor(news_out.events, news_out.sentiment, market.views, market.limits, cfg.advisor,
                             cfg.market.max_symbols, states))
    events = merge_events(parts)
    return csp.output(events=events, bars=market.bars)
