"""The anomaly detector in csp historical mode: scores, warm-up, level shifts, order, scale."""

from __future__ import annotations

import math
import random
import time
import tracemalloc
from datetime import datetime, timedelta

import csp
import pytest
from edgewatch.agent.analytics.anomaly import Detector, anomaly_events, anomaly_scores
from edgewatch.agent.config import AnomalyConfig
from edgewatch.agent.records import AnomalyScore, MetricScore, SensorReading
from edgewatch.agent.testing.simulator import SimConfig, Simulator
from edgewatch.agent.timeutil import parse_timestamp

from bench import outages, rhythms
from bench.nab import simulated_alarms

T0 = datetime(2024, 1, 1)
STEP = timedelta(minutes=5)


def reading(i: int, x: float, sensor: str = "s1", metric: str = "temperature") -> SensorReading:
    return SensorReading(sensor_id=sensor, ts=T0 + i * STEP, metrics={metric: x}, attrs={})


def run_graph(readings: list[SensorReading], cfg: AnomalyConfig) -> tuple[list[MetricScore], list]:
    """Each reading is one engine tick (a late reading ticks at the latest time so far); all scores and events."""
    ticks, now = [], readings[0].ts
    for r in readings:
        now = max(now, r.ts)
        ticks.append((now, [r]))

    @csp.graph
    def g():
        with csp.memoize(False):
            scores = anomaly_scores(csp.curve(list[SensorReading], ticks), cfg)
            csp.add_graph_output("scores", scores)
            csp.add_graph_output("events", anomaly_events(scores, cfg))

    out = csp.run(g, starttime=T0, endtime=now)
    scores = [s for _, batch in out.get("scores", []) for s in batch]
    events = [e for _, batch in out.get("events", []) for e in batch]
    return scores, events


def noisy(n: int, seed: int = 1, sigma: float = 1.0, level: float = 20.0) -> list[float]:
    rnd = random.Random(seed)
    return [level + rnd.gauss(0.0, sigma) for _ in range(n)]


def seasonal(n: int, seed: int = 2) -> list[float]:
    rnd = random.Random(seed)
    return [20.0 + 5.0 * math.sin(2 * math.pi * (i * STEP).total_seconds() / 86400) + rnd.gauss(0, 0.3) for i in range(n)]


@pytest.mark.parametrize("kind", ["flat", "noisy", "seasonal"])
def test_spike_scores_high_and_raises_one_event(kind):
    n, at = 3100, 3000
    values = {"flat": [20.0] * n, "noisy": noisy(n), "seasonal": seasonal(n)}[kind]
    values[at] += 25.0
    cfg = AnomalyConfig()
    scores, events = run_graph([reading(i, x) for i, x in enumerate(values)], cfg)
    assert len(scores) == n
    assert scores[at].score >= cfg.threshold
    # the long-run statistics are still young over the first ~long_span readings: a rare early false alarm
    assert sum(s.score >= cfg.threshold for s in scores[:at]) <= 2
    assert events[-1].ts == T0 + at * STEP and all(e.ts <= T0 + at * STEP for e in events)
    ev = events[-1]
    assert ev.kind == "anomaly" and ev.key == "s1" and ev.severity in ("warning", "critical")
    assert ev.data["metric"] == "temperature" and ev.data["value"] == values[at]
    assert ev.data["band_low"] <= ev.data["expected"] <= ev.data["band_high"] < values[at]
    assert {"score", "threshold", "surprise", "surprise_mean", "surprise_std", "readings"} <= set(ev.data)


def test_pure_noise_false_alarms_are_rare():
    """The default threshold is tuned on NAB, which charges little for a false alarm: 1-5 per 20,000 here."""
    cfg = AnomalyConfig()
    out = Detector(cfg).score_readings([reading(i, x) for i, x in enumerate(noisy(20_000, seed=4))])
    alarms = [i for i, s in enumerate(out) if s.score >= cfg.threshold]
    assert len(alarms) <= 6, alarms


def test_healthy_simulated_sensors_rarely_alarm_right_after_warmup():
    """Operators see the phase NAB's probation hides: a young range and young surprise statistics."""
    cfg = AnomalyConfig()
    sensors, readings = 50, 500
    sim = Simulator(SimConfig(sensors=sensors, symbols=0, faults=False, duration=float(readings)), datetime(2024, 1, 1, 8))
    alarms = simulated_alarms(cfg, sim)
    scored = sensors * 4 * (readings - cfg.warmup)  # four metrics per reading
    assert 1000 * len(alarms) / scored <= 1.2, len(alarms)  # was 2.6 per 1000 (3.8 in readings 101-300)
    assert sum(n <= 300 for *_, n in alarms) <= 0.6 * len(alarms) + 5  # no pile-up just after the warm-up


def test_simulated_spikes_are_still_detected():
    sim = Simulator(SimConfig(sensors=40, symbols=0, fault_fraction=0.5, fault_kinds=("spike",), duration=500.0),
                    datetime(2024, 1, 1, 8))
    alarms = simulated_alarms(AnomalyConfig(), sim)
    found = {f for f in sim.faults if any(s == f.key and m == f.metric and f.start <= t < f.end
                                          for s, m, t, _ in alarms)}
    # these sensors publish four metrics: their sensor-level score takes a metric's own verdict only when it
    # breaks the range seen so far (fuse_metrics = false, chosen on SKAB), so a spike inside an earlier excursion
    # can go unseen (13 of 15 here; 15 of 15 with fuse_metrics, at twice the false alarms on SKAB's healthy pump)
    assert len(sim.faults) >= 10 and len(found) >= 0.85 * len(sim.faults)


def test_event_id_is_deterministic():
    values = noisy(800)
    values[700] += 30.0
    cfg = AnomalyConfig()
    _, e1 = run_graph([reading(i, x) for i, x in enumerate(values)], cfg)
    _, e2 = run_graph([reading(i, x) for i, x in enumerate(values)], cfg)
    assert e1 and [e.event_id for e in e1] == [e.event_id for e in e2]


def test_warmup_scores_zero():
    cfg = AnomalyConfig(warmup=50)
    rnd = random.Random(3)
    values = [rnd.uniform(-1e3, 1e3) for _ in range(200)]  # wild from the start
    scores, _ = run_graph([reading(i, x) for i, x in enumerate(values)], cfg)
    assert all(s.score == 0.0 for s in scores[: cfg.warmup])


def test_level_shift_alarms_once_then_rebaselines():
    at = 3000
    values = noisy(at) + noisy(1500, seed=9, level=60.0)
    cfg = AnomalyConfig()
    scores, events = run_graph([reading(i, x) for i, x in enumerate(values)], cfg)
    after = [(e.ts - T0) // STEP for e in events if e.ts >= T0 + (at - 500) * STEP]
    assert at <= after[0] < at + 10
    assert not [i for i in after[1:] if i < at + cfg.refractory + 100]  # no repeats while it re-learns
    late = sorted(s.score for s in scores[at + cfg.refractory :])
    assert late[len(late) // 2] < 0.2 and len(after) <= 2  # the new level is the norm: noise-rate alarms only


def test_noise_change_does_not_flood():
    values = noisy(3000, sigma=1.0) + noisy(1500, seed=5, sigma=4.0)
    _, events = run_graph([reading(i, x) for i, x in enumerate(values)], AnomalyConfig())
    # the change itself, then one or two more while the scale and the surprise's history adapt (2-5 over seeds)
    assert len([e for e in events if e.ts >= T0 + 2500 * STEP]) <= 3


def test_scores_in_unit_interval_no_nan_on_hostile_values():
    rnd = random.Random(7)
    values = []
    for i in range(3000):
        values.append(rnd.choice([0.0, 1e-300, -1e-300, 1e29, -1e29, 5e-324, rnd.gauss(0, 1e6), 42.0]))
    values += [float("nan"), float("inf"), -float("inf"), 1e31]  # not scored: no MetricScore at all
    scores, _ = run_graph([reading(i, x) for i, x in enumerate(values)], AnomalyConfig())
    assert len(scores) == 3000
    assert all(0.0 <= s.score <= 1.0 and not math.isnan(s.score) for s in scores)


def test_out_of_order_reading_is_scored_without_learning():
    values = noisy(600)
    readings = [reading(i, x) for i, x in enumerate(values)]
    late = SensorReading(sensor_id="s1", ts=T0 + 10 * STEP, metrics={"temperature": 1e6}, attrs={})
    cfg = AnomalyConfig()
    with_late, _ = run_graph(readings[:400] + [late] + readings[400:], cfg)
    without, _ = run_graph(readings, cfg)
    assert with_late[400].score >= cfg.threshold  # judged like any other reading
    assert [s.score for s in with_late[401:]] == [s.score for s in without[400:]]  # state untouched


def test_keys_are_independent():
    cfg = AnomalyConfig()
    a = [reading(i, x, sensor="a") for i, x in enumerate(noisy(600, seed=1))]
    b = [reading(i, x, sensor="b", metric="humidity") for i, x in enumerate(noisy(600, seed=2, level=50))]
    both = Detector(cfg).score_readings([r for pair in zip(a, b) for r in pair])
    alone = Detector(cfg).score_readings(a)
    assert [s.score for s in both if s.sensor_id == "a"] == [s.score for s in alone]


def test_detections_carry_evidence_type():
    values = noisy(800)
    values[700] += 40.0
    cfg = AnomalyConfig()
    out = Detector(cfg).score_readings([reading(i, x) for i, x in enumerate(values)])
    assert type(out[700]) is AnomalyScore
    assert all((type(s) is AnomalyScore) == (s.score >= cfg.threshold) for s in out)


def test_a_batch_scores_as_its_readings_one_by_one():
    """The detector judges a batch in waves with no sensor twice: any batching gives the same scores and evidence,
    with repeated sensors, out-of-order readings, new metrics midway and multi-metric fusion."""
    rng = random.Random(7)
    readings = []
    for i in range(900):
        sensor = f"s{rng.randrange(3)}"
        late = timedelta(minutes=30) if i % 97 == 0 else timedelta(0)
        metrics = {"a": 20.0 + rng.gauss(0, 1) + (15.0 if i % 301 == 0 else 0.0), "b": 5.0 + rng.gauss(0, 0.2)}
        if i > 450:
            metrics["c"] = rng.gauss(0, 1)
        readings.append(SensorReading(sensor_id=sensor, ts=T0 + i * STEP - late, metrics=metrics, attrs={}))

    def scored(size: int) -> list:
        det = Detector(AnomalyConfig(pairs=True))
        return [(type(sc), sc.sensor_id, sc.metric, sc.score, getattr(sc, "expected", None), getattr(sc, "channel", None))
                for k in range(0, len(readings), size) for sc in det.score_readings(readings[k:k + size])]

    one_by_one = scored(1)
    assert sum(1 for s in one_by_one if s[3] >= AnomalyConfig().threshold) >= 3
    assert scored(7) == one_by_one and scored(900) == one_by_one


@pytest.mark.parametrize("cfg", [AnomalyConfig(), AnomalyConfig(pairs=True, fuse="fisher", fuse_metrics=True, change_hold=0.0,
                                                                spike_z=4.0),
                                 AnomalyConfig(fuse="off", warmup=20),
                                 AnomalyConfig(timezone="America/New_York", season_days=7, season_buckets=10080,
                                               season_min=1)])
def test_small_and_large_waves_are_judged_alike(cfg: AnomalyConfig):
    """A wave of a few readings is judged value by value (judge_values), a larger one by array operations (judge):
    both give the same bits, on the simulator's faulty fleet with its spikes, drifts and dropouts, a tenth of its
    readings lost and a minute's outage on every third sensor (the forecast then looks several readings ahead)."""
    sim = Simulator(SimConfig(sensors=40, symbols=0, rate=1.0, duration=300), T0)
    rng = random.Random(7)
    readings = [SensorReading(sensor_id=m.topic.split("/", 1)[1], ts=parse_timestamp(m.payload["ts"]),
                              metrics={k: float(v) for k, v in m.payload.items() if k not in ("ts", "status")}, attrs={})
                for m in sim.messages() if m.topic.startswith("sensors/")]
    away = (T0 + timedelta(seconds=150), T0 + timedelta(seconds=210))
    readings = [r for r in readings
                if rng.random() > 0.1 and not (sum(map(ord, r.sensor_id)) % 3 == 0 and away[0] <= r.ts < away[1])]

    def scored(small_wave: int) -> list:
        det = Detector(cfg)
        det.small_wave = small_wave
        return [(type(sc), sc.sensor_id, sc.metric, sc.ts, sc.score, getattr(sc, "expected", None),
                 getattr(sc, "channel", None)) for k in range(0, len(readings), 40)
                for sc in det.score_readings(readings[k:k + 40])]

    arrays = scored(0)
    assert sum(1 for s in arrays if s[4] >= cfg.threshold) >= 5
    assert scored(10**9) == arrays


def daily(days: int, seed: int, resolution: float = 0.0) -> list[float]:
    """A 5-minute temperature with a daily cycle (amplitude 8) and noise (sigma 0.3), optionally rounded to
    `resolution`, as a coarse converter reports it."""
    rnd = random.Random(seed)
    xs = [20.0 + 8.0 * math.sin(2.0 * math.pi * i / 288) + rnd.gauss(0.0, 0.3) for i in range(288 * days)]
    return [round(x / resolution) * resolution for x in xs] if resolution else xs


@pytest.mark.parametrize("seed", [0, 1])
def test_a_coarse_sensor_does_not_alarm_on_its_resolution(seed: int):
    """Rounded to 1 degree, most readings in a time-of-day bucket are identical, so the bucket's learnt scale is
    ~0 and a one-step change would look like 100 scales (15-16 false alarms in ten days when the band followed
    the bucket alone); the profile's band is never below the data's resolution (its smallest change seen), so
    ten quiet days raise at most one, as they do unrounded, and a real step of 5 degrees is still found within
    a reading, on the coarse and on the fine sensor."""
    for resolution in (1.0, 0.0):
        xs = daily(10, seed, resolution)
        quiet = Detector(AnomalyConfig()).score_readings([reading(i, x) for i, x in enumerate(xs)])
        assert sum(1 for sc in quiet if sc.score >= 0.8) <= 1
        stepped = xs[:2500] + [x + 5.0 for x in xs[2500:]]
        scores = Detector(AnomalyConfig()).score_readings([reading(i, x) for i, x in enumerate(stepped)])
        assert max(sc.score for sc in scores[2500:2502]) >= 0.8


@pytest.mark.parametrize("metrics", [1, 2])
def test_a_sensor_back_from_an_outage_is_judged_by_how_far_it_could_have_moved(metrics: int):
    """After four hours of silence a wandering sensor's level has moved by many noise widths: the forecast looks
    that many readings ahead (its band widened as a random walk's, by the square root of the readings missed,
    and the level moving as far as they would have moved it), and a multi-metric sensor's change channels start
    their reference again. Judged as if it had never been away, its return alarmed for all four seeds with one
    metric and two of them with two; now it raises nothing, and a sensor back 30 degrees off still alarms."""
    cfg = AnomalyConfig()
    for seed in range(4):
        gone = outages.outage(seed, 240)
        back = outages.T0 + timedelta(minutes=gone[1])
        for offset, alarms in ((0.0, False), (30.0, True)):
            events = outages.alarms(outages.wandering(seed, metrics, gone, offset), cfg)
            assert outages.alarmed(events, back, outages.RETURN_WINDOW) is alarms, (seed, offset, events)


def test_a_weekly_profile_knows_weekends_and_finds_a_weekday_that_looks_like_one():
    """Ten weeks of an office: the daily profile is taught the weekends too, so its morning and evening buckets
    are half wrong, every weekday's heating switch alarms, and a Wednesday without heating passes for a normal
    day. A weekly profile (`season_days = 7`), consulted after `season_min` weeks, expects each day's own rhythm."""
    series = rhythms.office(10, 0, idle_day=rhythms.IDLE_DAY)
    alarms = {"daily": rhythms.alarms(series, AnomalyConfig()), "weekly": rhythms.alarms(series, rhythms.WEEKLY)}
    late = {name: [t for t in ts if t >= rhythms.MONDAY + timedelta(weeks=6)] for name, ts in alarms.items()}
    idle = {name: [t for t in ts if (t - rhythms.MONDAY).days == rhythms.IDLE_DAY] for name, ts in late.items()}
    false = {name: len(ts) - len(idle[name]) for name, ts in late.items()}
    assert false["daily"] >= 20 and false["weekly"] <= 3, false
    assert not idle["daily"] and idle["weekly"]


def test_the_profile_keeps_the_sites_clock_across_daylight_saving():
    """A shop in Berlin, heated from 07:00 to 19:00 local time every day: on 2024-03-31 the clocks go forward and the
    rhythm moves an hour in UTC. A profile kept in UTC is an hour off for weeks and alarms most days; one kept on
    the site's clock (`timezone`) does not notice."""
    series, switch = rhythms.shop(80, 0), rhythms.CLOCKS_CHANGE
    for zone, most in (("UTC", None), ("Europe/Berlin", 2)):
        alarms = rhythms.alarms(series, AnomalyConfig(timezone=zone))
        assert sum(switch - timedelta(weeks=3) <= t < switch for t in alarms) <= 1  # the weeks before: quiet
        after = sum(switch <= t < switch + timedelta(weeks=3) for t in alarms)
        assert after >= 8 if most is None else after <= most, (zone, after)


def test_the_series_cap_forgets_the_longest_silent_sensors_whole():
    """max_series counts (sensor, metric) series; past it the longest-silent sensor goes, all its series at once,
    its rows are reused, and a sensor that comes back starts afresh (its first reading scores 0)."""
    from edgewatch.agent.ops import metrics

    def evictions() -> float:
        return metrics.REGISTRY.get_sample_value("edgewatch_state_evictions_total", {"state": "anomaly"}) or 0.0

    det, before = Detector(AnomalyConfig(max_series=6, fuse="off")), evictions()
    for step in range(3):
        det.score_readings([SensorReading(sensor_id=f"s{k}", ts=T0 + step * STEP, metrics={"a": 1.0 + k, "b": 2.0},
                                          attrs={}) for k in range(3)])
    assert len(det.table) == 6 and det.readings("s0", "a") == 3
    det.score_readings([SensorReading(sensor_id="s3", ts=T0 + 3 * STEP, metrics={"a": 1.0, "b": 2.0}, attrs={})])
    assert len(det.table) == 6 and det.readings("s0", "a") == 0 and det.readings("s1", "a") == 3
    assert evictions() - before == 2  # two series
    back = det.score_readings([SensorReading(sensor_id="s0", ts=T0 + 4 * STEP, metrics={"a": 9.0}, attrs={})])
    assert [(sc.metric, sc.score) for sc in back] == [("a", 0.0)]
    assert det.table.used == 8 and len(det.table) == 5  # s0's rows come free once the batch that forgot them ends
    det.score_readings([SensorReading(sensor_id="s4", ts=T0 + 5 * STEP, metrics={"a": 1.0, "b": 2.0}, attrs={})])
    assert det.table.used == 8 and len(det.table) == 5  # ... and are reused (s2 went whole to make room)


def test_a_sensor_inventing_metric_names_cannot_grow_the_table():
    """One sensor with a new metric name in every reading: it keeps at most max_series series, rows are reused."""
    det = Detector(AnomalyConfig(max_series=50))
    for i in range(2000):
        det.score_readings([SensorReading(sensor_id="s", ts=T0 + i * STEP, metrics={f"m{i}": 1.0, "t": 20.0}, attrs={})])
    assert len(det.table) == 50 and det.table.used <= 52  # the cap, and the rows a batch forgets until it ends
    assert det.readings("s", "t") == 2000  # the metric it always sends is never the oldest


def test_many_keys_bounded_memory_and_time():
    """20k keys x 5 readings: per-key memory stays small and cost stays O(1) per reading."""
    cfg = AnomalyConfig()
    det = Detector(cfg)
    keys = 20_000
    batch = [SensorReading(sensor_id=f"s{k}", ts=T0, metrics={"t": float(k % 7)}, attrs={}) for k in range(keys)]
    tracemalloc.start()
    det.score_readings(batch)
    mem = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert mem / keys < 1800, f"{mem / keys:.0f} bytes per key"
    for step in range(1, 5):
        batch = [SensorReading(sensor_id=f"s{k}", ts=T0 + step * STEP, metrics={"t": float(k % 5)}, attrs={}) for k in range(keys)]
        t0 = time.perf_counter()
        out = det.score_readings(batch)
        per = (time.perf_counter() - t0) / keys
    assert len(out) == keys and len(det.table) == keys
    assert per < 50e-6, f"{per * 1e6:.1f} us per reading"  # generous: shared CI machines


@pytest.mark.parametrize(
    "overrides",
    [
        {"season_buckets": 0, "season_min": 0, "refractory": 0, "warmup": 0},
        {"short_span": 0.0, "long_span": 0.0, "level_span": 0.0, "scale_span": 0.0, "season_span": 0.0},
        {"tail_floor": 0.0, "rel_floor": 0.0, "clip": 0.0, "spatial_tolerance": 0.0},
        {"season_buckets": 1440, "season_min": 1000, "tail_floor": 1.0, "threshold": 0.0},
    ],
)
def test_extreme_configurations_stay_in_range(overrides):
    cfg = AnomalyConfig(**overrides)
    values = seasonal(600)
    values[500] += 50
    out = Detector(cfg).score_readings([reading(i, x) for i, x in enumerate(values)])
    assert len(out) == 600 and all(0.0 <= s.score <= 1.0 for s in out)
