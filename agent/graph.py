"""Top-level wiring: the analytics over the six input feeds, and the live agent around them.

`analytics` is the one graph that both `edge-agent run` (realtime, fed by MQTT)
and `edge-agent replay` (historical, fed by captures) run, so the same input
yields the same events either way.
"""


from datetime import timedelta

import csp
from csp import ts

from agent.config import Config
from agent.heartbeat import Heartbeat, heartbeat
from agent.market_graph import market_graph, merge_events
from agent.mqtt import RECORD_TYPES, MqttAdapterManager
from agent.records import Bar, Event, Headline, Pnl, Position, Quote, SensorReading, Trade
from agent.news import news_graph
from agent.sensor_graph import sensor_graph
from agent.sink import sink


@csp.graph(memoize=False)
def analytics(
    sensors: ts[list[SensorReading]],
    trades: ts[list[Trade]],
    quotes: ts[list[Quote]],
    positions: ts[list[Position]],
    pnl: ts[list[Pnl]],
    news: ts[list[Headline]],
    cfg: Config,
) -> csp.Outputs(events=ts[list[Event]], bars=ts[list[Bar]]):
    """Every analytic of the agent; news sentiment feeds the market signals."""
    news_out = news_graph(news, cfg)
    market = market_graph(trades, quotes, positions, pnl, news_out.sentiment, cfg)
    events = merge_events([sensor_graph(sensors, cfg), news_out.events, market.events])
    return csp.output(events=events, bars=market.bars)


@csp.graph(memoize=False)
def live(mgr: MqttAdapterManager, writer: object, cfg: Config, hb: Heartbeat, beat_every: timedelta):
    """MQTT in -> analytics -> sink (log, acknowledgements); the outbox takes it from the log."""
    feeds = {kind: mgr.subscribe(kind) for kind in RECORD_TYPES}
    out = analytics(feeds["sensor"], feeds["trade"], feeds["quote"], feeds["position"], feeds["pnl"],
                    feeds["news"], cfg)
    sink(out.events, out.bars, mgr.dead_letters(), mgr.marks(), writer, mgr.durable)
    heartbeat(hb, beat_every)
