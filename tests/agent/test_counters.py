"""Running totals (`anomaly.counters`) are judged as rates: by how fast they grow, not by their ever-larger value."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import csp
from edgewatch.agent.analytics.counters import CounterRates
from edgewatch.agent.analytics.topology import sensor_graph
from edgewatch.agent.config import AnomalyConfig, Config
from edgewatch.agent.records import SensorReading

T0 = datetime(2026, 1, 5)


def reading(minute: int, **metrics: float) -> SensorReading:
    return SensorReading(sensor_id="meter1", ts=T0 + timedelta(minutes=minute), metrics=metrics, attrs={})


def test_a_total_becomes_its_change_per_second():
    rates = CounterRates(AnomalyConfig(counters=["energy_kwh"]))
    first = rates([reading(0, energy_kwh=100.0, voltage=230.0)])
    assert [r.metrics for r in first] == [{"voltage": 230.0}]  # no rate yet; the other metrics go on
    assert rates([reading(1, energy_kwh=106.0)])[0].metrics == {"energy_kwh_rate": 0.1}  # 6 kWh in 60 s
    assert rates([reading(2, energy_kwh=1.0)]) == []  # a reset: no rate, and nothing else in the reading
    assert rates([reading(3, energy_kwh=7.0)])[0].metrics == {"energy_kwh_rate": 0.1}  # counting from the reset
    assert rates([reading(2, energy_kwh=5.0)]) == []  # out of order: no rate ...
    assert rates([reading(4, energy_kwh=13.0)])[0].metrics == {"energy_kwh_rate": 0.1}  # ... and no new last total


def meter(days: int, surge_at: int, reset_at: int, seed: int = 1) -> list[SensorReading]:
    """An energy meter's total every minute: about 1 kWh an hour (±30 % a minute), four times that for the two
    hours from minute `surge_at`, and reset to 0 at minute `reset_at`."""
    rnd = random.Random(seed)
    total, out = 5000.0, []
    for m in range(days * 1440):
        if m == reset_at:
            total = 0.0
        use = (4.0 if surge_at <= m < surge_at + 120 else 1.0) / 60.0
        total += use * (1.0 + rnd.uniform(-0.3, 0.3))
        out.append(reading(m, energy_kwh=round(total, 3)))
    return out


def anomalies(readings: list[SensorReading], counters: list[str]) -> list:
    cfg = Config()
    cfg.anomaly.counters = counters

    @csp.graph
    def g():
        with csp.memoize(False):
            csp.add_graph_output("events", sensor_graph(csp.curve(list[SensorReading], [(r.ts, [r]) for r in readings]),
                                                        cfg))

    out = csp.run(g, starttime=T0, endtime=readings[-1].ts)
    return [e for _, batch in out.get("events", []) for e in batch if e.kind == "anomaly"]


def test_a_surge_in_consumption_alarms_on_the_rate_and_a_meter_reset_does_not():
    surge, reset = 2 * 1440 + 600, 2 * 1440 + 1200
    readings = meter(3, surge, reset)
    as_rates = anomalies(readings, ["energy_kwh"])
    at = {int((e.ts - T0).total_seconds() // 60): e for e in as_rates}
    assert any(surge <= m < surge + 120 for m in at), sorted(at)
    assert all(e.data["metric"] == "energy_kwh_rate" for e in as_rates)
    assert not any(reset <= m < reset + 5 for m in at)
    # judged as a value, the reset breaks the range seen
    as_values = {int((e.ts - T0).total_seconds() // 60) for e in anomalies(readings, [])}
    assert any(reset <= m < reset + 5 for m in as_values), sorted(as_values)


def test_calibrate_and_score_see_what_the_agent_sees(tmp_path, capsys):
    """calibrate and score judge a running total as the agent does: by its rate."""
    from edgewatch.agent.cli import main
    from edgewatch.agent.commands.calibrate import calibrate
    from edgewatch.agent.commands.score import score_series

    export = tmp_path / "meter1.csv"
    surge = 1440 + 600
    rows = meter(2, surge_at=surge, reset_at=10**9)
    export.write_text("timestamp,energy_kwh\n" + "".join(f"{r.ts.isoformat()},{r.metrics['energy_kwh']}\n" for r in rows))
    cfg = Config()
    cfg.anomaly.counters = ["energy_kwh"]
    rep = calibrate([str(export)], cfg)
    assert rep["sensors"] == 1 and rep["readings"] == len(rows) - 1  # the first total has no rate
    assert rep["steps"][0]["alarms"] == len(anomalies(rows, ["energy_kwh"]))

    (tmp_path / "agent.toml").write_text('[anomaly]\ncounters = ["energy_kwh"]\n')
    out = tmp_path / "scored.csv"
    assert main(["score", str(export), "--config", str(tmp_path / "agent.toml"), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "timestamp,energy_kwh,anomaly_score"
    assert lines[1].endswith(",")  # the first total has no rate, so nothing to score
    scored = [float(line.rsplit(",", 1)[1]) for line in lines[2:]]
    # the same scores as the rate itself scored as a column
    rates = CounterRates(cfg.anomaly)(rows)
    assert scored == score_series([(r.ts, r.metrics["energy_kwh_rate"]) for r in rates], AnomalyConfig())
    assert max(scored[surge - 1 : surge + 119]) >= cfg.anomaly.threshold  # the surge, as the agent alarms on it
