"""Slow drift in historical mode: a ramp of 3 noise-sigma an hour is found within two hours; a daily cycle, a
step to a new level and healthy sensors over two days are not; the CUSUM's bounds hold block by block."""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta

import csp
from edgewatch.agent import config
from edgewatch.agent.analytics import snapshot
from edgewatch.agent.analytics.drift import DriftParams, LevelDrift
from edgewatch.agent.analytics.snapshot import StateBook
from edgewatch.agent.analytics.topology import sensor_graph
from edgewatch.agent.config import Config, DriftConfig
from edgewatch.agent.records import SensorReading

from bench import drift as drift_bench
from bench import outages

T0 = datetime(2026, 3, 2)
PERIOD = 10.0  # seconds between readings
SIGMA = 0.3  # noise of the simulated temperature, degrees C


def temperature(sid: str, hours: float, seed: int, cycle: float = 0.5, ramp_at: float | None = None,
                step_at: float | None = None, step: float = 2.0, ramp_for: float = math.inf) -> list[SensorReading]:
    """A sensor at about 21 C: noise SIGMA, a mild daily cycle of amplitude `cycle`, optionally a ramp of 3 SIGMA an
    hour from `ramp_at` hours on (for `ramp_for` hours, then level), or a step of `step` to a new stable level at
    `step_at` hours."""
    rng = random.Random(seed)
    out = []
    for i in range(int(hours * 3600 / PERIOD)):
        h = i * PERIOD / 3600
        x = 21.0 + cycle * math.sin(2 * math.pi * h / 24) + rng.gauss(0, SIGMA)
        if ramp_at is not None and h >= ramp_at:
            x += 3 * SIGMA * min(h - ramp_at, ramp_for)
        if step_at is not None and h >= step_at:
            x += step
        out.append(SensorReading(sensor_id=sid, ts=T0 + timedelta(hours=h), metrics={"temperature": round(x, 2)},
                                 attrs={}))
    return out


def run(readings: list[SensorReading], cfg: Config, batch: timedelta | None = None) -> list:
    """The sensor graph's events over `readings`, one batch per reading (or per `batch` of data time)."""
    readings = sorted(readings, key=lambda r: r.ts)
    if batch is None:
        batches = [(r.ts, [r]) for r in readings]
    else:
        grouped: dict = {}
        for r in readings:
            grouped.setdefault(T0 + (r.ts - T0) // batch * batch + batch, []).append(r)
        batches = sorted(grouped.items())

    @csp.graph
    def g():
        csp.add_graph_output("events", sensor_graph(csp.curve(list[SensorReading], batches), cfg))

    out = csp.run(g, starttime=T0, endtime=batches[-1][0] - T0 + timedelta(seconds=1))
    return [e for _, evs in out.get("events", []) for e in evs]


def across_a_restart(readings: list[SensorReading], cfg: Config, split: datetime) -> tuple[list, list, list, StateBook]:
    """(event id, whether it flags drift) of the events from `split` on: of the uninterrupted run, of a run
    restored there from the snapshot of the readings before, and of one started fresh there; and that snapshot."""

    def events(part: list, book: StateBook | None) -> list:
        @csp.graph
        def g():
            csp.add_graph_output("events", sensor_graph(csp.curve(list[SensorReading], [(r.ts, [r]) for r in part]),
                                                        cfg, book))

        out = csp.run(g, starttime=part[0].ts, endtime=part[-1].ts + timedelta(seconds=1))
        return [(e.event_id, e.kind == "maintenance" and "drift" in e.data["reasons"])
                for _, evs in out.get("events", []) for e in evs if e.ts >= split]

    book = StateBook()
    events([r for r in readings if r.ts < split], book)
    after = [r for r in readings if r.ts >= split]
    restored = events(after, StateBook(snapshot.loads(book.dumps())))
    return events(readings, None), restored, events(after, StateBook()), book


def drift_flags(events: list) -> list:
    return [e for e in events if e.kind == "maintenance" and "drift" in e.data["reasons"]]


def test_a_ramp_of_three_noise_sigma_an_hour_raises_drift_within_two_hours():
    start = 8.0  # hours: the detector has learnt its scale by then (12 blocks of 10 minutes)
    readings = temperature("lab/t1", start + 4, seed=1, ramp_at=start)
    events = run(readings, Config())
    raised = [e for e in drift_flags(events) if e.data["state"] == "raised"]
    assert raised, "no drift raised"
    at = raised[0].ts
    assert T0 + timedelta(hours=start) < at <= T0 + timedelta(hours=start + 2)
    slow = raised[0].data["slow_drift"]
    assert slow["metric"] == "temperature" and slow["cusum"] >= 1.0
    # the evidence: the level's move since the reference, which stayed where the ramp began
    assert abs(slow["reference"] - 21.0) < 0.5
    gone = 3 * SIGMA * (at - T0 - timedelta(hours=start)).total_seconds() / 3600
    assert 0.5 * gone < slow["change"] < 1.5 * gone + 0.5
    # health's short window alone follows the ramp: with slow drift off nothing is raised in the same hours
    off = Config()
    off.drift.block = 0.0
    assert drift_flags(run(readings, off)) == []


def test_a_daily_cycle_a_step_and_healthy_sensors_raise_no_drift_over_two_days():
    readings = (temperature("lab/healthy", 48, seed=2, cycle=0.0)
                + temperature("lab/cycle", 48, seed=3)
                + temperature("lab/step", 48, seed=4, step_at=10.25))
    events = run(readings, Config())
    assert drift_flags(events) == []
    # the step is an anomaly, then a new normal
    assert any(e.kind == "anomaly" and e.key == "lab/step" and e.ts == T0 + timedelta(hours=10.25) for e in events)


def test_slow_drift_is_cut_in_data_time_whatever_the_batching():
    readings = temperature("lab/t1", 11, seed=5, ramp_at=8.0)
    one = [(e.event_id, e.ts) for e in drift_flags(run(readings, Config()))]
    assert one and one == [(e.event_id, e.ts) for e in drift_flags(run(readings, Config(), timedelta(minutes=7)))]


def test_against_the_usual_day_a_strong_daily_cycle_is_no_drift_and_a_ramp_still_is():
    """A cycle of 3 C against noise of 0.3 climbs faster than the 3-sigma-an-hour ramps the detector exists for:
    judged against its own level, a healthy sensor raises `drift` on the cycle's slopes. Against the same block
    of the usual day (`reference = "daily"`) the cycle cancels: the healthy sensor raises nothing in 60 hours, and one
    ramping by 3 noise-sigma an hour from hour 30 (a day after the start and the scale's warm-up) is found
    within three hours (about 1.5 times later than against its own level: a block mean's difference from the
    usual day is noisier). The ramp stops after six hours; its hours were not learnt into the usual day while
    raised, so a day later it does not come back as a drift the other way (against yesterday alone it did)."""
    readings = temperature("lab/cycle", 60, seed=8, cycle=3.0) + temperature("lab/ramp", 60, seed=9, cycle=3.0,
                                                                             ramp_at=30.0, ramp_for=6.0)
    assert "lab/cycle" in {e.key for e in drift_flags(run(readings, Config())) if e.data["state"] == "raised"}
    cfg = Config()
    cfg.drift.reference = "daily"
    raised = [e for e in drift_flags(run(readings, cfg)) if e.data["state"] == "raised"]
    assert [e.key for e in raised] == ["lab/ramp"]
    assert T0 + timedelta(hours=30) < raised[0].ts <= T0 + timedelta(hours=33)
    assert raised[0].data["slow_drift"]["against"] == "daily"


def test_against_the_usual_day_a_precise_sensor_is_not_flagged_on_its_first_day():
    """A precise sensor (noise 0.05 C, a reading a minute) on a 3 C daily cycle leaves health's short-window baseline
    (its first 30 readings) behind on its first morning, and judged against its own level it raises `drift` then.
    Against the usual day only the usual day's CUSUM judges drift: nothing is raised on the first day."""
    cfg = Config()
    cfg.drift.reference = "daily"
    for seed in range(3):
        readings = [SensorReading(sensor_id=r.sensor_id, ts=T0 + (r.ts - outages.T0), metrics=r.metrics, attrs={})
                    for r in outages.wandering(seed, 1, (0, 0))][:1440]
        assert [e for e in drift_flags(run(readings, Config())) if e.data["state"] == "raised"]
        assert drift_flags(run(readings, cfg)) == []


def test_a_health_group_chooses_its_own_drift_reference(tmp_path):
    """`[health.groups.rooms] drift_reference = "daily"`: in one graph, a room on a steep daily cycle is judged
    against its usual day and raises nothing, while the same cycle elsewhere keeps `[drift] reference` (its own
    level) and raises `drift` on its slopes."""
    path = tmp_path / "agent.toml"
    path.write_text('[health.groups.rooms]\nsensors = ["room/#"]\ndrift_reference = "daily"\n')
    cfg = config.load(path, environ={})
    readings = temperature("room/a", 60, seed=8, cycle=3.0) + temperature("hall/a", 60, seed=8, cycle=3.0)
    assert {e.key for e in drift_flags(run(readings, cfg)) if e.data["state"] == "raised"} == {"hall/a"}


def test_the_usual_day_resumes_from_a_snapshot():
    """The usual day's block means are part of the health state: restored from a snapshot taken an hour before the ramp,
    the graph raises the same events as the uninterrupted run; without them it would judge nothing for a day."""
    cfg = Config()
    cfg.drift.reference = "daily"
    whole, resumed, fresh, _ = across_a_restart(temperature("lab/ramp", 34, seed=9, cycle=3.0, ramp_at=30.0), cfg,
                                                T0 + timedelta(hours=29))
    assert resumed == whole and any(drift for _, drift in whole)
    assert not any(drift for _, drift in fresh)


def test_a_step_adds_a_bounded_amount_and_a_steady_move_a_fixed_one_per_block():
    """Block by block: after the scale is learnt, a step of any size moves the CUSUM by at most 2 (clip -
    allowance), then the sum decays; a level moving by clip scales or more adds clip - allowance every block."""
    d = DriftConfig()
    p = DriftParams(d, 6.0)
    rng = random.Random(6)

    def blocks(level: LevelDrift, means) -> list[float]:
        out = []
        for m in means:
            level.total, level.n = m, 1
            out.append(level.close(p))
        return out

    noise = [rng.gauss(0, 0.05) for _ in range(60)]
    level = LevelDrift()
    assert blocks(level, noise[:d.warmup + 2]) == [0.0] * (d.warmup + 2)  # learning the scale
    before = blocks(level, noise[d.warmup + 2:30])[-1]
    scores = blocks(level, [x + 100.0 for x in noise[30:]])  # a huge step, then the new normal
    assert max(scores) <= before + 2 * (d.clip - d.allowance) / d.threshold < 1.0 and scores[-1] == 0.0
    ramp = blocks(level, [100.0 + 10.0 * k for k in range(1, 5)])  # far more than clip scales a block
    assert ramp == [(d.clip - d.allowance) * k / d.threshold for k in range(1, 5)]


def test_levels_near_the_float_limit_start_the_series_over_instead_of_poisoning_it():
    p = DriftParams(DriftConfig(), 6.0)
    level = LevelDrift()
    for mean in (0.0, 1e300, -1e300, 1e300):
        level.total, level.n = mean, 1
        assert level.close(p) == 0.0
    assert level.var == 0.0 and math.isfinite(level.up)


def outdoor(sid: str, hours: float, seed: int, drift_at: float | None = None) -> list[SensorReading]:
    """One of bench/drift.py's group of outdoor sensors (a shared 5 C daily cycle and a 5 C front from hour 8),
    optionally drifting by 3 SIGMA an hour of its own from `drift_at` hours on."""
    return [SensorReading(sensor_id=sid, ts=T0 + timedelta(seconds=t), metrics={"temperature": x}, attrs={})
            for t, x in drift_bench.outdoor(seed, hours, drift_at=drift_at, front_at=8.0)]


def test_against_peers_a_shared_move_is_no_drift_and_one_sensor_walking_away_is():
    """Six outdoor sensors under one prefix share a 5 C daily cycle and a 5 C front: against their own level
    most of the healthy ones drift (the shared move is a real move of each level); against their peers none
    does in 20 hours, while the one that drifts by 3 noise-sigma an hour of its own is raised within two hours.
    Two sensors under another prefix have too few peers and are judged against their own level."""
    readings = [r for k in range(5) for r in outdoor(f"yard/t{k}", 20, seed=k)]
    readings += outdoor("yard/t5", 20, seed=5, drift_at=16.0)
    readings += temperature("lab/a", 20, seed=6) + temperature("lab/b", 20, seed=7, ramp_at=16.0)
    own = {e.key for e in drift_flags(run(readings, Config())) if e.data["state"] == "raised"}
    assert len(own & {f"yard/t{k}" for k in range(5)}) >= 3
    cfg = Config()
    cfg.drift.reference = "peers"
    raised = [e for e in drift_flags(run(readings, cfg)) if e.data["state"] == "raised"]
    assert {e.key for e in raised} == {"yard/t5", "lab/b"}
    first = {e.key: e for e in reversed(raised)}
    assert T0 + timedelta(hours=16) < first["yard/t5"].ts <= T0 + timedelta(hours=18)
    assert first["yard/t5"].data["slow_drift"]["against"] == "peers"
    assert first["lab/b"].data["slow_drift"]["against"] == "own"


def test_peer_drift_resumes_from_a_snapshot_as_if_never_stopped():
    """The groups' block sums and each sensor's peer CUSUM are part of the health state: a graph restored from a
    snapshot taken mid-drift raises the same events after it as the uninterrupted run."""
    readings = sorted([r for k in range(4) for r in outdoor(f"yard/t{k}", 19, seed=k)]
                      + outdoor("yard/t4", 19, seed=4, drift_at=16.0), key=lambda r: r.ts)
    cfg = Config()
    cfg.drift.reference = "peers"
    whole, resumed, fresh, book = across_a_restart(readings, cfg, T0 + timedelta(hours=16.5))
    assert book.keys()["drift_peers"] == 1  # one group, one metric
    assert resumed == whole and any(drift for _, drift in whole)
    assert fresh != whole  # the state is what carries it


def test_a_peer_falling_silent_for_a_while_does_not_turn_the_group_against_its_own_levels():
    """Four sensors, peer_min 3: while one is silent for 1.5 hours during the front, the others have two peers;
    their last verdict against peers holds (for drift.warmup blocks) instead of the front raising drift against
    their own levels, and the silent one, back, is found when it drifts."""
    readings = [r for k in range(3) for r in outdoor(f"yard/t{k}", 18, seed=k)]
    readings += [r for r in outdoor("yard/t3", 18, seed=3, drift_at=16.0)
                 if not T0 + timedelta(hours=9) <= r.ts < T0 + timedelta(hours=10.5)]
    cfg = Config()
    cfg.drift.reference = "peers"
    raised = [e for e in drift_flags(run(readings, cfg)) if e.data["state"] == "raised"]
    assert [(e.key, e.data["slow_drift"]["against"]) for e in raised] == [("yard/t3", "peers")]
    assert raised[0].ts <= T0 + timedelta(hours=18)
