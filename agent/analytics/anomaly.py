"""Streaming anomaly detection per (sensor, metric) and per sensor: the detector and its csp nodes.

One keyed node holds a dict of small per-(sensor, metric) states (~1.4 KB
each), each updated in O(1) with plain float arithmetic (no numpy, no per-key
csp.dynamic), so the graph keeps up with 100k sensors. The score of a reading,
in [0, 1], is built in four steps:

1. two robust forecasts, each with its own robust scale (EWMA of clipped
   absolute residuals): the recent level with a slow (Holt) trend, and a daily
   profile learnt online in time-of-day buckets. The profile is used once its recent error is below the
   level's, so daily cycles are expected, while trends and series without a
   daily rhythm fall back on the level;
2. a raw surprise in [0, 1) from the residual in scale units, z / (z + 3);
3. an "anomaly likelihood" (Numenta's idea): how improbable the recent mean
   surprise is under its own long-run distribution, mapped to [0, 1] on a log
   scale (tail probability `tail_floor` or less -> 1.0) so the threshold has
   resolution where it matters; noise changes move that distribution, not the score;
4. a reading well beyond the whole range seen so far (by `spatial_tolerance`
   of it) and at least `spatial_z` scales from its forecast scores 1.0, HTM's
   "spatial anomaly". The second condition matters early: right after the
   warm-up the range seen is narrow, and ordinary noise extremes leave it.

After a detection the level re-baselines on the new reading (a level shift
alarms once, then becomes the norm) and scores are halved for a refractory
period: an operator, like the NAB benchmark, counts every repeat as a false alarm.
Statistics start as plain means (1/n) until their EWMA weight takes over, so
there is no start-up bias (a profile bucket's first reading sets its mean, and
its scale starts from the residuals after it, not from |x|: otherwise the
surprise learnt during the warm-up is near 0 and every later reading looks
rare); nothing scores above 0 during the warm-up.

A sensor that publishes several metrics in one reading also gets a
sensor-level score (`fuse`, on by default), metric FUSED ("*"), and with it
only that score raises `anomaly` events (its metrics' own scores, PartScore,
still inform health). Its channels:

- per metric, a change channel (`change_window`): the metric's deviation
  from a slow reference (mean and spread of its last 300 readings), smoothed
  (EWMA, `change_span`) and judged against that deviation's own long-run RMS.
  The fast level forecast above follows a fault that moves a metric a few
  noise widths over a minute (a closing valve); the slow reference does not;
- a metric's own verdict, as a range break ("spatial") only, unless
  `fuse_metrics` (then every verdict: more sensitive to short excursions, at
  twice the false alarms on SKAB's healthy pump);
- with `pairs`, one correlation channel per metric and the next one in name
  order (a ring): an EWMA regression of one metric's signed level residual
  (in scale units) on the other's, whose error goes through the surprise and
  likelihood steps, so a broken relation (flow drops while current stays)
  counts even when each metric alone looks normal.

The fused verdict is the most surprising channel, Bonferroni-corrected for
the number of channels (-log(tail * K)): valid however the metrics
correlate, so an eight-metric sensor alarms about as often as a two-metric
one (`fuse = "fisher"` adds Fisher's combination of the metrics' tails). A
change channel's tail is the two-sided normal tail of its deviation, times
the number of metrics, and `change_z` (for one metric) maps to the live
threshold. The sensor has its own refractory period (`sensor_refractory`);
the metrics that alarmed re-baseline. These choices (which channels, the
change threshold, the refractory period) were made by leave-one-file-out
cross-validation on SKAB (bench/skab.py). A single metric per reading is
scored as above, without any of this.

Out-of-order readings (older than the last one of their key) are scored
against the current model but teach it nothing: feeding the past into EWMAs
would corrupt them. Readings that are not finite, or beyond +-1e30, get no score.
"""

from __future__ import annotations

import math
from array import array
from datetime import datetime

import csp
from csp import ts
from edgewatch.agent.analytics.snapshot import keep, persisted
from edgewatch.agent.analytics.states import RecentStates
from edgewatch.agent.config import AnomalyConfig
from edgewatch.agent.records import (
    AnomalyScore,
    Event,
    MetricScore,
    SensorReading,
    make_event,
)

SURPRISE_VAR_FLOOR = 0.02**2  # the surprise's long-run variance is never taken as below this
MAX_MAGNITUDE = 1e30  # readings beyond this are not scored (the daily profile is stored as float32)
_UNSEEN = float("inf")  # the daily profile's error before its first prediction
SPATIAL_MIN_SCORE = 0.3  # a new extreme must also be mildly surprising: a young range is narrow
SPATIAL = 1000.0  # the unclipped verdict of a "spatial anomaly" (and of a tail below float range): beyond any floor
PAIR_CLIP = 10.0  # residuals (in scale units) beyond this are clipped before they enter a correlation channel
PAIR_SCALE_FLOOR = 0.1  # a pair's error scale, in the metrics' own scale units, is never taken as below this: a
# relation tighter than a tenth of the metrics' noise (or a metric that barely moves, like a battery) is no signal
FUSED = "*"  # the metric name of a multi-metric sensor's sensor-level score
CHANGE_BLOCK = 30  # readings per block of a change channel's slow reference
CHANGE_CLIP = 10.0  # a deviation from the slow reference counts at most this many reference spreads
CHANGE_WARMUP = 30  # deviations learnt before a change channel judges one
_LN2 = math.log(2.0)
_SQRT2 = math.sqrt(2.0)


def ewma_alpha(span: float) -> float:
    """EWMA weight of a span in readings (a span below 1 means "no memory")."""
    return 2.0 / (max(span, 1.0) + 1.0)


class Params:
    """The detector's constants, derived once from AnomalyConfig (attribute reads are cheap)."""

    __slots__ = (
        "a_level", "a_trend", "a_dev", "a_season", "a_short", "a_long", "clip", "warmup", "refractory",
        "rel_floor", "buckets", "season_min", "log_floor", "threshold", "spatial", "spatial_z",
        "inv_log_floor", "fuse", "fisher", "pairs", "a_pair", "blocks", "a_change", "a_cnorm", "change_log",
        "fuse_metrics", "sensor_refractory",
    )

    def __init__(self, cfg: AnomalyConfig):
        self.a_level = ewma_alpha(cfg.level_span)
        self.a_trend = ewma_alpha(cfg.trend_span) if cfg.trend_span > 0.0 else 0.0
        self.a_dev = ewma_alpha(cfg.scale_span)
        self.a_season = ewma_alpha(cfg.season_span)
        self.a_short = ewma_alpha(cfg.short_span)
        self.a_long = ewma_alpha(cfg.long_span)
        self.clip = cfg.clip
        self.warmup = cfg.warmup
        self.refractory = cfg.refractory
        self.rel_floor = cfg.rel_floor
        self.buckets = max(cfg.season_buckets, 1)
        self.season_min = min(max(cfg.season_min, 1), 255)
        self.log_floor = math.log(min(max(cfg.tail_floor, 1e-300), 0.5))
        self.threshold = cfg.threshold
        self.spatial = cfg.spatial_tolerance
        self.spatial_z = cfg.spatial_z
        self.inv_log_floor = -1.0 / self.log_floor
        self.fuse = cfg.fuse != "off"
        self.fisher = cfg.fuse == "fisher"
        self.pairs = cfg.pairs
        self.fuse_metrics = cfg.fuse_metrics
        self.sensor_refractory = cfg.sensor_refractory
        self.a_pair = ewma_alpha(cfg.pair_span)
        self.blocks = cfg.change_window // CHANGE_BLOCK  # config.check: 0 or at least two whole blocks
        self.a_change = ewma_alpha(cfg.change_span)
        self.a_cnorm = ewma_alpha(cfg.change_norm_span)
        self.change_log = math.log(math.erfc(cfg.change_z / _SQRT2))  # log of change_z's two-sided tail


@persisted
class MetricState:
    """Everything the detector remembers about one (sensor, metric): a fixed set of numbers."""

    __slots__ = (
        "n", "last_ts", "level", "dev", "mag", "season", "seen", "short", "lmean", "lvar",
        "cool", "expected", "band", "serr", "lo", "hi", "trend", "sgn", "learned", "moving", "change",
    )

    def __init__(self, x: float, when: datetime, p: Params):
        self.n = 1
        self.last_ts = when
        self.level = x
        self.dev = 0.0
        self.mag = abs(x)
        self.season = array("f", bytes(8 * p.buckets))  # per bucket: mean, mean |residual|
        self.seen = bytearray(p.buckets)  # per bucket: updates so far, saturating at 255
        self.short = 0.0
        self.lmean = 0.0
        self.lvar = 0.0
        self.cool = 0
        self.expected = x
        self.band = 0.0
        self.serr = _UNSEEN
        self.lo = x
        self.hi = x
        self.trend = 0.0
        self.sgn = 0.0
        self.learned = True
        self.moving = False
        self.change: ChangeState | None = None  # the sensor-level score's change channel (several metrics only)

    def verdict(self, x: float, when: datetime, p: Params) -> float:
        """The metric's own verdict on one reading, before any refractory period: -log(tail) / -log(tail_floor),
        NOT clipped to 1 (the sensor-level fusion needs the tail beyond the floor). Learns from the reading
        when it is in time order (self.learned); sets self.sgn, the signed residual in scale units."""
        learn = when >= self.last_ts
        self.learned = learn
        if learn:
            self.last_ts = when
            self.n += 1
        b = (when.hour * 60 + when.minute) * p.buckets // 1440
        floor = p.rel_floor * self.mag + 1e-9
        # expert 1: the recent level and its slow trend (Holt)
        scale = self.dev if self.dev > floor else floor
        fc = self.level + self.trend
        r = x - fc
        z = (r if r >= 0.0 else -r) / scale
        expected, band = fc, scale
        # expert 2: the same time of day on earlier days, trusted once it has been the better forecast
        season = self.season
        if self.seen[b] >= p.season_min:
            rb = x - season[2 * b]
            ab = rb if rb >= 0.0 else -rb
            bs = season[2 * b + 1]
            bs = bs if bs > floor else floor
            if self.serr < scale:
                z, expected, band = ab / bs, season[2 * b], bs
            if learn:
                lb = p.clip * bs
                ab = ab if ab < lb else lb
                self.serr = ab if self.serr == _UNSEEN else self.serr + p.a_dev * (ab - self.serr)
        self.expected = expected
        self.band = band
        u = r / scale  # the level expert's residual for the pairs: both metrics of a pair judged the same way
        self.sgn = u if -PAIR_CLIP < u < PAIR_CLIP else (PAIR_CLIP if u > 0.0 else -PAIR_CLIP)
        self.moving = self.dev > floor  # a metric held at its scale floor (a battery) carries no relation
        raw = z / (z + 3.0) if z < 1e12 else 1.0
        short = self.short + p.a_short * (raw - self.short)
        d = short - self.lmean
        var = self.lvar
        if not learn:
            return 0.0 if self.n <= p.warmup else _verdict(d, var, p)
        # young statistics are plain means (1/n) until the EWMA weight takes over: no start-up bias
        inv_n = 1.0 / self.n
        a = p.a_long if p.a_long > inv_n else inv_n
        self.short = short
        self.lmean += a * d
        self.lvar = (1.0 - a) * (var + a * d * d)
        # robust learning: residuals are clipped so one spike barely moves the model
        lim = p.clip * scale
        c = lim if r > lim else (-lim if r < -lim else r)
        nl = fc + p.a_level * c
        if not self.cool:  # while it re-learns after a detection the level's moves are no trend
            self.trend += p.a_trend * (nl - self.level - self.trend)
        self.level = nl
        a = p.a_dev if p.a_dev > inv_n else inv_n
        self.dev += a * ((c if c >= 0.0 else -c) - self.dev)
        self.mag += a * ((x if x >= 0.0 else -x) - self.mag)
        k = self.seen[b]
        if k < 255:
            k += 1
            self.seen[b] = k
        if k == 1:  # a bucket's first reading is its mean; there is no residual yet (|x| is no scale)
            season[2 * b] = x
        else:
            rb = x - season[2 * b]
            if k > p.season_min:  # a trusted bucket learns robustly too
                lb = season[2 * b + 1]
                lb = p.clip * (lb if lb > floor else floor)
                rb = lb if rb > lb else (-lb if rb < -lb else rb)
            a = 1.0 / k if k * p.a_season < 1.0 else p.a_season  # plain means until the EWMA takes over
            season[2 * b] += a * rb
            a = 1.0 / (k - 1) if (k - 1) * p.a_season < 1.0 else p.a_season  # k - 1 residuals so far
            season[2 * b + 1] += a * ((rb if rb >= 0.0 else -rb) - season[2 * b + 1])
        hi, lo = self.hi, self.lo
        if x > hi:
            self.hi = x
        if x < lo:
            self.lo = x
        if self.n <= p.warmup:
            return 0.0
        s = _verdict(d, var, p)
        m = p.spatial * (hi - lo)
        if m > 0.0 and s >= SPATIAL_MIN_SCORE and z >= p.spatial_z and (x > hi + m or x < lo - m):
            return SPATIAL  # well beyond anything seen before: HTM's "spatial anomaly"
        return s


def _verdict(d: float, var: float, p: Params) -> float:
    """How improbable the recent surprise is under its long-run distribution, on a log scale."""
    if d <= 0.0:
        return 0.0
    if var < SURPRISE_VAR_FLOOR:  # a perfectly quiet history must still let a spike through
        var = SURPRISE_VAR_FLOOR
    tail = 0.5 * math.erfc(d / math.sqrt(2.0 * var))
    if tail <= 0.0:
        return SPATIAL
    return math.log(tail) / p.log_floor  # unclipped: > 1 beyond the floor


@persisted
class ChangeState:
    """A metric's change channel in the sensor-level score: how far the metric has moved from a slow
    reference (the mean and spread of its last `change_window` readings, kept as a ring of block sums), as an
    EWMA of that deviation in reference spreads, judged against the deviation's own long-run RMS, so that a
    metric that always wanders (a fluid temperature) needs a larger move than one that holds still. The
    reference follows a new level only after a window, so a sustained shift of a few noise widths, which the
    fast level forecast absorbs in seconds, stays visible here. About 2 x blocks + 8 numbers."""

    __slots__ = ("sums", "full", "bn", "bs", "bs2", "s", "s2", "pivot", "dev", "ms", "n")

    def __init__(self, x: float, p: Params):
        self.sums = array("d", bytes(16 * p.blocks))  # per block of the ring: sum, sum of squares (x - pivot)
        self.full = 0  # blocks completed so far
        self.bn, self.bs, self.bs2 = 0, 0.0, 0.0  # the block being filled
        self.s = self.s2 = 0.0  # totals over the ring's completed blocks
        self.pivot = x  # sums are of x - pivot: no cancellation for a large mean with a small spread
        self.dev = self.ms = 0.0
        self.n = 0

    def deviation(self, x: float, floor: float, p: Params) -> float:
        """Learn from one in-order reading; its EWMA deviation in units of the long-run RMS (0 while young)."""
        x -= self.pivot
        r = 0.0
        k = self.full if self.full < p.blocks else p.blocks
        if k >= 2:
            cnt = k * CHANGE_BLOCK
            mu = self.s / cnt
            var = self.s2 / cnt - mu * mu
            sd = math.sqrt(var) if var > 0.0 else 0.0
            z = (x - mu) / (sd if sd > floor else floor)
            z = z if -CHANGE_CLIP < z < CHANGE_CLIP else (CHANGE_CLIP if z > 0.0 else -CHANGE_CLIP)
            dev = self.dev + p.a_change * (z - self.dev)
            self.dev = dev
            n = self.n = self.n + 1
            e2 = dev * dev
            if n > CHANGE_WARMUP:
                ms = self.ms
                r = (dev if dev >= 0.0 else -dev) / math.sqrt(ms) if ms > 1e-12 else 0.0
                if e2 > 25.0 * ms:  # a change learns its own norm slowly: clipped like every other residual
                    e2 = 25.0 * ms
            a = p.a_cnorm if p.a_cnorm * n > 1.0 else 1.0 / n
            self.ms += a * (e2 - self.ms)
        self.bn += 1
        self.bs += x
        self.bs2 += x * x
        if self.bn == CHANGE_BLOCK:
            i = 2 * (self.full % p.blocks)
            sums = self.sums
            if self.full >= p.blocks:
                self.s -= sums[i]
                self.s2 -= sums[i + 1]
            sums[i], sums[i + 1] = self.bs, self.bs2
            self.s += self.bs
            self.s2 += self.bs2
            self.full += 1
            self.bn, self.bs, self.bs2 = 0, 0.0, 0.0
        return r


@persisted
class PairState:
    """A correlation channel of a multi-metric sensor: metric j's signed residual regressed on metric i's
    (EWMA moments), and the anomaly likelihood of the regression error's surprise. Eight numbers."""

    __slots__ = ("n", "sxx", "sxy", "dev", "short", "lmean", "lvar")

    def __init__(self):
        self.n = 0
        self.sxx = self.sxy = self.dev = 0.0
        self.short = self.lmean = self.lvar = 0.0

    def surprise(self, u: float, v: float, p: Params) -> float:
        """Learn from one pair of residuals (in scale units); how many standard deviations the error's recent
        surprise lies above its long-run mean (0 in the warm-up): `_verdict` is monotone in it, so the fusion
        turns only the largest into a score."""
        n = self.n + 1
        self.n = n
        inv_n = 1.0 / n
        a = p.a_pair if p.a_pair > inv_n else inv_n
        e = v - (self.sxy / self.sxx if self.sxx > 1e-12 else 0.0) * u
        e = e if e >= 0.0 else -e
        scale = self.dev if self.dev > PAIR_SCALE_FLOOR else PAIR_SCALE_FLOOR
        z = e / scale
        raw = z / (z + 3.0) if z < 1e12 else 1.0
        lim = p.clip * scale
        self.dev += a * ((e if e < lim or n < 10 else lim) - self.dev)
        self.sxx += a * (u * u - self.sxx)
        self.sxy += a * (u * v - self.sxy)
        short = self.short + p.a_short * (raw - self.short)
        d = short - self.lmean
        var = self.lvar
        a = p.a_long if p.a_long > inv_n else inv_n
        self.short = short
        self.lmean += a * d
        self.lvar = (1.0 - a) * (var + a * d * d)
        if n <= p.warmup or d <= 0.0:
            return 0.0
        return d / math.sqrt(var if var > SURPRISE_VAR_FLOOR else SURPRISE_VAR_FLOOR)


@persisted
class SensorState:
    """What the fusion remembers about one multi-metric sensor: its refractory count and its pair channels."""

    __slots__ = ("cool", "key", "pairs")

    def __init__(self):
        self.cool = 0
        self.key: tuple = ()
        self.pairs: list = []  # (index i, index j, "a~b", PairState) over a ring of the metrics in name order


class PartScore(MetricScore):
    """A metric's own score inside a fused multi-metric reading: it informs health but raises no event
    (the sensor-level score, metric FUSED, decides)."""


class SensorScore(AnomalyScore):
    """A sensor-level (fused) score at or above the threshold: the evidence of its most surprising channel."""

    # real types, not the strings `from __future__ import annotations` would make of them (csp needs types):
    # channel: the metric, or "a~b" for the correlation between metrics a and b, that surprised most;
    # top: the most surprising single metric (value, expected, band... are its evidence);
    # metric_scores: metric -> its own score on this reading
    __annotations__ = {"channel": str, "top": str, "metric_scores": dict}


class Detector:
    """The per-(sensor, metric) states of a whole fleet, the per-sensor fusion, and the scoring of reading batches."""

    def __init__(self, cfg: AnomalyConfig):
        self.params = Params(cfg)
        self.states: dict[tuple[str, str], MetricState] = RecentStates(cfg.max_series, "anomaly")
        self.sensors: dict[str, SensorState] = RecentStates(cfg.max_series, "anomaly_sensors")

    def score_readings(self, readings: list[SensorReading], min_score: float = 0.0) -> list[MetricScore]:
        """One MetricScore per finite metric of each reading, in order (the first reading of a key scores 0);
        a reading of several metrics (with fusion on) adds one sensor-level score, metric FUSED, after them.
        Scores below `min_score` are left out (the live graph needs only those that raise events or count for
        health: building a score object costs as much as a metric's arithmetic)."""
        p = self.params
        states = self.states
        out = []
        for rd in readings:
            sid = rd.sensor_id
            when = rd.ts
            parts = []
            for name, x in rd.metrics.items():
                if not -MAX_MAGNITUDE < x < MAX_MAGNITUDE:  # also rejects NaN
                    continue
                st = states.get((sid, name))
                if st is None:
                    states[sid, name] = MetricState(x, when, p)
                    if min_score <= 0.0:
                        out.append(MetricScore(sensor_id=sid, metric=name, ts=when, value=x, score=0.0))
                    continue
                parts.append((name, x, st, st.verdict(x, when, p)))
            if len(parts) > 1 and p.fuse:
                self._fuse(sid, when, parts, out, min_score)
                continue
            for name, x, st, u in parts:  # each metric alone, with its own refractory period
                s = u if u < 1.0 else 1.0
                if st.cool > 0:
                    if st.learned:
                        st.cool -= 1
                    s *= 0.5  # damped: cannot alarm at any threshold above 0.5
                elif s >= p.threshold and st.learned:
                    st.cool = p.refractory
                    st.level, st.trend = x, 0.0  # re-baseline: a level shift alarms once, then becomes the norm
                if s >= p.threshold:
                    out.append(_evidence(sid, name, when, x, s, st))
                elif s >= min_score:
                    out.append(MetricScore(sensor_id=sid, metric=name, ts=when, value=x, score=s))
        return out

    def _fuse(self, sid: str, when: datetime, parts: list, out: list, min_score: float) -> None:
        """The sensor-level score of one multi-metric reading: the most surprising of its metrics and of the
        correlations between them, Bonferroni-corrected for the number of channels (and, with fuse = fisher,
        Fisher's combination of the metrics' tails), so a sensor with many metrics alarms no more often than
        one with a single metric; one refractory period per sensor."""
        p = self.params
        sen = self.sensors.get(sid)
        if sen is None:
            sen = self.sensors[sid] = SensorState()
        learned = True
        top_u, top = -1.0, parts[0]
        for part in parts:
            st = part[2]
            if not st.learned:
                learned = False
            elif st.cool > 0:  # the metric re-learns its level after a re-baseline: no trend meanwhile
                st.cool -= 1
            if part[3] > top_u:
                top_u, top = part[3], part
        best, channel, k = top_u, top[0], len(parts)
        if not p.fuse_metrics and top_u < SPATIAL:  # the metrics' own verdicts count only as range breaks
            best, k = 0.0, 1
        if p.pairs and learned:
            key = tuple([part[0] for part in parts])
            if key != sen.key:  # a new set of metrics: a new ring of pairs
                sen.key = key
                order = sorted(range(len(key)), key=key.__getitem__)
                m = len(order)
                sen.pairs = [(order[i], order[(i + 1) % m], f"{key[order[i]]}~{key[order[(i + 1) % m]]}", PairState())
                             for i in range(m if m > 2 else 1)]
            q, qlabel = 0.0, ""
            for i, j, label, ps in sen.pairs:
                a, b = parts[i][2], parts[j][2]
                v = ps.surprise(a.sgn, b.sgn, p)
                if v > q and a.moving and b.moving:
                    q, qlabel = v, label
            if q > 0.0:
                v = _verdict(q, 1.0, p)
                if v > best:
                    best, channel = v, qlabel
            k += len(sen.pairs)
        fused = best - math.log(k) * p.inv_log_floor
        if p.fisher:
            h = 0.0
            for part in parts:
                h += part[3] if part[3] < SPATIAL else SPATIAL
            h *= -p.log_floor  # -sum(log tail)
            acc, term = 1.0, 1.0
            for i in range(1, len(parts)):
                term *= h / i
                acc += term
            f = (h - math.log(acc)) * p.inv_log_floor
            fused = (fused if fused > f else f) - _LN2 * p.inv_log_floor
        if p.blocks and learned:
            top_r, top_c = 0.0, top
            for part in parts:
                name, x, st, _ = part
                ch = st.change
                if ch is None:
                    ch = st.change = ChangeState(x, p)
                r = ch.deviation(x, p.rel_floor * st.mag + 1e-9, p)
                if r > top_r:
                    top_r, top_c = r, part
            if top_r > 0.0:
                tail = math.erfc(top_r / _SQRT2) * len(parts)  # two-sided, Bonferroni over the metrics
                v = p.threshold * math.log(tail) / p.change_log if 0.0 < tail < 1.0 else (SPATIAL if tail <= 0.0 else 0.0)
                if v > fused:
                    fused, channel, top = v, f"{top_c[0]}:change", top_c
        s = 1.0 if fused >= 1.0 or top_u >= SPATIAL else (fused if fused > 0.0 else 0.0)
        damp = sen.cool > 0
        if learned:
            if damp:
                sen.cool -= 1
            elif s >= p.threshold:
                sen.cool = p.sensor_refractory
                for name, x, st, u in parts:
                    if u >= p.threshold:  # re-baseline the metrics that alarmed: a level shift alarms once
                        st.level, st.trend = x, 0.0
                        st.cool = p.refractory
        if damp:
            s *= 0.5
        scale = 0.5 if damp else 1.0
        for name, x, st, u in parts:
            u = (u if u < 1.0 else 1.0) * scale
            if u >= min_score:
                out.append(PartScore(sensor_id=sid, metric=name, ts=when, value=x, score=u))
        name, x, st, _ = top
        if s >= p.threshold:
            out.append(SensorScore(
                sensor_id=sid, metric=FUSED, ts=when, value=x, score=s,
                expected=st.expected, band=st.band, surprise=st.short,
                surprise_mean=st.lmean, surprise_std=math.sqrt(st.lvar), readings=st.n,
                channel=channel, top=name, metric_scores={n_: (u_ if u_ < 1.0 else 1.0) for n_, _, _, u_ in parts},
            ))
        elif s >= min_score:
            out.append(MetricScore(sensor_id=sid, metric=FUSED, ts=when, value=x, score=s))


def _evidence(sid: str, metric: str, when: datetime, x: float, s: float, st: MetricState) -> AnomalyScore:
    return AnomalyScore(
        sensor_id=sid, metric=metric, ts=when, value=x, score=s,
        expected=st.expected, band=st.band, surprise=st.short,
        surprise_mean=st.lmean, surprise_std=math.sqrt(st.lvar), readings=st.n,
    )


@csp.node(memoize=False)  # the config is a mutable dataclass, not hashable
def anomaly_scores(readings: ts[list[SensorReading]], cfg: AnomalyConfig, min_score: float = 0.0,
                   states: object = None) -> ts[list[MetricScore]]:
    """Score every metric of every reading; one node keyed by (sensor, metric) inside. With `min_score` > 0 only
    the scores at or above it or the (live) event threshold, whichever is lower, go out (0: every score).
    Its states are kept in `states` (a snapshot.StateBook, or None): the constants come from `cfg` on every
    start."""
    with csp.state():
        s_detector = Detector(cfg)
        s_detector.states = keep(states, "anomaly", s_detector.states)
        s_detector.sensors = keep(states, "anomaly_sensors", s_detector.sensors)
    if csp.ticked(readings):
        out = s_detector.score_readings(readings, min(min_score, cfg.threshold))
        if out:
            return out


def _severity(score: float, cfg: AnomalyConfig) -> str:
    return "critical" if score >= cfg.critical else "warning"


def anomaly_event(sc: MetricScore, cfg: AnomalyConfig) -> Event:
    """The `anomaly` event of one detection, with the evidence in `data`."""
    if not isinstance(sc, AnomalyScore):  # a score from elsewhere carries no evidence
        return make_event(
            "anomaly", sc.sensor_id, sc.ts, _severity(sc.score, cfg),
            f"{sc.sensor_id} {sc.metric}={sc.value:.6g} (score {sc.score:.3f})",
            {"metric": sc.metric, "value": sc.value, "score": sc.score, "threshold": cfg.threshold},
            sc.metric,
        )
    lo, hi = sc.expected - 3.0 * sc.band, sc.expected + 3.0 * sc.band
    if isinstance(sc, SensorScore):
        return make_event(
            "anomaly", sc.sensor_id, sc.ts, _severity(sc.score, cfg),
            f"{sc.sensor_id}: sensor-level anomaly (score {sc.score:.3f}), most surprising {sc.channel}; "
            f"{sc.top}={sc.value:.6g}, expected {lo:.6g}..{hi:.6g}",
            {
                "metric": sc.metric, "channel": sc.channel, "top_metric": sc.top, "score": sc.score,
                "threshold": cfg.threshold,
                "metric_scores": dict(sc.metric_scores),
                # the most surprising single metric's evidence
                "value": sc.value, "expected": sc.expected, "band_low": lo, "band_high": hi, "scale": sc.band,
                "readings": sc.readings,
            },
            sc.metric,
        )
    return make_event(
        "anomaly",
        sc.sensor_id,
        sc.ts,
        _severity(sc.score, cfg),
        f"{sc.sensor_id} {sc.metric}={sc.value:.6g}, expected {lo:.6g}..{hi:.6g} (score {sc.score:.3f})",
        {
            "metric": sc.metric,
            "value": sc.value,
            "score": sc.score,
            "threshold": cfg.threshold,
            "expected": sc.expected,
            "band_low": lo,
            "band_high": hi,
            "scale": sc.band,
            "surprise": sc.surprise,
            "surprise_mean": sc.surprise_mean,
            "surprise_std": sc.surprise_std,
            "readings": sc.readings,
        },
        sc.metric,
    )


@csp.node(memoize=False)
def anomaly_events(scores: ts[list[MetricScore]], cfg: AnomalyConfig) -> ts[list[Event]]:
    """`anomaly` events for the scores at or above cfg.threshold (a fused sensor's own metric scores raise none)."""
    if csp.ticked(scores):
        out = [anomaly_event(sc, cfg) for sc in scores if sc.score >= cfg.threshold and not isinstance(sc, PartScore)]
        if out:
            return out
