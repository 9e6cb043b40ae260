"""Sensor health: a score in [0, 1] per sensor from freshness, anomalies, stuck values,
drift, noise, physical range, battery and status, plus the maintenance flags built on it.

One keyed node holds a dict of `SensorHealth` objects, each updated in O(1) per
reading with plain float arithmetic: at 10,000 sensors the per-reading cost is
what limits ingest, and a csp.dynamic per sensor costs more than all of this.

Every component is in [0, 1]: 1 up to the clear level of the matching
maintenance reason, falling to 0 where that reason is raised. The score is the
worst component, because a sensor is as trustworthy as its weakest sign of
life. Drift and noise are
judged against the sensor's own baseline (learnt over `warmup` readings, then
adapting slowly with clipped residuals so a fault cannot teach itself in);
noise uses changes between readings, which trends and daily cycles barely touch.
A drift slower than the baseline's learning is found by `drift.py` (block means
against a reference that does not follow it); the drift measure is the larger of
the two verdicts, so both raise and clear the one `drift` reason. Against the
usual day (`drift.reference = "daily"`) only drift.py's verdict counts: a sensor
declared to follow a daily cycle leaves a short window's baseline behind on its
first day, and its CUSUM finds a fast drift within three blocks anyway.

Events are driven by the data wherever the data can drive them, so that a replay
and the live run over the same readings log the same events: the periodic
`health` event comes with a sensor's first reading in each `interval`-long bucket
of data time (its id keyed on the bucket), band crossings and maintenance flags
with the reading that caused them. Only silence needs a clock: an engine-time
sweep raises `stale` and reports a silent sensor's health, once per silence (a
fleet of dead sensors must not fill the log), and forgets a sensor silent for
`forget_after`. Those events are stamped and keyed in data time (the moment the
sensor became stale: last reading + its stale threshold), but whether and when
they fire depends on the engine clock: a replay ends at its last message and
sweeps on a different phase, so stale-driven events (and the `stale` clear that
follows) are not replay-identical. They never feed back into the data-driven ones.
"""

from __future__ import annotations

import math
from array import array
from datetime import datetime, timedelta

import csp
from csp import ts
from edgewatch.agent.analytics.anomaly import ewma_alpha
from edgewatch.agent.analytics.drift import (
    DriftParams,
    LevelDrift,
    PeerBlocks,
    close_blocks,
    next_block,
)
from edgewatch.agent.analytics.maintenance import (
    EXPLAINS_ANOMALIES,
    REASONS,
    STALE,
    Flags,
    Rules,
    maintenance_events,
)
from edgewatch.agent.analytics.snapshot import keep, persisted, state_name
from edgewatch.agent.analytics.states import SeriesStates
from edgewatch.agent.config import (
    ConfigError,
    DriftConfig,
    HealthConfig,
    MaintenanceConfig,
)
from edgewatch.agent.ops import metrics
from edgewatch.agent.records import Event, MetricScore, SensorReading, event_id

BAND_NAMES = ("poor", "degraded", "good")
BAND_SEVERITY = ("critical", "warning", "info")
_ALL = range(len(REASONS))
_ANY = (-math.inf, math.inf)  # the range of a metric with no configured range
_STALE_ONLY = (STALE,)
_NONE = frozenset()
_EPOCH = datetime(1970, 1, 1)
_US = timedelta(microseconds=1)


def parse_ranges(text: str, where: str = "health") -> dict[str, tuple[float, float]]:
    """`name=low:high,...` -> {name: (low, high)}; errors name the key (of `where`: the section, or a group)."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            name, bounds = part.split("=")
            low, high = (float(v) for v in bounds.split(":"))
        except ValueError:
            raise ConfigError(f"{where}.ranges: expected name=low:high, got {part!r}") from None
        name = name.strip()
        if not name:
            raise ConfigError(f"{where}.ranges: expected name=low:high, got {part!r} (no metric name)")
        if name in out:
            raise ConfigError(f"{where}.ranges: {name}: given twice")
        if not low < high:
            raise ConfigError(f"{where}.ranges: {name}: low must be below high")
        out[name] = (low, high)
    return out


def parse_bands(text: str, where: str = "health") -> tuple[float, float]:
    try:
        poor, good = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{where}.bands: expected two numbers 'poor,good', got {text!r}") from None
    if not 0.0 < poor < good < 1.0:
        raise ConfigError(f"{where}.bands: need 0 < {poor} < {good} < 1")
    return poor, good


def check(h: HealthConfig, m: MaintenanceConfig) -> None:
    """Raise ConfigError naming the first bad [health]/[maintenance] key (called when the graph is wired), or
    the group's own key (`health.groups.NAME.ranges`)."""
    _check(h, m, "health")
    for name, group in h.groups.items():
        _check(group.settings, m, f"health.groups.{name}")


def _check(h: HealthConfig, m: MaintenanceConfig, where: str) -> None:
    parse_ranges(h.ranges, where)
    parse_bands(h.bands, where)
    for key in ("fast_span", "noise_span", "baseline_span", "anomaly_span", "stuck_readings"):
        if getattr(h, key) < 1:
            raise ConfigError(f"{where}.{key}: must be at least 1")
    if h.stale_min <= 0 or h.interval <= 0:
        raise ConfigError(f"{where}.stale_min and {where}.interval must be positive")
    for key, clear, rise in (("drift_clear_z", m.drift_clear_z, h.drift_z),
                             ("noise_clear_ratio", m.noise_clear_ratio, h.noise_ratio),
                             ("anomaly_clear_rate", m.anomaly_clear_rate, h.anomaly_rate),
                             ("out_of_range_clear_rate", m.out_of_range_clear_rate, m.out_of_range_rate)):
        if not clear < rise:
            raise ConfigError(f"maintenance.{key}: must be below its raise level ({rise}), got {clear}")


def _words(text: str) -> frozenset[str]:
    return frozenset(w.strip().lower() for w in text.split(",") if w.strip())


class Params:
    """Constants derived once from the configuration (attribute reads are cheap)."""

    __slots__ = (
        "rules", "warmup", "a_fast", "a_noise", "a_base", "a_anom", "anomaly_span", "a_gap", "ranges", "steady",
        "bad_status",
        "bands", "margin", "clip", "outlier_z", "anomaly_score", "interval", "interval_us", "stale_min", "stale_min_td",
        "stale_factor", "first_stale", "forget_after",
        "inv_stuck", "drift_ok", "inv_drift", "noise_ok", "inv_noise", "anomaly_ok", "inv_anomaly", "oor_ok", "inv_oor",
        "low_battery", "inv_battery", "drift",
    )

    def __init__(self, h: HealthConfig, m: MaintenanceConfig, d: DriftConfig | None = None):
        self.rules = Rules(h, m)
        # slow drift (agent/analytics/drift.py), against the reference this section chooses
        self.drift = DriftParams(d or DriftConfig(), h.drift_z, h.drift_reference)
        self.warmup = max(2, h.warmup)
        self.a_fast = ewma_alpha(h.fast_span)
        self.a_noise = ewma_alpha(h.noise_span)
        self.a_base = ewma_alpha(h.baseline_span)
        self.a_anom = ewma_alpha(h.anomaly_span)
        self.anomaly_span = h.anomaly_span
        self.a_gap = ewma_alpha(h.fast_span)
        self.ranges = parse_ranges(h.ranges)
        self.steady = _words(h.steady_metrics)
        self.bad_status = _words(h.bad_status)
        self.bands = parse_bands(h.bands)
        self.margin = h.band_margin
        self.clip = h.noise_clip
        self.outlier_z = h.outlier_z
        self.anomaly_score = h.anomaly_score
        self.interval = timedelta(seconds=h.interval)
        self.interval_us = max(1, self.interval // _US)  # whole microseconds: buckets of data time, exactly
        self.stale_min = h.stale_min
        self.stale_min_td = timedelta(seconds=h.stale_min)
        self.stale_factor = h.stale_factor
        # before a second reading shows the reporting interval, wait stale_factor x stale_min
        self.first_stale = h.stale_min * h.stale_factor
        self.forget_after = h.forget_after
        # a component is 1 up to its reason's clear level and falls linearly to 0 at the raise level: healthy
        # jitter costs nothing, and the score reaches 0 exactly where a maintenance reason raises
        self.inv_stuck = _inverse(h.stuck_readings)
        self.drift_ok, self.inv_drift = m.drift_clear_z, _inverse(h.drift_z - m.drift_clear_z)
        self.noise_ok, self.inv_noise = m.noise_clear_ratio, _inverse(h.noise_ratio - m.noise_clear_ratio)
        self.anomaly_ok, self.inv_anomaly = m.anomaly_clear_rate, _inverse(h.anomaly_rate - m.anomaly_clear_rate)
        self.oor_ok, self.inv_oor = m.out_of_range_clear_rate, _inverse(m.out_of_range_rate - m.out_of_range_clear_rate)
        self.low_battery, self.inv_battery = h.low_battery, _inverse(m.battery_clear_margin)


def _inverse(x: float) -> float:
    return 1.0 / x if x > 0 else 0.0


def bucket_start(when: datetime, p: Params) -> datetime:
    """The start of the `health.interval`-long bucket of data time (aligned to the epoch) holding `when`."""
    us = (when - _EPOCH) // _US
    return _EPOCH + timedelta(microseconds=us - us % p.interval_us)


@persisted
class MetricTrack:
    """One metric of one sensor: the last value, its identical run, the baseline and short window,
    and the two verdicts they give: drift (`dz`) and noise (`nz`), -1 while the baseline is being learnt."""

    __slots__ = ("lo", "hi", "steady", "last", "clean", "run", "n", "base", "base_var", "base_dvar", "fast",
                 "fast_dvar", "dz", "nz", "level", "peer", "held", "peer_at", "daily", "day")

    def __init__(self, x: float, lo: float, hi: float, steady: bool, d: DriftParams):
        self.lo, self.hi = lo, hi  # physical range
        self.steady = steady  # may hold still: only its level is used (e.g. battery)
        self.last = self.clean = x
        self.run = 0
        self.n = 1
        self.base = self.fast = x
        self.base_var = self.base_dvar = self.fast_dvar = 0.0
        self.dz = self.nz = -1.0
        self.level = LevelDrift()  # block means for slow drift
        self.peer = LevelDrift() if d.peers else None  # ... and their difference from the peers' (drift.reference)
        self.held = None  # (end, mean) of the last block, until the peers' means of it are complete
        self.peer_at = None  # the end of the last block judged against peers
        self.daily = LevelDrift() if d.daily else None  # ... or from the same block of the usual day,
        self.day = array("d", [math.nan]) * d.per_day if d.daily else None  # whose means this ring holds

    def update(self, x: float, p: Params) -> bool:
        """Fold in one value; True when it is an outlier against the short window. (Hot path: locals on purpose.)"""
        self.run = self.run + 1 if x == self.last else 0
        self.last = x
        d = x - self.clean
        n = self.n = self.n + 1
        base, base_var, base_dvar = self.base, self.base_var, self.base_dvar
        if n <= p.warmup:
            # the baseline: running mean/variance of the values and of their changes (Welford)
            delta = x - base
            base += delta / n
            self.base = self.fast = base
            self.base_var = base_var + (delta * (x - base) - base_var) / n
            self.base_dvar = self.fast_dvar = base_dvar + (d * d - base_dvar) / (n - 1)
            self.clean = x
            return False
        sd = math.sqrt(base_var)
        dsd = math.sqrt(base_dvar)
        clip = p.clip
        fast = self.fast
        f = x - fast
        outlier = (f if f >= 0.0 else -f) > p.outlier_z * sd
        # clipped steps: an outlier barely moves the short window, a real shift or drift still does
        lim = clip * sd
        fast += p.a_fast * (lim if f > lim else (-lim if f < -lim else f))
        self.fast = fast
        fast_dvar = self.fast_dvar
        if not outlier:  # an outlier stays out of the noise window and the baseline: a spike is not noise
            self.clean = x
            dlim = clip * dsd
            dc = dlim if d > dlim else (-dlim if d < -dlim else d)
            dc *= dc
            fast_dvar += p.a_noise * (dc - fast_dvar)
            self.fast_dvar = fast_dvar
            # slow learning with clipped residuals: a fault moves the baseline by a bounded amount
            lim = 3.0 * sd
            r = x - base
            rc = lim if r > lim else (-lim if r < -lim else r)
            a = p.a_base
            base += a * rc
            self.base = base
            self.base_var = base_var + a * (rc * rc - base_var)
            self.base_dvar = base_dvar + a * (dc - base_dvar)
        # floors keep a flat (quantised) baseline from making drift and noise infinitely sensitive
        floor = 1e-4 * (base if base >= 0.0 else -base) + 1e-9
        f = fast - base
        self.dz = (f if f >= 0.0 else -f) / (sd if sd > floor else floor)
        self.nz = math.sqrt(fast_dvar) / (dsd if dsd > floor else floor)
        return outlier


class SensorStates(SeriesStates):
    """sensor -> SensorHealth, at most `cap` sensors and `max_series` metric tracks among them; a sensor that holds
    them all keeps the tracks it has and starts no new one (`room`)."""

    @staticmethod
    def held(s: SensorHealth) -> int:
        return len(s.metrics)


@persisted
class SensorHealth:
    """Everything health and maintenance remember about one sensor."""

    __slots__ = (
        "sensor_id", "metrics", "last_ts", "gap", "readings", "anomaly", "oor", "battery", "status",
        "band", "next_periodic", "flags", "stale", "stuck", "drift", "noise", "explained",
        "block_end", "level_drift", "slow_drift",
    )

    def __init__(self, sensor_id: str, when: datetime, p: Params):
        self.sensor_id = sensor_id
        self.metrics = {}
        self.last_ts = when
        self.gap = None  # EWMA of seconds between readings
        self.readings = 0
        self.anomaly = 0.0  # recent rate of anomalous readings
        self.explained = 0  # readings left in which anomalies are still the after-effect of a cleared reason
        self.oor = 0.0  # recent rate of out-of-range readings
        self.battery = None
        self.status = None
        self.band = len(BAND_NAMES) - 1
        self.next_periodic = bucket_start(when, p) + p.interval  # the data time of the next periodic event
        self.flags = Flags()
        self.stale = 0.0  # age / stale_after, as of the last sweep
        self.stuck = 0  # longest identical run among the judged metrics
        self.drift = self.noise = None  # worst drift z / noise ratio; None until a metric is past its warm-up
        self.block_end = next_block(when, p.drift)  # when the metrics' block means for slow drift close
        self.level_drift = 0.0  # the slow-drift CUSUM of the worst metric, in drift_z units, as of the last block
        self.slow_drift = None  # ... and its evidence

    def observe(self, r: SensorReading, when: datetime, anomalous: bool, p: Params,
                peers: PeerBlocks | None = None, index: SensorStates | None = None) -> float:
        """Fold one reading (`when` = r.ts, read once by the caller) in, refresh the data-driven measures;
        return the score as of this reading. `peers`: the groups' block sums, when drift is judged against peers;
        `index`: the sensors' states, which bound the tracks a new metric name may start.

        The hot path of the sensor side: drift, noise and the score are inlined on purpose."""
        self.readings += 1
        if when >= self.block_end:  # a new block of data time: every metric's slow-drift level steps
            self.level_drift, self.slow_drift = close_blocks(self.metrics, p.drift, self.block_end, peers,
                                                             self.sensor_id)
            self.block_end = next_block(when, p.drift)
        if when > self.last_ts:
            dt = (when - self.last_ts).total_seconds()
            self.gap = dt if self.gap is None else self.gap + p.a_gap * (dt - self.gap)
            self.last_ts = when
        # a reading older than the last one still counts as a value, but not as a sign of life
        out_of_range = False
        stuck = 0
        drift = noise = -1.0  # -1: no metric past its warm-up yet
        short = not p.drift.daily  # the short window judges drift too, except against the usual day
        ranges = p.ranges
        steady = p.steady
        tracks = self.metrics
        for name, x in r.metrics.items():
            m = tracks.get(name)
            if m is None:  # the first valid value starts the track: an impossible one must not be its baseline
                lo, hi = ranges.get(name, _ANY)
                if not lo <= x <= hi:
                    out_of_range = True
                    continue
                if index is not None and not index.room(self):
                    continue  # past health.max_series: the metric is judged by the anomaly detector alone
                tracks[name] = MetricTrack(x, lo, hi, name in steady, p.drift)
                if name == "battery":
                    self.battery = x
                continue
            if not m.lo <= x <= m.hi:
                out_of_range = True
                continue  # an impossible value teaches the baseline nothing
            if m.steady:  # e.g. battery: its level matters, its stillness does not
                if name == "battery":
                    self.battery = x
                continue
            if m.update(x, p):
                anomalous = True
            level = m.level  # an outlier counts as the last clean value: a spike is not a level
            level.total += m.clean
            level.n += 1
            if m.run > stuck:
                stuck = m.run
            dz = m.dz if short else (0.0 if m.dz >= 0.0 else -1.0)
            if dz > drift:
                drift = dz
            if m.nz > noise:
                noise = m.nz
        if r.attrs:
            status = r.attrs.get("status")
            if status is not None:
                self.status = str(status)
        if drift < 0.0:
            drift = noise = None
        elif self.level_drift > drift:
            drift = self.level_drift  # slow drift, scaled so that it reaches drift_z where its CUSUM raises
        # anomalies explained by a raised reason (maintenance.EXPLAINS_ANOMALIES), or in the anomaly window
        # after it cleared (a value that moves again after a stuck stretch surprises for a while), do not count
        if not EXPLAINS_ANOMALIES.isdisjoint(self.flags.calm):
            self.explained = p.anomaly_span
            anomalous = False
        elif self.explained:
            self.explained -= 1
            anomalous = False
        self.anomaly += p.a_anom * ((1.0 if anomalous else 0.0) - self.anomaly)
        self.oor += p.a_anom * ((1.0 if out_of_range else 0.0) - self.oor)
        self.stale = 0.0
        self.stuck = stuck
        self.drift = drift
        self.noise = noise
        # the score right after a reading (fresh by definition): the worst component
        worst = 1.0 - stuck * p.inv_stuck
        c = 1.0 - (self.anomaly - p.anomaly_ok) * p.inv_anomaly
        if c < worst:
            worst = c
        c = 1.0 - (self.oor - p.oor_ok) * p.inv_oor
        if c < worst:
            worst = c
        if drift is not None:
            c = 1.0 - (drift - p.drift_ok) * p.inv_drift
            if c < worst:
                worst = c
            c = 1.0 - (noise - p.noise_ok) * p.inv_noise
            if c < worst:
                worst = c
        if self.battery is not None:
            c = (self.battery - p.low_battery) * p.inv_battery
            if c < worst:
                worst = c
        if self.status is not None and self.status.lower() in p.bad_status:
            worst = 0.0
        return 0.0 if worst < 0.0 else worst

    def measures(self) -> tuple:
        """What each maintenance reason watches, in REASONS order (bigger = worse; None = not judged yet)."""
        return (self.stale, self.stuck, self.drift, self.noise, self.oor, self.anomaly,
                None if self.battery is None else -self.battery)

    def stale_after(self, p: Params) -> float:
        if self.gap is None:
            return p.first_stale
        return max(p.stale_min, p.stale_factor * self.gap)

    def components(self, now: datetime, p: Params) -> dict[str, float]:
        """Each component in [0, 1]; 0 where its maintenance reason raises."""
        stale_after = self.stale_after(p)
        usual = min(self.gap or 0.0, stale_after * 0.5)
        age = max(0.0, (now - self.last_ts).total_seconds())
        c = {
            "freshness": _unit(1.0 - max(0.0, age - usual) / max(stale_after - usual, 1e-9)),
            "anomaly": _unit(1.0 - (self.anomaly - p.anomaly_ok) * p.inv_anomaly),
            "stuck": _unit(1.0 - self.stuck * p.inv_stuck),
            "drift": 1.0 if self.drift is None else _unit(1.0 - (self.drift - p.drift_ok) * p.inv_drift),
            "noise": 1.0 if self.noise is None else _unit(1.0 - (self.noise - p.noise_ok) * p.inv_noise),
            "range": _unit(1.0 - (self.oor - p.oor_ok) * p.inv_oor),
        }
        if self.battery is not None:
            c["battery"] = _unit((self.battery - p.low_battery) * p.inv_battery)
        if self.status is not None:
            c["status"] = 0.0 if self.status.lower() in p.bad_status else 1.0
        return c

    def evidence(self) -> dict:
        return {
            "readings": self.readings, "interval_s": self.gap, "last_reading": self.last_ts.isoformat() + "Z",
            "stuck_run": self.stuck, "drift_z": self.drift, "noise_ratio": self.noise, "anomaly_rate": self.anomaly,
            "out_of_range_rate": self.oor, "battery": self.battery, "status": self.status,
            "slow_drift": self.slow_drift,
        }


def _unit(x: float) -> float:
    return 0.0 if x < 0.0 else (1.0 if x > 1.0 else x)


def band_after(current: int, score: float, p: Params) -> int:
    """The band for `score`, moving off `current` only when past a boundary by the margin."""
    poor, good = p.bands
    raw = 0 if score < poor else (1 if score < good else 2)
    if raw == current:
        return current
    bounds = (poor, good)
    if raw > current:
        return raw if score >= bounds[raw - 1] + p.margin else current
    return raw if score < bounds[raw] - p.margin else current


def health_event(s: SensorHealth, when: datetime, p: Params, why: str, keyed: datetime | None = None) -> Event:
    """A `health` event at data time `when`, its id keyed on `keyed` (default `when`): a periodic event is
    keyed on its bucket, so each sensor has one per bucket whichever reading opens it."""
    comps = s.components(when, p)
    score = min(comps.values())
    # after a reading this is s.band (the reading just moved it); a silent sensor's report does not move it,
    # so that the data-driven band crossings never depend on the engine clock
    band = band_after(s.band, score, p)
    data = {"score": score, "band": BAND_NAMES[band], "why": why, "components": comps, **s.evidence()}
    msg = f"{s.sensor_id} health {score:.2f} ({BAND_NAMES[band]})"
    return Event(event_id=event_id("health", s.sensor_id, keyed or when, why), ts=when, kind="health",
                 key=s.sensor_id, severity=BAND_SEVERITY[band], message=msg, data=data)


@csp.node(memoize=False)
def sensor_health(
    readings: ts[list[SensorReading]], scores: ts[list[MetricScore]], h: HealthConfig, m: MaintenanceConfig,
    d: DriftConfig = None, states: object = None, group: str = "",
) -> ts[list[Event]]:
    """`health` events (periodic, on band crossings, while stale) and `maintenance` flags, for every sensor;
    the sensors' states (drift and maintenance flags included) are kept in `states` (a snapshot.StateBook, or None),
    under names of their own for a group of sensors (`health:NAME`)."""
    with csp.alarms():
        a_sweep = csp.alarm(bool)
    with csp.state():
        name = state_name("health", group)
        s_sensors = keep(states, name, SensorStates(h.max_sensors, name, h.max_series))
        s_params = Params(h, m, d)
        s_peers = (keep(states, state_name("drift_peers", group), PeerBlocks(h.max_sensors))
                   if s_params.drift.peers else None)
        s_sweep = timedelta(seconds=h.sweep_interval if h.sweep_interval > 0 else 1.0)
    with csp.start():
        csp.make_passive(scores)
        csp.schedule_alarm(a_sweep, s_sweep, True)

    p = s_params
    rules = p.rules
    poor, good = p.bands
    sensors = s_sensors
    out = []
    if csp.ticked(readings):
        hits = _NONE
        if csp.ticked(scores):
            cut = p.anomaly_score
            steady = p.steady
            # per reading, not per sensor: a batch may hold several readings of one sensor
            hits = {(sc.sensor_id, sc.ts) for sc in scores if sc.score >= cut and sc.metric not in steady}
        for r in readings:
            sid = r.sensor_id
            when = r.ts  # a csp.Struct builds a new datetime on every field read: read it once
            s = sensors.get(sid)
            if s is None:
                s = sensors[sid] = SensorHealth(sid, when, p)
            score = s.observe(r, when, (sid, when) in hits if hits else False, p, s_peers, sensors)
            # every reason raises exactly where the score reaches 0: while it is above 0 and nothing is raised,
            # the flags cannot change, and the per-reason rules are skipped
            if score <= 1e-9 or s.flags.calm:
                raised, cleared = s.flags.update(s.measures(), rules, _ALL)
                if raised or cleared:
                    out += maintenance_events(sid, when, s.flags, raised, cleared, s.evidence())
            if (0 if score < poor else (1 if score < good else 2)) != s.band:
                band = band_after(s.band, score, p)
                if band != s.band:
                    s.band = band
                    out.append(health_event(s, when, p, "band"))
            if when >= s.next_periodic:  # the first reading in a new bucket of data time
                start = bucket_start(when, p)
                s.next_periodic = start + p.interval
                out.append(health_event(s, when, p, "periodic", start))
    if csp.ticked(a_sweep):
        # silence is the one thing no reading can report: the engine clock finds it, the events are stamped
        # in data time (last reading + stale threshold) so their ids are deterministic
        now = csp.now()
        csp.schedule_alarm(a_sweep, s_sweep, True)
        recent = now - p.stale_min_td  # no sensor that reported since then can be stale
        forgotten = []
        for s in sensors.values():
            if s.last_ts >= recent:
                continue
            age = (now - s.last_ts).total_seconds()
            if age >= p.forget_after:
                forgotten.append(s.sensor_id)
            elif STALE not in s.flags.calm:  # once per silence: nothing more is said until the sensor reports
                after = s.stale_after(p)
                if age >= after:
                    since = s.last_ts + timedelta(seconds=after)
                    s.stale = age / after
                    raised, cleared = s.flags.update(s.measures(), rules, _STALE_ONLY)
                    out += maintenance_events(s.sensor_id, since, s.flags, raised, cleared, s.evidence())
                    out.append(health_event(s, since, p, "stale"))
        for sid in forgotten:
            del sensors[sid]
        metrics.STATE_FORGOTTEN.inc(len(forgotten))
    if out:
        return out
