"""The sensor side of the agent: readings in; anomaly, health and maintenance events out."""

from __future__ import annotations

import csp
from csp import ts

from agent.anomaly import anomaly_events, anomaly_scores
from agent.config import Config
from agent.health import check, sensor_health
from agent.market_graph import merge_events
from agent.records import Event, SensorReading


@csp.graph(memoize=False)
def sensor_graph(readings: ts[list[SensorReading]], cfg: Config) -> ts[list[Event]]:
    """Anomaly scores feed both the `anomaly` events and the health/maintenance node; one list per cycle."""
    check(cfg.health, cfg.maintenance)  # a bad key fails here, at wiring, not inside the running engine
    scores = anomaly_scores(readings, cfg.anomaly)
    anomalies = anomaly_events(scores, cfg.anomaly)
    health = sensor_health(readings, scores, cfg.health, cfg.maintenance)
    return merge_events([anomalies, health])
