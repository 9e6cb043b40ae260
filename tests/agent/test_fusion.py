"""The sensor-level (fused) score of a sensor that publishes several metrics, and the benchmarks' scorers."""

from __future__ import annotations

import csv
import itertools
import random
from datetime import datetime, timedelta

import pytest
from edgewatch.agent.analytics.anomaly import FUSED, Detector, PartScore, SensorScore, anomaly_event
from edgewatch.agent.cli import main
from edgewatch.agent.config import AnomalyConfig
from edgewatch.agent.records import AnomalyScore, SensorReading

T0 = datetime(2024, 1, 1)
STEP = timedelta(seconds=1)


def pump(n: int, seed: int = 5, broken: range = range(0)) -> list[SensorReading]:
    """Current and flow follow one process that swings widely (sigma 5); in `broken` the flow drops by 4 (less
    than one sigma of its own normal swings) while the current stays: only their relation is abnormal."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        f = 20.0 + rnd.gauss(0.0, 5.0)
        if i in broken:
            f = 20.0  # an ordinary moment for either metric alone
        current = f + rnd.gauss(0.0, 0.1)
        flow = f + rnd.gauss(0.0, 0.1) - (4.0 if i in broken else 0.0)
        out.append(SensorReading(sensor_id="pump", ts=T0 + i * STEP, metrics={"current": current, "flow": flow}, attrs={}))
    return out


def scores_by_metric(out) -> dict[str, list]:
    by: dict[str, list] = {}
    for sc in out:
        by.setdefault(sc.metric, []).append(sc)
    return by


def test_a_broken_correlation_scores_higher_than_either_metric_alone():
    at = 3000
    cfg = AnomalyConfig(pairs=True, change_window=0, fuse_metrics=True)  # the metrics' and the pair's channels
    by = scores_by_metric(Detector(cfg).score_readings(pump(at + 10, broken=range(at, at + 5))))
    fused, current, flow = by[FUSED], by["current"], by["flow"]
    assert len(current) == len(flow) == at + 10 and len(fused) == at + 9  # the first reading has no fused score
    k = at - 1  # the fused list starts at the second reading
    assert current[at].score < cfg.threshold and flow[at].score < cfg.threshold  # each alone looks normal
    assert fused[k].score >= cfg.threshold > max(current[at].score, flow[at].score)
    assert isinstance(fused[k], SensorScore) and fused[k].channel == "current~flow"
    assert all(isinstance(sc, PartScore) for sc in current[1:] + flow[1:])
    # before the break the relation held: (almost) no sensor-level alarm
    assert sum(sc.score >= cfg.threshold for sc in fused[:k]) <= 2


def test_without_pairs_the_broken_correlation_goes_unseen():
    at = 3000
    cfg = AnomalyConfig(pairs=False, change_window=0)
    by = scores_by_metric(Detector(cfg).score_readings(pump(at + 10, broken=range(at, at + 5))))
    assert by[FUSED][at - 1].score < cfg.threshold


def noise(m: int, n: int, seed: int) -> list[SensorReading]:
    rnd = random.Random(seed)
    return [SensorReading(sensor_id="s", ts=T0 + i * STEP, metrics={f"m{j}": 20.0 + rnd.gauss(0, 1) for j in range(m)},
                          attrs={}) for i in range(n)]


def fused_alarms(readings: list[SensorReading], cfg: AnomalyConfig) -> list[SensorScore]:
    return [sc for sc in Detector(cfg).score_readings(readings) if sc.metric == FUSED and sc.score >= cfg.threshold]


def test_fused_sensor_with_many_metrics_alarms_no_more_than_one_metric():
    """Bonferroni over the channels: eight independent noisy metrics do not raise four times the alarms of two,
    and the sensor-level rate stays within 5 an hour at one reading a second (SKAB's anomaly-free pump: 4.9)."""
    n, cfg = 20_000, AnomalyConfig()
    two, eight = len(fused_alarms(noise(2, n, 11), cfg)), len(fused_alarms(noise(8, n, 11), cfg))
    assert eight <= 1.5 * two + 5, (two, eight)
    assert eight <= 5 * n / 3600, eight


def test_a_slow_shift_of_one_metric_is_a_sensor_level_change():
    """A valve-like fault: one of eight metrics moves 3 noise widths over 50 s and stays. The fast level forecast
    follows it (no metric's own verdict alarms); the change channel, against a 300-reading reference, does."""
    rds = noise(8, 2600, 3)
    for i, rd in enumerate(rds[2000:]):
        rd.metrics["m3"] += 3.0 * min(1.0, i / 50)
    cfg = AnomalyConfig()
    hits = [sc for sc in fused_alarms(rds, cfg) if sc.ts >= T0 + 2000 * STEP]
    assert hits and hits[0].ts <= T0 + 2060 * STEP and hits[0].channel == "m3:change" and hits[0].top == "m3"
    without = AnomalyConfig(change_window=0, fuse_metrics=True)
    assert not [sc for sc in fused_alarms(rds, without) if sc.ts >= T0 + 2000 * STEP]


def test_a_fault_does_not_teach_the_change_channel_that_faults_are_normal():
    """Two faults on one of three metrics (3 noise widths for 200 s each, a valve left open twice). While a
    deviation is beyond `change_hold` (5) times its long-run RMS, that RMS does not learn: the first fault's
    return to normal is judged against the quiet norm and is found on all 6 pumps, and the second fault on all
    6, as the first. On hold, the channel raises at most one alarm, so a fault raises at most two from it (one
    may come before the hold). When the fault's deviations teach the norm (`change_hold = 0`, clipped at
    5 RMS), no return is found and one second fault is missed."""
    faults = (1200, 2200)

    def found(cfg: AnomalyConfig) -> tuple[list[int], int, int]:
        starts, returns, most = [0, 0], 0, 0
        for seed in range(6):
            rds = noise(3, 3000, seed)
            for s in faults:
                for rd in rds[s:s + 200]:
                    rd.metrics["m1"] += 3.0
            alarms = fused_alarms(rds, cfg)
            hits = [int((sc.ts - T0) / STEP) for sc in alarms]
            for k, s in enumerate(faults):
                starts[k] += any(s <= h <= s + 60 for h in hits)
                most = max(most, sum(1 for h, sc in zip(hits, alarms) if s <= h < s + 200 and sc.channel == "m1:change"))
            returns += any(faults[0] + 200 <= h <= faults[0] + 260 for h in hits)
        return starts, returns, most

    assert found(AnomalyConfig()) == ([6, 6], 6, 2)
    assert found(AnomalyConfig(change_hold=0.0))[:2] == ([6, 5], 0)


def test_spike_z_finds_a_single_spike_the_change_channels_smooth_away_and_a_lasting_fault_once():
    """One of four metrics jumps 5 noise widths for a single reading, inside the range it has already visited
    (an 8-width excursion during the warm-up), so no range break sees it and the change channel's smoothing
    (span 12) hides it: without `spike_z` nothing alarms; with `spike_z = 4` the reading alarms on its own
    channel. Only a jump from where the metric was counts: a slow fault of 12 widths over 400 readings, whose
    readings move more than 4 spreads from the reference as it climbs, and a step of 6 widths held for 400
    readings raise no more alarms than without `spike_z` (the step's return to normal, a jump from where the
    metric had settled, is now named a spike). The
    same in the array and the value-by-value paths. A metric read in whole units that mostly holds one value and
    now and then steps by one raises no spike: a spread is never taken as less than one step of the sensor."""
    rds = noise(4, 3000, 8)
    for rd in rds:  # a coarse sensor: mostly one value, now and then a step of 1 (no spike: a spread is a step)
        rd.metrics["m3"] = float(round(20.0 + 0.15 * (rd.metrics["m3"] - 20.0)))
    rds[50].metrics["m1"] += 8.0
    for i, rd in enumerate(rds[600:]):  # a slow fault: 12 widths over 400 readings, then held
        rd.metrics["m0"] += 12.0 * min(1.0, i / 400)
    rds[1500].metrics["m1"] += 5.0
    for rd in rds[2200:2600]:
        rd.metrics["m2"] += 6.0

    def alarms(cfg: AnomalyConfig, small_wave: int) -> list[tuple[int, str]]:
        det = Detector(cfg)
        det.small_wave = small_wave
        return [(int((sc.ts - T0) / STEP), sc.channel) for k in range(0, len(rds), 25)
                for sc in det.score_readings(rds[k:k + 25]) if sc.metric == FUSED and sc.score >= cfg.threshold]

    plain = alarms(AnomalyConfig(), 0)
    assert not [h for h, _ in plain if 1500 <= h < 1560]
    spikes = alarms(AnomalyConfig(spike_z=4.0), 0)
    assert spikes == alarms(AnomalyConfig(spike_z=4.0), 10**9)
    assert (1500, "m1:spike") in spikes
    # nothing else changes: the faults raise what they raised before, and the noise nothing more
    assert [h for h, _ in spikes] == sorted([h for h, _ in plain] + [1500])
    assert [c for h, c in spikes if h == 2600] == ["m2:spike"]


def test_a_spike_of_another_metric_cuts_through_the_refractory_period_an_echo_does_not():
    """A step of 6 widths on m2 alarms and starts the sensor's refractory period. 20 readings later m1 jumps 8
    widths for one reading: a finding of its own, raised at once (the refractory period used to hide it), and
    the sensor's refractory period starts again from it; a jump of m2 itself at that point, back from where its
    step had settled, is part of the fault being cooled off and raises nothing the step alone did not."""
    cfg = AnomalyConfig()

    def alarms(spike: str | None) -> list[tuple[int, str]]:
        rds = noise(4, 2000, 3)
        for rd in rds[1500:]:
            rd.metrics["m2"] += 6.0
        if spike:
            rds[1520].metrics[spike] += 8.0 if spike == "m1" else -8.0
        return [(int((sc.ts - T0) / STEP), sc.channel) for sc in fused_alarms(rds, cfg) if sc.ts >= T0 + 1000 * STEP]

    step = alarms(None)
    assert [c for _, c in step] == ["m2", "m2:change"] and step[0][0] in (1500, 1501, 1502)
    assert 1520 - step[0][0] < cfg.sensor_refractory < step[1][0] - step[0][0]
    assert alarms("m1") == [step[0], (1520, "m1:spike"), (1520 + cfg.sensor_refractory + 1, "m2:change")]
    assert alarms("m2") == step


def test_a_spike_of_a_metric_that_has_moved_a_little_is_judged_from_where_it_has_been():
    """A fault moves two metrics at once: m2 by 6 widths (it alarms) and m1 by 1.5, not yet enough for its
    change channel. 20 readings later m1 spikes by 7 widths, inside the range it has visited (no range break):
    a finding of its own, judged as a jump from where m1 has been (its smoothed level, 1.5 widths off its
    reference), not from a reference it has already left (the rule before, "within one spread of the
    reference", missed it). The same in the array and the value-by-value paths."""
    def alarms(spike: bool, small_wave: int = 0) -> list[tuple[int, str]]:
        rds = noise(4, 2000, 7)
        rds[50].metrics["m1"] += 12.0  # a wide range for m1 during the warm-up
        for rd in rds[1500:]:
            rd.metrics["m2"] += 6.0
            rd.metrics["m1"] += 1.5
        if spike:
            rds[1520].metrics["m1"] += 7.0
        det = Detector(AnomalyConfig())
        det.small_wave = small_wave
        return [(int((sc.ts - T0) / STEP), sc.channel) for k in range(0, len(rds), 25)
                for sc in det.score_readings(rds[k:k + 25]) if sc.metric == FUSED and sc.score >= 0.8 and
                sc.ts >= T0 + 1000 * STEP]

    fault = alarms(False)
    assert fault[0] == (1500, "m2") and (1520, "m1:spike") not in fault
    spiked = alarms(True)
    assert spiked[:2] == [(1500, "m2"), (1520, "m1:spike")], spiked
    assert spiked == alarms(True, 10**9)


def test_metrics_spiking_in_turn_raise_at_most_one_alarm_each_per_refractory_period():
    """A fault that makes two metrics spike in turn (m0, then m1, every 5 readings for 300 readings: a cavitating
    pump's two accelerometers) is not a new finding at every spike: within a refractory period each metric alarms
    at most once (a rule of "another metric than the last alarm's" would alarm at every spike: sixty)."""
    cfg = AnomalyConfig()
    rds = noise(4, 2400, 3)
    for k, rd in enumerate(rds[2000:2300]):
        if k % 5 == 0:
            rd.metrics[f"m{k // 5 % 2}"] += 8.0
    alarms = [(int((sc.ts - T0) / STEP), sc.channel.split(":")[0]) for sc in fused_alarms(rds, cfg)
              if T0 + 2000 * STEP <= sc.ts < T0 + 2300 * STEP]
    metrics = {m for _, m in alarms}
    assert {"m0", "m1"} <= metrics
    assert len(alarms) <= len(metrics) * (300 // cfg.sensor_refractory + 1), alarms
    for m in metrics:
        at = [h for h, c in alarms if c == m]
        assert all(b - a > cfg.sensor_refractory for a, b in itertools.pairwise(at)), (m, at)


def test_a_machine_that_cycles_stops_alarming_once_its_regimes_are_known_and_a_new_level_still_alarms():
    """A compressor switching by 6 noise widths every 10 minutes alarms at its first switches (about 17 alarms
    an hour), and goes on doing so without a regime memory; with it (`regime_visits` = 5), once each level has
    been settled at five separate times the switches raise nothing: about one alarm an hour from the third hour.
    A fault to a level it has never run at (the off level 12 widths higher from hour 5) still alarms, at once."""
    from bench import regimes

    rds = regimes.with_fault(regimes.cycling(5 * 3600 + 1200, 4), 5 * 3600)

    def hourly(cfg: AnomalyConfig) -> list[int]:
        hits = [int((sc.ts - T0) / STEP) for sc in fused_alarms(rds, cfg)]
        return [sum(1 for h in hits if k * 3600 <= h < (k + 1) * 3600) for k in range(5)], hits

    known, hits = hourly(AnomalyConfig())
    forgetful, _ = hourly(AnomalyConfig(regime_visits=0))
    assert known[0] >= 10 and sum(known[2:]) <= 6, known
    assert min(forgetful) >= 10, forgetful
    assert [h for h in hits if 5 * 3600 <= h < 5 * 3600 + 60], "a level never seen before must alarm"

    def waves(small_wave: int) -> list[tuple[int, str, float]]:  # the array and the value-by-value paths
        det = Detector(AnomalyConfig())
        det.small_wave = small_wave
        return [(int((sc.ts - T0) / STEP), sc.channel, sc.score) for k in range(0, len(rds), 25)
                for sc in det.score_readings(rds[k:k + 25]) if sc.metric == FUSED and sc.score >= 0.8]

    assert waves(0) == waves(10**9) and [h for h, _, _ in waves(0)] == hits


def test_fuse_off_scores_each_metric_alone_as_before():
    rds = pump(1200, broken=range(1100, 1105))
    off = Detector(AnomalyConfig(fuse="off")).score_readings(rds)
    assert not any(sc.metric == FUSED or isinstance(sc, PartScore) for sc in off)
    alone = Detector(AnomalyConfig()).score_readings(
        [SensorReading(sensor_id=r.sensor_id, ts=r.ts, metrics={"flow": r.metrics["flow"]}, attrs={}) for r in rds])
    assert [sc.score for sc in off if sc.metric == "flow"] == [sc.score for sc in alone]


def test_score_command_multi_column_is_the_sensor_level_score(tmp_path):
    rds = pump(1500, broken=range(1400, 1405))
    path = tmp_path / "pump.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "current", "flow"])
        w.writerows([r.ts.isoformat(sep=" "), repr(r.metrics["current"]), repr(r.metrics["flow"])] for r in rds)
    out, conf = tmp_path / "out.csv", tmp_path / "agent.toml"
    conf.write_text("[anomaly]\npairs = true\n")
    assert main(["score", str(path), "--out", str(out), "--config", str(conf)]) == 0
    got = list(csv.reader(out.open()))
    assert got[0] == ["timestamp", "current", "flow", "anomaly_score"] and len(got) == len(rds) + 1
    cfg = AnomalyConfig(pairs=True)
    want = [0.0] + [sc.score for sc in Detector(cfg).score_readings(rds) if sc.metric == FUSED]
    assert [float(r[3]) for r in got[1:]] == want
    assert max(want[1400:1405]) >= cfg.threshold
    # --metric still scores one column alone
    assert main(["score", str(path), "--metric", "flow", "--out", str(out)]) == 0
    got = list(csv.reader(out.open()))
    assert got[0] == ["timestamp", "value", "anomaly_score"]
    alone = [SensorReading(sensor_id="score", ts=r.ts, metrics={"flow": r.metrics["flow"]}, attrs={}) for r in rds]
    assert [float(r[2]) for r in got[1:]] == [sc.score for sc in Detector(AnomalyConfig()).score_readings(alone)]


def test_config_rejects_an_unknown_fusion(tmp_path):
    from edgewatch.agent import config

    p = tmp_path / "agent.toml"
    p.write_text('[anomaly]\nfuse = "average"\n')
    with pytest.raises(config.ConfigError, match="anomaly.fuse"):
        config.load(p)


def test_skab_scorer_reproduces_the_zscore_baseline(shared_data):
    """bench/skab.py's scorer against the figure the issue measured for the rolling z-score on skab-dev (35.1)."""
    from bench import skab

    root = shared_data / "skab-dev" / "valve1"
    files = {}
    for p in sorted(root.glob("*.csv")):
        times, rows, cps = skab.read_skab(p)
        files[p.name] = {"times": times, "rows": rows, "windows": skab.windows_of(times, cps)}
    detections = {k: skab.zscore_detections(f["rows"], f["times"]) for k, f in files.items()}
    res = skab.score(files, detections)
    assert res["windows"] == 63 and abs(res["standard"] - 35.1) < 0.1, res
    low, high = skab.interval(files, detections, draws=200)  # files drawn again: around the figure, not on it
    assert low < res["standard"] < high and high - low > 1


def test_skab_scorer_credit_curve():
    from bench import skab

    times = [T0 + i * STEP for i in range(1000)]
    files = {"f": {"times": times, "windows": skab.windows_of(times, [500])}}
    assert skab.score(files, {"f": {500}})["standard"] == 100.0  # at the changepoint: A_tp
    assert skab.score(files, {"f": set()})["standard"] == 0.0  # nothing: the null detector
    assert skab.score(files, {"f": {560}})["standard"] == pytest.approx(100 * (1 - 0.11) / 2, abs=0.01)  # window end: A_fp
    assert skab.score(files, {"f": {100}})["standard"] == 0.0  # inside the 400 training rows: not scored
    assert skab.score(files, {"f": {700}})["false_positive_rows"] == 1
    # the full benchmark's folders each scored alone: a find in valve2/, a miss and a false alarm in other/
    two = {"valve2/0.csv": files["f"], "other/9.csv": files["f"]}
    assert skab.by_folder(two, {"valve2/0.csv": {500}, "other/9.csv": {700}}) == {
        "other": {"standard": -5.5, "missed_changepoints": 1, "false_positive_rows": 1, "windows": 1},
        "valve2": {"standard": 100.0, "missed_changepoints": 0, "false_positive_rows": 0, "windows": 1}}


def test_fisher_over_counts_correlated_metrics_bonferroni_does_not():
    """Two metrics that are one process: Fisher's combination takes them for independent evidence."""
    cfg_b, cfg_f = AnomalyConfig(fuse="bonferroni"), AnomalyConfig(fuse="fisher")
    rds = pump(3000)

    def alarms(cfg):
        return sum(sc.metric == FUSED and sc.score >= cfg.threshold for sc in Detector(cfg).score_readings(rds))

    assert alarms(cfg_b) < alarms(cfg_f)


def test_a_steady_metric_beside_a_noisy_one_raises_no_pair_alarm():
    """A battery that holds still and now and then steps down by a hundredth: no relation to break."""
    rnd = random.Random(3)
    cfg = AnomalyConfig()
    rds = [SensorReading(sensor_id="s", ts=T0 + i * STEP,
                         metrics={"temperature": 20.0 + rnd.gauss(0, 0.5), "battery": 90.0 - 0.01 * (i // 150)}, attrs={})
           for i in range(3000)]
    fused = [sc for sc in Detector(cfg).score_readings(rds) if sc.metric == FUSED and sc.score >= cfg.threshold]
    assert not [sc for sc in fused if "~" in sc.channel], [(sc.ts, sc.channel) for sc in fused]


def test_fault_bench_finds_what_the_clean_recording_does_not_raise(shared_data, monkeypatch):
    """bench/faults.py, cut to two positions: faults injected into the healthy pump; a find is an alarm the clean
    recording does not raise. A 6-sigma step is found nearly always; a ramp is found more often than by the
    rolling z-score at the agent's alarm rate, whose 300-reading window follows it."""
    from bench import faults, skab

    monkeypatch.setattr(faults, "STRIDE", 4000)
    times, rows, _ = skab.read_skab(shared_data / "skab-dev" / "anomaly-free" / "anomaly-free.csv")
    r = faults.run(times, rows, AnomalyConfig())
    assert r["positions"] == 2 and r["clean_alarms_per_hour"]["agent"] == 3.78
    assert r["clean_alarms_per_hour"]["zscore_matched"] <= 3.78 < r["clean_alarms_per_hour"]["zscore"]
    assert r["step"]["6"]["runs"] == 16 and r["step"]["6"]["agent"]["found"] >= 0.9
    assert r["ramp"]["6"]["agent"]["found"] > r["ramp"]["6"]["zscore_matched"]["found"]
    assert set(r) >= {"step", "ramp", "spike", "noise", "stuck", "zscore_thresholds"}


def test_the_events_reference_names_every_field_of_both_kinds_of_anomaly_event(documented_fields):
    """A user builds against docs/reference/events.md: every key of a single-metric and of a sensor-level
    `anomaly` event's data is in its tables."""
    at, cfg = 3000, AnomalyConfig(pairs=True, change_window=0, fuse_metrics=True)
    fused = [sc for sc in Detector(cfg).score_readings(pump(at + 10, broken=range(at, at + 5)))
             if isinstance(sc, SensorScore)]
    rnd = random.Random(3)
    single = [SensorReading(sensor_id="s", ts=T0 + i * STEP, metrics={"t": rnd.gauss(0.0, 1.0) + (9.0 if i == 900 else 0.0)},
                            attrs={}) for i in range(901)]
    alone = [sc for sc in Detector(AnomalyConfig()).score_readings(single) if isinstance(sc, AnomalyScore)]
    assert fused and alone and "surprise" in anomaly_event(alone[-1], cfg).data  # a single metric's full evidence
    documented = documented_fields("anomaly")
    for sc in (fused[0], alone[-1]):
        assert set(anomaly_event(sc, cfg).data) <= documented, set(anomaly_event(sc, cfg).data) - documented
