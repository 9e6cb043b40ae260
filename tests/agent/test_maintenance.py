"""Maintenance flags: hysteresis, and every simulated fault found by the right reason within a bounded delay."""

from __future__ import annotations

from datetime import datetime, timedelta

import csp
import pytest
from edgewatch.agent.analytics.maintenance import DRIFT, REASONS, Flags, Rules
from edgewatch.agent.analytics.topology import sensor_graph
from edgewatch.agent.config import Config, HealthConfig, MaintenanceConfig
from edgewatch.agent.records import SensorReading, event_id
from edgewatch.agent.testing.simulator import (
    RANGES,
    SENSOR_FAULTS,
    SimConfig,
    Simulator,
    match_faults,
    to_batches,
)
from edgewatch.agent.timeutil import parse_timestamp

T0 = datetime(2026, 3, 2, 8, 0)


def measures(**given) -> list:
    m = [None] * len(REASONS)
    for name, value in given.items():
        m[REASONS.index(name)] = value
    return m


def test_flag_raises_at_the_raise_level_and_does_not_flap_around_it():
    rules = Rules(HealthConfig(drift_z=6.0), MaintenanceConfig(drift_clear_z=3.0, clear_readings=5))
    flags = Flags()
    assert flags.update(measures(drift=5.9), rules) == ([], [])
    assert flags.update(measures(drift=6.0), rules) == ([DRIFT], [])
    # wobbling between the clear and raise levels keeps the flag up, silently
    for z in (5.0, 6.5, 4.0, 3.5, 7.0, 3.1):
        assert flags.update(measures(drift=z), rules) == ([], [])
    assert flags.active() == ["drift"]
    # four calm readings, then one that is not: the count starts again
    for _ in range(4):
        assert flags.update(measures(drift=1.0), rules) == ([], [])
    assert flags.update(measures(drift=3.5), rules) == ([], [])
    for _ in range(4):
        assert flags.update(measures(drift=1.0), rules) == ([], [])
    assert flags.update(measures(drift=1.0), rules) == ([], [DRIFT])
    assert flags.active() == []


def test_low_battery_uses_the_battery_level_with_a_margin():
    rules = Rules(HealthConfig(low_battery=15.0), MaintenanceConfig(battery_clear_margin=10.0, clear_readings=1))
    flags = Flags()
    assert flags.update(measures(low_battery=-16.0), rules) == ([], [])
    assert flags.update(measures(low_battery=-15.0), rules)[0] == [REASONS.index("low_battery")]
    assert flags.update(measures(low_battery=-20.0), rules) == ([], [])  # not yet 25
    assert flags.update(measures(low_battery=-99.0), rules)[1] == [REASONS.index("low_battery")]


def run_sim(sim: Simulator, cfg: Config, duration: float) -> list:
    feed = to_batches(sim.messages(), cfg)["sensor"]

    @csp.graph
    def g():
        csp.add_graph_output("events", sensor_graph(csp.curve(list[SensorReading], feed), cfg))

    out = csp.run(g, starttime=T0, endtime=timedelta(seconds=duration))
    return [e for _, evs in out.get("events", []) for e in evs]


# how long (seconds at one reading per second) each reason may take to be raised after its fault starts
MAX_DELAY = {"anomaly_burst": 30, "drift": 60, "stuck": 30, "stale": 15, "noisy": 120, "low_battery": 100,
             "out_of_range": 15}


def test_every_injected_fault_raises_its_reason_within_a_bounded_delay():
    cfg = Config()
    cfg.health.ranges = RANGES  # the simulated fleet's units: its impossible readings are out_of_range
    sim = Simulator(SimConfig(sensors=21, symbols=0, duration=600, seed=11, fault_fraction=1.0), T0)
    assert sorted({f.kind for f in sim.faults}) == sorted(SENSOR_FAULTS)
    events = run_sim(sim, cfg, 600)
    scores = match_faults(sim.faults, events, timedelta(seconds=30))
    for reason, s in scores.items():
        assert s["recall"] == 1.0, (reason, s)
        assert s["max_delay_s"] <= MAX_DELAY[reason], (reason, s)
    raised = [e for e in events if e.kind == "maintenance" and e.data["state"] == "raised"]
    assert all(e.severity == "warning" and e.data["reasons"] for e in raised)
    assert len({e.event_id for e in events}) == len(events)
    # every flag is stamped in data time and keyed on it: one a reading raised or cleared carries that reading's
    # time; a stale raise (found by the timer) the moment the silence passed the sensor's stale threshold
    seen = {(r.sensor_id, r.ts) for _, batch in to_batches(sim.messages(), cfg)["sensor"] for r in batch}
    flags = [e for e in events if e.kind == "maintenance"]
    for e in flags:
        assert e.event_id == event_id("maintenance", e.key, e.ts, e.data["state"], *e.data["reasons"])
        if e.data["reasons"] == ["stale"] and e.data["state"] == "raised":
            last = parse_timestamp(e.data["last_reading"])
            assert (e.key, last) in seen and last + timedelta(seconds=cfg.health.stale_min) <= e.ts
        else:
            assert (e.key, e.ts) in seen
    assert {e.data["state"] for e in flags} == {"raised", "cleared"}


def test_healthy_sensors_raise_nothing_over_a_long_run():
    cfg = Config()
    sim = Simulator(SimConfig(sensors=12, symbols=0, duration=3600, seed=4, faults=False), T0)
    events = run_sim(sim, cfg, 3600)
    assert [e for e in events if e.kind == "maintenance"] == []
    periodic = [e for e in events if e.kind == "health" and e.data["why"] == "periodic"]
    assert len(periodic) == pytest.approx(12 * 60, abs=12)
    assert min(e.data["score"] for e in periodic) > 0.5


def test_a_stuck_sensor_that_moves_again_is_not_also_an_anomaly_burst():
    """A value that moves again after a stuck stretch surprises the detector for a while (its scale shrank while
    nothing moved). Those anomalies are the stuck fault's after-effect: while `stuck` is raised, and for
    health.anomaly_span readings after it clears, they do not count toward the anomaly rate, so no
    `anomaly_burst` follows the `stuck` flag (it did on every one of 34 simulated stuck faults before)."""
    sim = Simulator(SimConfig(sensors=30, symbols=0, duration=900, seed=3, fault_fraction=1.0, fault_kinds=("stuck",)),
                    T0)
    events = run_sim(sim, Config(), 900)
    stuck = {e.key for e in events if e.kind == "maintenance" and e.data["state"] == "raised"
             and "stuck" in e.data["reasons"]}
    assert len(stuck) >= 20 and stuck == {f.key for f in sim.faults}
    bursts = [e.key for e in events if e.kind == "maintenance" and e.data["state"] == "raised"
              and "anomaly_burst" in e.data["reasons"] and e.key in stuck]
    assert len(bursts) <= 1
