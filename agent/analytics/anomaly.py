"""Streaming anomaly detection per (sensor, metric) and per sensor: the detector and its csp nodes.

One keyed node (no per-key csp.dynamic) holds the per-(sensor, metric) states
of the whole fleet as rows of numpy arrays (~1 KB a series), O(1) each: a batch
of readings is judged by a few dozen array operations over all its metrics at
once, in waves with no sensor twice, so it scores exactly as the readings would
one by one; the sensor-level fusion below is plain Python per reading. The score
of a reading, in [0, 1], is built in four steps:

1. two robust forecasts, each with its own robust scale (EWMA of clipped
   absolute residuals): the recent level with a slow (Holt) trend, and a daily
   profile learnt online in time-of-day buckets (or a weekly one, `season_days = 7`,
   for machines whose weekends differ from their weekdays), on the site's clock
   (`timezone`: a rhythm set by people moves with daylight saving time). The profile is used once its recent error is below the
   level's, so daily cycles are expected, while trends and series without a
   daily rhythm fall back on the level. A bucket sees a few readings a day: from a
   coarse sensor (integer counts, a 1-degree converter) they are mostly identical,
   so its band is never taken as narrower than the data's resolution (the smallest
   change between consecutive readings seen), or one step would look like a hundred.
   After a silence (readings further apart than their usual interval, a robust
   mean of the intervals seen) the level forecast looks that many readings ahead,
   as a local level does: its band widens by the square root of their number and
   the level moves as far as they would have moved it, so a sensor back from an
   outage is judged by how far it could have moved meanwhile;
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
  noise widths over a minute (a closing valve); the slow reference does not.
  A deviation beyond `change_hold` RMS does not teach that RMS until it is back
  within 2: otherwise a fault inflates the norm, and its return to normal and
  the next fault are judged against it. On hold, a channel raises at most one
  alarm (a fault that lasts is one event, not one per refractory period);
- per metric, a spike: one reading `spike_z` reference spreads or more from
  where the metric has been (its smoothed level; a spread at least one step of
  the sensor), while that level is within two spreads of the slow reference,
  scores 1.0; the change channel's smoothing hides such a reading, and a fault
  already under way (an excursion beyond two spreads) is the change channel's
  to judge. A spike of a metric that none of the
  sensor's alarms since its refractory period began was about is a finding
  of its own and alarms inside that period too (a spike of one of those
  metrics is an echo of its fault): at most one alarm per metric a period;
- per metric, the operating regimes it is known to run at: a level its
  change channel has settled at after being away, `regime_visits` separate
  times (up to REGIME_SLOTS levels). While its smoothed reading is near one
  of them, its change channel and spikes are silent, so a compressor that
  cycles stops alarming at every switch once it has cycled a few times; a
  fault settles at a level once or twice, and stays a change;
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
change threshold and hold, the refractory period, `spike_z`) were made by
leave-one-file-out cross-validation on SKAB (bench/skab.py). A single metric per
reading is scored as above, without any of this.

Out-of-order readings (older than the last one of their key) are scored
against the current model but teach it nothing: feeding the past into EWMAs
would corrupt them. Readings that are not finite, or beyond +-1e30, get no score.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import csp
import numpy as np
from csp import ts
from edgewatch.agent.analytics.snapshot import keep, persisted, state_name
from edgewatch.agent.analytics.states import SeriesStates
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
_EPOCH = datetime(1970, 1, 1)  # readings' times enter the table as float microseconds since then (exact to 2**53)
_US = timedelta(microseconds=1)
_UNSEEN = float("inf")  # the daily profile's error before its first prediction
SPATIAL_MIN_SCORE = 0.3  # a new extreme must also be mildly surprising: a young range is narrow
INTERVAL_CLIP = 4.0  # an interval counts at most this many usual ones in their mean: an outage barely moves it
MINUTES_A_DAY = 1440
ZONE_CACHE = 100_000  # UTC hours whose offset zone_offsets remembers (11 years)
SPATIAL = 1000.0  # the unclipped verdict of a "spatial anomaly" (and of a tail below float range): beyond any floor
PAIR_CLIP = 10.0  # residuals (in scale units) beyond this are clipped before they enter a correlation channel
PAIR_SCALE_FLOOR = 0.1  # a pair's error scale, in the metrics' own scale units, is never taken as below this: a
# relation tighter than a tenth of the metrics' noise (or a metric that barely moves, like a battery) is no signal
SMALL_WAVE = 48  # metric values: a wave with fewer is judged value by value (judge_values), more at once (judge)
FUSED = "*"  # the metric name of a multi-metric sensor's sensor-level score
CHANGE_BLOCK = 30  # readings per block of a change channel's slow reference
CHANGE_CLIP = 10.0  # a deviation from the slow reference counts at most this many reference spreads
CHANGE_WARMUP = 30  # deviations learnt before a change channel judges one
CHANGE_NORM_CLIP2 = 5.0**2  # a deviation's square teaches its mean square at most this many times that mean square
CHANGE_RELEASE2 = 2.0**2  # a change channel's norm on hold (`change_hold`) learns again once the deviation is within 2 RMS
HOLD_FREE, HOLD_ON, HOLD_ALARMED = 0.0, 1.0, 2.0  # a change channel's hold: off; on; on, and its alarm raised
SPIKE_FROM = 2.0  # a spike (`spike_z`) is judged while a metric's smoothed level is within 2 reference spreads of
# its reference (not inside an excursion), as the reading's distance from that smoothed level
REGIME_SLOTS = 4  # levels a change channel remembers (`regime_visits`): a machine's operating regimes
REGIME_MATCH = 1.0  # a settled block's mean within this many reference spreads of a remembered level is that level
REGIME_RATE = 0.1  # how far a remembered level moves toward each settled block's mean that matches it
REGIME_NEAR = 2.0  # readings (smoothed) within this many reference spreads of a known regime are not a change
REGIME_AWAY2 = 5.0**2  # a deviation beyond 5 RMS (a move, not noise) ends a visit: the next settled level is a new one
_LN2 = math.log(2.0)
_SQRT2 = math.sqrt(2.0)


def ewma_alpha(span: float) -> float:
    """EWMA weight of a span in readings (a span below 1 means "no memory")."""
    return 2.0 / (max(span, 1.0) + 1.0)


def zone_offsets(name: str) -> Callable[[int], int]:
    """UTC hour -> the minutes time zone `name` is ahead of UTC then; each hour is looked up once (an offset
    changes a few times a year at most), in a bounded cache."""
    zone = ZoneInfo(name)

    def offset(hour: int) -> int:
        return int(datetime.fromtimestamp(hour * 3600, zone).utcoffset().total_seconds()) // 60

    return functools.lru_cache(maxsize=ZONE_CACHE)(offset)


class Params:
    """The detector's constants, derived once from AnomalyConfig (attribute reads are cheap)."""

    __slots__ = (
        "a_level", "a_trend", "a_dev", "a_season", "a_short", "a_long", "clip", "warmup", "refractory",
        "rel_floor", "buckets", "period", "zone", "season_min", "log_floor", "threshold", "spatial", "spatial_z",
        "inv_log_floor", "fuse", "fisher", "pairs", "a_pair", "blocks", "a_change", "a_cnorm", "change_log", "spike_z",
        "regime_visits",
        "fuse_metrics", "sensor_refractory", "hold2",
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
        self.period = MINUTES_A_DAY * max(cfg.season_days, 1)  # the profile's period, in minutes
        self.zone = None if cfg.timezone == "UTC" else zone_offsets(cfg.timezone)
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
        self.hold2 = cfg.change_hold**2 if cfg.change_hold > 0.0 else math.inf
        self.change_log = math.log(math.erfc(cfg.change_z / _SQRT2))  # log of change_z's two-sided tail
        self.spike_z = cfg.spike_z
        self.regime_visits = cfg.regime_visits


# a (sensor, metric)'s row in MetricTable.m: everything the detector remembers about it besides its daily profile
N, LAST, LEVEL, TREND, DEV, MAG, SHORT, LMEAN, LVAR, COOL, SERR, LO, HI, CH, PREV, RES, STEP = range(17)
FIELDS = 17  # CH: the row of its change channel in MetricTable.cm (-1: none yet); PREV: the last value learnt;
# RES: the data's resolution, the smallest nonzero change between consecutive values learnt (0: none yet);
# STEP: the usual time between its readings, in microseconds (a robust mean; 0: none yet)
# a change channel's row in MetricTable.cm (the sensor-level score, several metrics only): blocks completed, the
# block being filled (count, sum, sum of squares), totals over the ring's completed blocks, the pivot (sums are of
# x - pivot: no cancellation for a large mean with a small spread), the EWMA deviation, its mean square and count,
# its hold (HOLD_*: while on, the mean square does not learn; once it has alarmed, the channel is not judged);
# the EWMA distance from the nearest known regime (in reference spreads, at most CHANGE_CLIP), the slot of the
# level being visited (-1: away), REGIME_SLOTS remembered levels (absolute) and their visits (0: slot unused);
# then the ring, per block: sum, sum of squares
C_FULL, C_BN, C_BS, C_BS2, C_S, C_S2, C_PIVOT, C_DEV, C_MS, C_N, C_HOLD, C_KD, C_AT = range(13)
C_LV = 13
C_VS = C_LV + REGIME_SLOTS
C_RING = C_VS + REGIME_SLOTS


class SensorIndex(SeriesStates):
    """sensor -> its SensorState (which holds its series' rows by metric), least recently used first, capped
    by the number of series (`max_series`, the cap of sensors too unless given): past the cap the longest-silent
    sensors are forgotten whole (the sensor being added to, if it is the last one, loses its oldest series).
    Forgotten rows are held in `released` until the batch is done (an earlier reading of that batch may still use
    them)."""

    def __init__(self, cap: int, state: str, max_series: int | None = None):
        super().__init__(cap, state, cap if max_series is None else max_series)
        self.released: list[int] = []

    @staticmethod
    def held(sen: SensorState) -> int:
        return len(sen.rows)

    def tracked(self) -> int:
        return self.series

    def forgot(self, sen: SensorState) -> None:
        super().forgot(sen)
        self.released += sen.rows.values()

    def added(self, sen: SensorState, current: dict) -> None:
        """One more series of `sen` (the most recent sensor, reading the metrics `current`; its row already in
        `sen.rows`): when it is the last sensor left to forget, its oldest series not in this reading gives way
        (a sensor that invents metric names keeps the ones it always sends)."""
        if not self.room(sen):
            rows = sen.rows
            name = next((n for n in rows if n not in current), None) or next(iter(rows))
            self.released.append(rows.pop(name))
            self._evicted()


@persisted
class MetricTable:
    """The per-(sensor, metric) states of a whole fleet as rows of arrays, so a batch of readings is judged
    by a few dozen numpy operations instead of a Python loop per metric: `m` (FIELDS float64 a row), the
    daily profile (`season`: per bucket its mean and mean |residual|, float32; `seen`: updates per bucket,
    saturating at 255) and, for a metric of a multi-metric sensor, its change channel (`cm`, rows handed out
    on first use)."""

    __slots__ = ("index", "m", "season", "seen", "free", "used", "cm", "cfree", "cused")
    COLUMNS = (FIELDS, C_RING)  # the widths of a row of `m` and of a change channel's fixed part (snapshot layout)

    def __init__(self, cap: int, p: Params, state: str = "anomaly", rows: int = 1024):
        self.index = SensorIndex(cap, state)
        self.m = np.zeros((rows, FIELDS))
        self.season = np.zeros((rows, 2 * p.buckets), np.float32)
        self.seen = np.zeros((rows, p.buckets), np.uint8)
        self.free: list[int] = []  # rows of forgotten series, reused before new ones
        self.used = 0  # rows handed out so far
        self.cm = np.zeros((rows, C_RING + 2 * p.blocks))
        self.cfree: list[int] = []
        self.cused = 0

    def __len__(self) -> int:
        return self.index.series

    def add(self, sen: SensorState, name: str, x: float, t: float, current: dict) -> None:
        """A row for a new series of `sen`, started at its first reading (of the metrics `current`): level x,
        nothing learnt yet."""
        if self.free:
            k = self.free.pop()
        else:
            k = self.used
            self.used += 1
            if k == len(self.m):  # full: half as many rows again (memory per series stays within ~1.5 x)
                self.m, self.season, self.seen = (_grown(a) for a in (self.m, self.season, self.seen))
        self.m[k] = (1.0, t, x, 0.0, 0.0, abs(x), 0.0, 0.0, 0.0, 0.0, _UNSEEN, x, x, -1.0, x, 0.0, 0.0)
        self.season[k] = 0.0
        self.seen[k] = 0
        sen.rows[name] = k
        self.index.added(sen, current)

    def change_rows(self, x: np.ndarray) -> list[int]:
        """New change channels, one per value of `x`, each with its pivot there and nothing learnt."""
        out = []
        for _ in range(len(x)):
            if self.cfree:
                out.append(self.cfree.pop())
                continue
            if self.cused == len(self.cm):
                self.cm = _grown(self.cm)
            out.append(self.cused)
            self.cused += 1
        self.cm[out] = 0.0
        self.cm[out, C_PIVOT] = x
        self.cm[out, C_KD] = CHANGE_CLIP
        self.cm[out, C_AT] = -1.0
        return out

    def alarmed(self, c: int) -> None:
        """The change channel `c` raised its sensor's alarm: if it is on hold, it is not judged again until the
        hold ends, so a lasting fault raises one alarm from it once its deviation is clearly a fault (and at
        most one before), not one per refractory period."""
        if self.cm[c, C_HOLD] == HOLD_ON:
            self.cm[c, C_HOLD] = HOLD_ALARMED

    def settle(self) -> None:
        """After a batch: the rows it forgot, and their change channels, can be reused."""
        released = self.index.released
        if released:
            self.free += released
            self.cfree += [int(c) for c in self.m[released, CH] if c >= 0.0]
            released.clear()


def _grown(a: np.ndarray) -> np.ndarray:
    """`a` with half as many rows again, zeros."""
    return np.concatenate([a, np.zeros((len(a) // 2 + 1, *a.shape[1:]), a.dtype)])


class Verdicts:
    """The verdicts on one wave of readings (no series twice), and what the rest of the scoring needs of
    them, as Python lists (element reads from numpy are slow): `u` -log(tail) / -log(tail_floor) per value,
    NOT clipped to 1 (the sensor-level fusion needs the tail beyond the floor); whether each value taught
    its series (`learned`: in time order), its refractory count (`cool`, written back after the wave), the
    signed level residual in scale units (`sgn`), whether its series moves above its scale floor
    (`moving`), and for the metrics of multi-metric readings learnt whole, the change channel's deviation in
    units of its long-run RMS (`change`, 0 while young) and the value's own distance from the slow reference in
    reference spreads (`jump`: a single reading's, unsmoothed); whether each value follows a silence longer than a
    change channel's block (`apart`: its change channel starts again, and the sensor-level score counts the
    metrics' own verdicts); `block` holds the rows as learnt (written back after the wave)."""

    __slots__ = ("at", "block", "u", "learned", "cool", "sgn", "moving", "change", "jump", "expected", "band", "apart")

    def rebaseline(self, j: int, x: float) -> None:
        """After a detection the level restarts at the reading, without trend: a level shift alarms once."""
        self.block[j, LEVEL] = x
        self.block[j, TREND] = 0.0


class Wave:
    """Readings of one batch with no sensor twice, gathered to be judged at once: per value (a finite metric
    of a series already known) its row, value and metric name; per reading its time in microseconds since
    1970 and (sensor, time, first value, end of its values, its new series' first values or None, its
    SensorState)."""

    __slots__ = ("rows", "xs", "names", "times", "readings", "sensors")

    def __init__(self):
        self.rows: list[int] = []
        self.xs: list[float] = []
        self.names: list[str] = []
        self.times: list[int] = []
        self.readings: list[tuple] = []
        self.sensors: set[str] = set()


def judge(tab: MetricTable, w: Wave, p: Params) -> Verdicts:
    """The metrics' own verdicts on one wave: each value against its series' two forecasts (the recent
    level with its Holt trend; the same time of day on earlier days, trusted once it has been the better
    forecast), its surprise z / (z + 3), the likelihood of the recent mean surprise, and range breaks;
    learning from the values in time order (out-of-order ones are judged but teach nothing: their rows are
    put back as they were)."""
    idx = np.array(w.rows, np.intp)
    xs = np.array(w.xs)
    starts = np.array([r[2] for r in w.readings], np.intp)
    counts = np.diff(np.append(starts, len(w.rows)))
    t_us = np.repeat(np.array(w.times, np.int64), counts)
    minute = t_us // 60_000_000
    if p.zone is not None:  # on the site's clock: the offset of each UTC hour in the wave
        hours, at = np.unique(t_us // 3_600_000_000, return_inverse=True)
        minute = minute + np.array([p.zone(int(h)) for h in hours], np.int64)[at]
    bucket = (minute % p.period) * p.buckets // p.period  # the minute of the day (or week)
    ts_ = t_us.astype(np.float64)
    old = tab.m[idx]
    n0, last, level, trend, dev, mag, short0, lmean, lvar, cool, serr, lo, hi, ch, prev, res, usual = old.T
    learn = ts_ >= last
    n = n0 + learn
    floor = p.rel_floor * mag + 1e-9
    # expert 1: the recent level and its slow trend (Holt), `steps` usual intervals ahead
    dt = ts_ - last
    steps = np.divide(dt, usual, out=np.ones_like(dt), where=(usual > 0.0) & (dt > usual))
    widen = np.sqrt(steps)
    scale = np.maximum(dev, floor)
    fc = level + steps * trend
    r = xs - fc
    wide = scale * widen
    z = np.abs(r) / wide
    # expert 2: the same time of day on earlier days, trusted once it has been the better forecast
    width = tab.season.shape[1]
    at = idx * width + 2 * bucket  # the buckets' means in the flat profile; their errors follow
    profile = tab.season.reshape(-1)
    sm = profile[at].astype(np.float64)
    se = profile[at + 1].astype(np.float64)
    at_seen = idx * (width // 2) + bucket
    seen = tab.seen.reshape(-1)[at_seen].astype(np.intp)
    trusted = seen >= p.season_min
    rb = xs - sm
    ab = np.abs(rb)
    bs = np.maximum(se, np.maximum(floor, res))  # a bucket of identical readings is no more precise than the data
    better = trusted & (serr < scale)
    z = np.where(better, ab / bs, z)
    lb = p.clip * bs
    raw = np.where(z < 1e12, z / (z + 3.0), 1.0)
    short = short0 + p.a_short * (raw - short0)
    d = short - lmean
    # learning, as if every value were in time order (the rows of those that are not are put back below)
    new = np.empty((FIELDS, len(idx)))
    new[N] = n
    new[LAST] = ts_
    with np.errstate(invalid="ignore", divide="ignore"):  # masked lanes: inf - inf, 1 / 0
        abc = np.minimum(ab, lb)
        new[SERR] = np.where(trusted, np.where(serr == _UNSEEN, abc, serr + p.a_dev * (abc - serr)), serr)
        # young statistics are plain means (1/n) until the EWMA weight takes over: no start-up bias
        inv_n = 1.0 / n
        a = np.maximum(p.a_long, inv_n)
        new[SHORT] = short
        new[LMEAN] = lmean + a * d
        new[LVAR] = (1.0 - a) * (lvar + a * d * d)
        # robust learning: residuals are clipped so one spike barely moves the model
        lim = p.clip * wide
        c = np.clip(r, -lim, lim)
        gain = np.full(len(idx), p.a_level)  # after a gap the level moves as far as `steps` readings would have
        if (gapped := steps > 1.0).any():  # math's pow, as judge_values: the same bits
            gain[gapped] = [1.0 - (1.0 - p.a_level) ** k for k in steps[gapped].tolist()]
        nl = fc + gain * c
        # while it re-learns after a detection the level's moves are no trend
        new[TREND] = np.where(cool == 0.0, trend + p.a_trend * ((nl - level) / steps - trend), trend)
        new[LEVEL] = nl
        a = np.maximum(p.a_dev, inv_n)
        new[DEV] = dev + a * (np.abs(c) / widen - dev)
        new[MAG] = mag + a * (np.abs(xs) - mag)
        # the usual interval: a mean of the intervals so far (1 / its count) until the EWMA takes over, a gap
        # counting at most INTERVAL_CLIP intervals
        a = np.maximum(p.a_dev, 1.0 / np.maximum(n - 1.0, 1.0))
        new[STEP] = np.where(dt > 0.0, np.where(usual > 0.0, usual + a * (np.minimum(dt, INTERVAL_CLIP * usual) - usual),
                                                dt), usual)
        new[COOL] = cool
        new[CH] = ch
        new[HI] = np.maximum(hi, xs)
        new[LO] = np.minimum(lo, xs)
        new[PREV] = xs
        step = np.abs(xs - prev)
        new[RES] = np.where((step > 0.0) & ((res == 0.0) | (step < res)), step, res)
        # the profile's bucket learns (robustly once trusted); its first reading is its mean, with no residual
        k = np.minimum(seen + 1, 255)
        rc = np.where(k > p.season_min, np.clip(rb, -lb, lb), rb)
        a = np.where(k * p.a_season < 1.0, 1.0 / k, p.a_season)  # plain means until the EWMA takes over
        first = k == 1
        new_sm = np.where(first, xs, sm + a * rc)
        a = np.where((k - 1) * p.a_season < 1.0, 1.0 / (k - 1), p.a_season)  # k - 1 residuals so far
        new_se = np.where(first, se, se + a * (np.abs(rc) - se))
    block = new.T
    if learn.all():
        profile[at] = new_sm
        profile[at + 1] = new_se
        tab.seen.reshape(-1)[at_seen] = k
    else:
        stale = ~learn
        block[stale] = old[stale]
        profile[at[learn]] = new_sm[learn]
        profile[at[learn] + 1] = new_se[learn]
        tab.seen.reshape(-1)[at_seen[learn]] = k[learn]
    # how improbable the recent surprise is under its long-run distribution, on a log scale
    judged = (n > p.warmup) & (d > 0.0)  # a perfectly quiet history must still let a spike through: var floor
    q = (d[judged] / np.sqrt(2.0 * np.maximum(lvar[judged], SURPRISE_VAR_FLOOR))).tolist()
    lf = p.log_floor
    u = np.zeros(len(idx))
    u[judged] = [_log_tail(v, lf) for v in q]
    # well beyond anything seen before (and surprising): HTM's "spatial anomaly"
    m = p.spatial * (hi - lo)
    spatial = learn & judged & (m > 0.0) & (u >= SPATIAL_MIN_SCORE) & (z >= p.spatial_z) & ((xs > hi + m) | (xs < lo - m))
    if spatial.any():
        u[spatial] = SPATIAL
    v = Verdicts()
    v.at, v.block = idx, block
    apart = steps > CHANGE_BLOCK
    v.u, v.learned, v.cool, v.apart = u.tolist(), learn.tolist(), cool.tolist(), apart.tolist()
    v.change = v.jump = None
    if p.blocks and p.fuse:
        v.change, v.jump = deviations(tab, starts, counts, block, learn, xs, apart, p)
    if p.pairs:
        u_ = r / wide
        v.sgn, v.moving = np.clip(u_, -PAIR_CLIP, PAIR_CLIP).tolist(), (dev > floor).tolist()
    v.expected, v.band = np.where(better, sm, fc), np.where(better, bs, wide)
    return v


def judge_values(tab: MetricTable, w: Wave, p: Params) -> Verdicts:
    """judge() and deviations() for a small wave, value by value in plain floats: the same arithmetic in the
    same order, so the same bits (tests/agent/test_anomaly.py checks), without numpy's ~1 µs a call, which a
    wave of a few readings cannot amortise (a batch of one reading costs ~0.27 ms through judge())."""
    rows = tab.m[w.rows].tolist()
    season, seen = tab.season, tab.seen
    us, learned, cool, expected, band, sgn, moving, apart = [], [], [], [], [], [], [], []
    change = [0.0] * len(rows) if p.blocks and p.fuse else None
    jump = [0.0] * len(rows) if change is not None else None
    judged: list[int] = []  # the values of multi-metric readings learnt whole: their change channels learn
    for (_, _, start, end, _, _), t in zip(w.readings, w.times):
        tf = float(t)
        minute = t // 60_000_000 if p.zone is None else t // 60_000_000 + p.zone(t // 3_600_000_000)
        b = minute % p.period * p.buckets // p.period
        whole = True
        for j in range(start, end):
            k, x, r = w.rows[j], w.xs[j], rows[j]
            dt = tf - r[LAST]
            usual = r[STEP]
            learn = dt >= 0.0
            if learn:
                r[LAST] = tf
                r[N] += 1.0
            else:
                whole = False
            n = r[N]
            floor = p.rel_floor * r[MAG] + 1e-9
            dev = r[DEV]
            scale = dev if dev > floor else floor
            steps = dt / usual if usual > 0.0 and dt > usual else 1.0
            widen = math.sqrt(steps)
            wide = scale * widen
            fc = r[LEVEL] + steps * r[TREND]
            res = x - fc
            z = (res if res >= 0.0 else -res) / wide
            ex, bd = fc, wide
            apart.append(steps > CHANGE_BLOCK)
            kb = seen.item(k, b)
            bfloor = floor if floor > r[RES] else r[RES]
            if kb >= p.season_min:
                sm = season.item(k, 2 * b)
                rb = x - sm
                ab = rb if rb >= 0.0 else -rb
                bs = season.item(k, 2 * b + 1)
                bs = bs if bs > bfloor else bfloor
                if r[SERR] < scale:
                    z, ex, bd = ab / bs, sm, bs
                if learn:
                    lb = p.clip * bs
                    ab = ab if ab < lb else lb
                    r[SERR] = ab if r[SERR] == _UNSEEN else r[SERR] + p.a_dev * (ab - r[SERR])
            expected.append(ex)
            band.append(bd)
            if p.pairs:
                v = res / wide
                sgn.append(v if -PAIR_CLIP < v < PAIR_CLIP else (PAIR_CLIP if v > 0.0 else -PAIR_CLIP))
                moving.append(dev > floor)
            learned.append(learn)
            cool.append(r[COOL])
            raw = z / (z + 3.0) if z < 1e12 else 1.0
            short = r[SHORT] + p.a_short * (raw - r[SHORT])
            d = short - r[LMEAN]
            var = r[LVAR]
            if not learn:
                us.append(0.0 if n <= p.warmup else _verdict(d, var, p))
                continue
            inv_n = 1.0 / n
            a = p.a_long if p.a_long > inv_n else inv_n
            r[SHORT] = short
            r[LMEAN] += a * d
            r[LVAR] = (1.0 - a) * (var + a * d * d)
            lim = p.clip * wide
            c = lim if res > lim else (-lim if res < -lim else res)
            nl = fc + (1.0 - (1.0 - p.a_level) ** steps if steps > 1.0 else p.a_level) * c
            if r[COOL] == 0.0:
                r[TREND] += p.a_trend * ((nl - r[LEVEL]) / steps - r[TREND])
            r[LEVEL] = nl
            a = p.a_dev if p.a_dev > inv_n else inv_n
            r[DEV] = dev + a * ((c if c >= 0.0 else -c) / widen - dev)
            r[MAG] += a * ((x if x >= 0.0 else -x) - r[MAG])
            if dt > 0.0:
                if usual > 0.0:
                    a = 1.0 / (n - 1.0) if n - 1.0 > 1.0 else 1.0
                    a = p.a_dev if p.a_dev > a else a
                    lim = INTERVAL_CLIP * usual
                    r[STEP] = usual + a * ((dt if dt < lim else lim) - usual)
                else:
                    r[STEP] = dt
            kb = kb + 1 if kb < 255 else kb
            seen[k, b] = kb
            if kb == 1:
                season[k, 2 * b] = x
            else:
                sm = season.item(k, 2 * b)
                se = season.item(k, 2 * b + 1)
                rb = x - sm
                if kb > p.season_min:
                    lb = p.clip * (se if se > bfloor else bfloor)
                    rb = lb if rb > lb else (-lb if rb < -lb else rb)
                a = 1.0 / kb if kb * p.a_season < 1.0 else p.a_season
                season[k, 2 * b] = sm + a * rb
                a = 1.0 / (kb - 1) if (kb - 1) * p.a_season < 1.0 else p.a_season
                season[k, 2 * b + 1] = se + a * ((rb if rb >= 0.0 else -rb) - se)
            step = x - r[PREV]
            step = step if step >= 0.0 else -step
            if step > 0.0 and (r[RES] == 0.0 or step < r[RES]):
                r[RES] = step
            r[PREV] = x
            hi, lo = r[HI], r[LO]
            if x > hi:
                r[HI] = x
            if x < lo:
                r[LO] = x
            if n <= p.warmup:
                us.append(0.0)
                continue
            u = _verdict(d, var, p)
            m = p.spatial * (hi - lo)
            if m > 0.0 and u >= SPATIAL_MIN_SCORE and z >= p.spatial_z and (x > hi + m or x < lo - m):
                u = SPATIAL
            us.append(u)
        if change is not None and whole and end - start > 1:
            judged.extend(range(start, end))
    if judged:  # the change channels, their rows read and written once for the wave
        new = [j for j in judged if rows[j][CH] < 0.0]
        for j, c in zip(new, tab.change_rows([w.xs[j] for j in new])):
            rows[j][CH] = float(c)
        at = [int(rows[j][CH]) for j in judged]
        channels = tab.cm[at].tolist()
        for j, c in zip(judged, channels):
            r = rows[j]
            change[j], jump[j] = _deviation(c, w.xs[j], p.rel_floor * r[MAG] + 1e-9, r[RES], apart[j], p)
        tab.cm[at] = channels
    v = Verdicts()
    v.at, v.block = np.array(w.rows, np.intp), np.array(rows)
    v.u, v.learned, v.cool, v.change, v.jump = us, learned, cool, change, jump
    v.expected, v.band, v.apart = expected, band, apart
    if p.pairs:
        v.sgn, v.moving = sgn, moving
    return v


def _deviation(c: list, x: float, floor: float, res: float, apart: bool, p: Params) -> tuple[float, float]:
    """deviations() for one value, its change channel's row (as a list) `c` updated in place."""
    if apart:
        c[C_FULL] = c[C_BN] = c[C_BS] = c[C_BS2] = c[C_S] = c[C_S2] = c[C_DEV] = 0.0
        c[C_PIVOT] = x
        c[C_HOLD] = HOLD_FREE
        c[C_AT] = -1.0
    xa = x
    x -= c[C_PIVOT]
    out = jump = 0.0
    settled = False
    full = c[C_FULL]
    k = full if full < p.blocks else p.blocks
    if k >= 2:
        cnt = k * CHANGE_BLOCK
        mu = c[C_S] / cnt
        var = c[C_S2] / cnt - mu * mu
        sd = math.sqrt(var) if var > 0.0 else 0.0
        wide = sd if sd > floor else floor
        z = (x - mu) / wide
        z = z if -CHANGE_CLIP < z < CHANGE_CLIP else (CHANGE_CLIP if z > 0.0 else -CHANGE_CLIP)
        before = c[C_DEV]
        dev = c[C_DEV] = before + p.a_change * (z - before)
        n = c[C_N] = c[C_N] + 1.0
        e2 = dev * dev
        if n > CHANGE_WARMUP:
            if -SPIKE_FROM < before < SPIKE_FROM:  # a jump from where the metric has been, unless in an excursion
                lv = mu + before * wide  # its smoothed level
                jump = (x - lv if x >= lv else lv - x) / (wide if wide > res else res)  # a spread: a step at least
            ms = c[C_MS]
            hold = c[C_HOLD]
            out = (dev if dev >= 0.0 else -dev) / math.sqrt(ms) if ms > 1e-12 and hold != HOLD_ALARMED else 0.0
            if e2 > p.hold2 * ms:
                c[C_HOLD] = HOLD_ON if hold == HOLD_FREE else hold
            elif e2 < CHANGE_RELEASE2 * ms:
                c[C_HOLD] = HOLD_FREE
            if e2 > REGIME_AWAY2 * ms:
                c[C_AT] = -1.0
            if e2 > CHANGE_NORM_CLIP2 * ms:
                e2 = CHANGE_NORM_CLIP2 * ms
        if c[C_HOLD] == HOLD_FREE:
            a = p.a_cnorm if p.a_cnorm * n > 1.0 else 1.0 / n
            c[C_MS] += a * (e2 - c[C_MS])
        if p.regime_visits:  # near a known operating regime: a return to it, not a change
            near = CHANGE_CLIP
            for j in range(C_LV, C_VS):
                if c[j + REGIME_SLOTS] >= p.regime_visits:
                    d = (xa - c[j] if xa >= c[j] else c[j] - xa) / wide
                    near = d if d < near else near
            kd = c[C_KD] = c[C_KD] + p.a_change * (near - c[C_KD])
            if kd < REGIME_NEAR:
                out = 0.0
            if near < REGIME_NEAR:
                jump = 0.0
            settled = n > CHANGE_WARMUP and dev * dev < c[C_MS]
    c[C_BN] += 1.0
    c[C_BS] += x
    c[C_BS2] += x * x
    if c[C_BN] == CHANGE_BLOCK:
        i = C_RING + 2 * int(full % p.blocks)
        if full >= p.blocks:
            c[C_S] = c[C_S] - c[i] + c[C_BS]
            c[C_S2] = c[C_S2] - c[i + 1] + c[C_BS2]
        else:
            c[C_S] += c[C_BS]
            c[C_S2] += c[C_BS2]
        c[i], c[i + 1] = c[C_BS], c[C_BS2]
        c[C_FULL] = full + 1.0
        if settled:
            _settle(c, c[C_PIVOT] + c[C_BS] / CHANGE_BLOCK, wide)
        c[C_BN] = c[C_BS] = c[C_BS2] = 0.0
    return out, jump


def _settle(c: list, level: float, wide: float) -> None:
    """A block's mean while the channel was settled (within 1 RMS of its reference): the level it matches among
    the remembered ones moves toward it, or it replaces the least visited; a visit counts once per return."""
    best, bd = -1, REGIME_MATCH
    for k in range(REGIME_SLOTS):
        if c[C_VS + k] > 0.0:
            d = (level - c[C_LV + k] if level >= c[C_LV + k] else c[C_LV + k] - level) / wide
            if d < bd:
                best, bd = k, d
    if best < 0:
        best = min(range(REGIME_SLOTS), key=lambda k: c[C_VS + k])  # the least visited (the first of equals)
        c[C_LV + best], c[C_VS + best] = level, 0.0
    else:
        c[C_LV + best] += REGIME_RATE * (level - c[C_LV + best])
    if c[C_AT] != best:
        c[C_VS + best] += 1.0
        c[C_AT] = float(best)


def deviations(tab: MetricTable, starts: np.ndarray, counts: np.ndarray, block: np.ndarray, learn: np.ndarray,
               xs: np.ndarray, apart: np.ndarray, p: Params) -> tuple[list, list]:
    """The change channels of the sensor-level score, for the metrics of the wave's multi-metric readings whose
    every metric is in time order: how far each metric has moved from a slow reference (the mean and spread of
    its last `change_window` readings, kept as a ring of block sums), as an EWMA of that deviation in reference
    spreads, judged against the deviation's own long-run RMS, so that a metric that always wanders (a fluid
    temperature) needs a larger move than one that holds still. The reference follows a new level only after
    a window, so a sustained shift of a few noise widths, which the fast level forecast absorbs in seconds,
    stays visible here. After a silence longer than a block (`apart`) the reference is stale, so it starts
    again at the reading (the norm stays): a sensor back from an outage is not judged against the level it
    had before. Per value: that deviation in RMS units (0 while young or not judged), and the value's own
    distance from where the metric has been (its smoothed level) in spreads (at least one step of the sensor),
    unsmoothed (`jump`, for `spike_z`; 0 unless that smoothed level was within SPIKE_FROM spreads of the
    reference before). `starts` and `counts`: each
    reading's first value and number of values."""
    some = counts > 0
    whole = np.zeros(len(starts), bool)
    whole[some] = np.logical_and.reduceat(learn, starts[some])  # every metric of the reading in time order
    sel = np.flatnonzero(np.repeat(whole & (counts > 1), counts))
    out = np.zeros(len(xs))
    jump = np.zeros(len(xs))
    if not sel.size:
        return out.tolist(), jump.tolist()
    crow = block[sel, CH]
    new = crow < 0.0
    if new.any():  # a metric's first multi-metric reading in time order starts its channel
        crow[new] = block[sel[new], CH] = tab.change_rows(xs[sel[new]])
    crow = crow.astype(np.intp)
    c = tab.cm[crow]
    if (again := apart[sel]).any():
        c[again, :C_PIVOT] = 0.0
        c[again, C_PIVOT] = xs[sel[again]]
        c[again, C_DEV] = 0.0
        c[again, C_HOLD] = HOLD_FREE
        c[again, C_AT] = -1.0
    full, bn, bs, bs2, s, s2, pivot, dev, ms, n, hold = c[:, :C_KD].T.copy()
    x = xs[sel] - pivot
    floor = p.rel_floor * block[sel, MAG] + 1e-9
    judged = np.minimum(full, p.blocks) >= 2
    with np.errstate(invalid="ignore", divide="ignore"):  # lanes not judged yet: 0 / 0
        cnt = np.minimum(full, p.blocks) * CHANGE_BLOCK
        mu = s / cnt
        var = s2 / cnt - mu * mu
        sd = np.where(var > 0.0, np.sqrt(np.abs(var)), 0.0)
        wide = np.maximum(sd, floor)
        z = np.clip((x - mu) / wide, -CHANGE_CLIP, CHANGE_CLIP)
        dev1 = dev + p.a_change * (z - dev)
        n1 = n + 1.0
        e2 = dev1 * dev1
        warm = n1 > CHANGE_WARMUP
        r = np.where(warm & (ms > 1e-12) & (hold != HOLD_ALARMED), np.abs(dev1) / np.sqrt(ms), 0.0)
        hold = np.where(judged & warm & (e2 > p.hold2 * ms), np.where(hold == HOLD_FREE, HOLD_ON, hold),
                        np.where(judged & warm & (e2 < CHANGE_RELEASE2 * ms), HOLD_FREE, hold))
        c[:, C_AT] = np.where(judged & warm & (e2 > REGIME_AWAY2 * ms), -1.0, c[:, C_AT])
        e2 = np.where(warm & (e2 > CHANGE_NORM_CLIP2 * ms), CHANGE_NORM_CLIP2 * ms, e2)
        a = np.where(p.a_cnorm * n1 > 1.0, p.a_cnorm, 1.0 / n1)
        c[:, C_MS] = np.where(judged & (hold == HOLD_FREE), ms + a * (e2 - ms), ms)
        c[:, C_HOLD] = hold
    c[:, C_DEV] = np.where(judged, dev1, dev)
    c[:, C_N] = np.where(judged, n1, n)
    lv = mu + dev * wide  # where each metric has been: its smoothed level
    jump1 = np.where(judged & warm & (np.abs(dev) < SPIKE_FROM), np.abs(x - lv) / np.maximum(wide, block[sel, RES]),
                     0.0)
    settled = None
    if p.regime_visits:  # near a known operating regime: a return to it, not a change
        known = c[:, C_VS:C_RING] >= p.regime_visits
        with np.errstate(invalid="ignore"):
            near = np.minimum(np.where(known, np.abs(xs[sel, None] - c[:, C_LV:C_VS]) / wide[:, None], CHANGE_CLIP)
                              .min(axis=1), CHANGE_CLIP)
        kd = c[:, C_KD] + p.a_change * (near - c[:, C_KD])
        c[:, C_KD] = np.where(judged, kd, c[:, C_KD])
        r = np.where(kd < REGIME_NEAR, 0.0, r)
        jump1 = np.where(near < REGIME_NEAR, 0.0, jump1)
        settled = judged & warm & (dev1 * dev1 < c[:, C_MS])
    out[sel] = np.where(judged, r, 0.0)
    jump[sel] = jump1
    bn += 1.0
    bs += x
    bs2 += x * x
    done = np.flatnonzero(bn == CHANGE_BLOCK)
    if done.size:  # a block is complete: it replaces the oldest in the ring
        at = C_RING + 2 * (full[done] % p.blocks).astype(np.intp)
        wrap = full[done] >= p.blocks
        s[done] = np.where(wrap, s[done] - c[done, at], s[done]) + bs[done]
        s2[done] = np.where(wrap, s2[done] - c[done, at + 1], s2[done]) + bs2[done]
        c[done, at] = bs[done]
        c[done, at + 1] = bs2[done]
        full[done] += 1.0
        if settled is not None and (d := done[settled[done]]).size:
            _settle_all(c, d, pivot[d] + bs[d] / CHANGE_BLOCK, wide[d])
        bn[done] = bs[done] = bs2[done] = 0.0
    c[:, C_FULL], c[:, C_BN], c[:, C_BS], c[:, C_BS2], c[:, C_S], c[:, C_S2] = full, bn, bs, bs2, s, s2
    tab.cm[crow] = c
    return out.tolist(), jump.tolist()


def _settle_all(c: np.ndarray, d: np.ndarray, level: np.ndarray, wide: np.ndarray) -> None:
    """_settle() for the rows `d` of `c` at once."""
    lv, vs, at = c[d, C_LV:C_VS], c[d, C_VS:C_RING], c[d, C_AT]
    dist = np.where(vs > 0.0, np.abs(level[:, None] - lv) / wide[:, None], np.inf)
    rows = np.arange(len(d))
    best = dist.argmin(axis=1)
    match = dist[rows, best] < REGIME_MATCH
    slot = np.where(match, best, vs.argmin(axis=1))
    lv[rows, slot] = np.where(match, lv[rows, slot] + REGIME_RATE * (level - lv[rows, slot]), level)
    vs[rows, slot] = np.where(match, vs[rows, slot], 0.0) + (at != slot)
    c[d, C_LV:C_VS], c[d, C_VS:C_RING], c[d, C_AT] = lv, vs, slot


def _verdict(d: float, var: float, p: Params) -> float:
    """How improbable a recent surprise d above its long-run mean is, with variance var, on a log scale."""
    if d <= 0.0:
        return 0.0
    return _log_tail(d / math.sqrt(2.0 * (var if var > SURPRISE_VAR_FLOOR else SURPRISE_VAR_FLOOR)), p.log_floor)


def _log_tail(q: float, log_floor: float) -> float:
    """-log(normal tail beyond q standard deviations, as erfc(q) / 2) / -log(tail_floor): unclipped, > 1 beyond
    the floor, SPATIAL below float range."""
    tail = 0.5 * math.erfc(q)
    return math.log(tail) / log_floor if tail > 0.0 else SPATIAL


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
    """What the detector remembers about one sensor besides its series' rows (`rows`: metric -> row of the
    MetricTable): the sensor-level score's refractory count, the metrics its alarms since the refractory period
    began were about (a spike of another metric cuts through it, once per metric) and its pair channels."""

    __slots__ = ("rows", "cool", "alarmed", "key", "pairs")

    def __init__(self):
        self.rows: dict[str, int] = {}
        self.cool = 0
        self.alarmed: tuple[str, ...] = ()
        self.key: tuple = ()
        self.pairs: list | None = None  # (index i, index j, "a~b", PairState) over a ring of the metrics in name order


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

    def __init__(self, cfg: AnomalyConfig, state: str = "anomaly"):
        self.params = Params(cfg)
        self.table = MetricTable(cfg.max_series, self.params, state)
        self.small_wave = SMALL_WAVE

    def readings(self, sensor_id: str, metric: str) -> int:
        """How many in-order readings the series has learnt from (0 when it is not tracked)."""
        sen = dict.get(self.table.index, sensor_id)  # without marking it recent
        return int(self.table.m[sen.rows[metric], N]) if sen and metric in sen.rows else 0

    def score_readings(self, readings: list[SensorReading], min_score: float = 0.0) -> list[MetricScore]:
        """One MetricScore per finite metric of each reading, in order (the first reading of a key scores 0);
        a reading of several metrics (with fusion on) adds one sensor-level score, metric FUSED, after them.
        Scores below `min_score` are left out (the live graph needs only those that raise events or count for
        health: building a score object costs as much as a metric's arithmetic).

        The batch is judged in waves, each the longest run of readings with no sensor twice, so a batch
        scores exactly as its readings would one by one (replay equals live, whatever the batching)."""
        tab = self.table
        index = tab.index
        out: list[MetricScore] = []
        w = Wave()
        rows, xs, names, times, readings_ = w.rows, w.xs, w.names, w.times, w.readings
        for rd in readings:
            sid = rd.sensor_id
            if sid in w.sensors:
                self._scores(w, out, min_score)
                w = Wave()
                rows, xs, names, times, readings_ = w.rows, w.xs, w.names, w.times, w.readings
            w.sensors.add(sid)
            when = rd.ts  # a csp.Struct builds a new datetime on every field read: read it once
            t = (when - _EPOCH) // _US
            sen = index.get(sid)
            if sen is None:
                sen = index[sid] = SensorState()
            own = sen.rows
            start, fresh = len(rows), None
            metrics = rd.metrics
            known = list(map(own.get, metrics))
            if None not in known and sum(map(abs, metrics.values())) < MAX_MAGNITUDE:  # also false for a NaN
                rows += known  # the usual reading: every metric finite and already tracked
                xs += metrics.values()
                names += metrics
            else:
                for name, x in metrics.items():
                    if not -MAX_MAGNITUDE < x < MAX_MAGNITUDE:  # also rejects NaN
                        continue
                    k = own.get(name)
                    if k is None:
                        tab.add(sen, name, x, float(t), metrics)
                        if min_score <= 0.0:
                            fresh = [(name, x)] if fresh is None else fresh + [(name, x)]
                        continue
                    rows.append(k)
                    xs.append(x)
                    names.append(name)
            times.append(t)
            readings_.append((sid, when, start, len(rows), fresh, sen))
        if readings_:
            self._scores(w, out, min_score)
        tab.settle()
        return out

    def _scores(self, w: Wave, out: list, min_score: float) -> None:
        """Scores of one wave, reading by reading; the rows as learnt go back to the table."""
        p = self.params
        v = (judge if len(w.rows) >= self.small_wave else judge_values)(self.table, w, p) if w.rows else None
        names, xs = w.names, w.xs
        for sid, when, start, end, fresh, sen in w.readings:
            if fresh:
                for name, x in fresh:
                    out.append(MetricScore(sensor_id=sid, metric=name, ts=when, value=x, score=0.0))
            if end - start > 1 and p.fuse:
                self._fuse(sid, sen, when, start, end, w, v, out, min_score)
                continue
            for j in range(start, end):  # each metric alone, with its own refractory period
                x = xs[j]
                u = v.u[j]
                s = u if u < 1.0 else 1.0
                if v.cool[j] > 0.0:
                    if v.learned[j]:
                        v.cool[j] -= 1.0
                    s *= 0.5  # damped: cannot alarm at any threshold above 0.5
                elif s >= p.threshold and v.learned[j]:
                    v.cool[j] = p.refractory
                    v.rebaseline(j, x)  # a level shift alarms once, then becomes the norm
                if s >= p.threshold:
                    out.append(_evidence(AnomalyScore, sid, names[j], when, x, s, v, j))
                elif s >= min_score:
                    out.append(MetricScore(sensor_id=sid, metric=names[j], ts=when, value=x, score=s))
        if v is not None:
            v.block[:, COOL] = v.cool
            self.table.m[v.at] = v.block

    def _fuse(self, sid: str, sen: SensorState, when: datetime, start: int, end: int, w: Wave, v: Verdicts,
              out: list, min_score: float) -> None:
        """The sensor-level score of one multi-metric reading (values start..end of the wave): the most
        surprising of its metrics and of the correlations between them, Bonferroni-corrected for the number
        of channels (and, with fuse = fisher, Fisher's combination of the metrics' tails), so a sensor with
        many metrics alarms no more often than one with a single metric; one refractory period per sensor."""
        p = self.params
        names, xs, us, cool, learned_, change, jump = w.names, w.xs, v.u, v.cool, v.learned, v.change, v.jump
        damp = sen.cool > 0
        scale = 0.5 if damp else 1.0
        learned = True
        top_u, top, top_r, top_c, top_s, top_j = -1.0, start, 0.0, start, 0.0, start
        for j in range(start, end):  # one pass: the metrics' own scores, the top verdict, change and jump
            u = us[j]
            if not learned_[j]:
                learned = False
            elif cool[j] > 0.0:  # the metric re-learns its level after a re-baseline: no trend meanwhile
                cool[j] -= 1.0
            if u > top_u:
                top_u, top = u, j
            if change is not None:
                if change[j] > top_r:
                    top_r, top_c = change[j], j
                if jump[j] > top_s:
                    top_s, top_j = jump[j], j
            u = (u if u < 1.0 else 1.0) * scale
            if u >= min_score:
                out.append(PartScore(sensor_id=sid, metric=names[j], ts=when, value=xs[j], score=u))
        best, channel, k = top_u, names[top], end - start
        if not p.fuse_metrics and top_u < SPATIAL and not any(v.apart[start:end]):
            best, k = 0.0, 1  # the metrics' own verdicts count only as range breaks, or after a silence (the
            # change channels start again then; the verdict is against a band that has widened with it)
        if p.pairs and learned:
            key = tuple(names[start:end])
            if key != sen.key:  # a new set of metrics: a new ring of pairs
                sen.key = key
                order = sorted(range(len(key)), key=key.__getitem__)
                m = len(order)
                sen.pairs = [(order[i], order[(i + 1) % m], f"{key[order[i]]}~{key[order[(i + 1) % m]]}", PairState())
                             for i in range(m if m > 2 else 1)]
            q, qlabel = 0.0, ""
            for i, j, label, ps in sen.pairs:
                a, b = start + i, start + j
                u = ps.surprise(v.sgn[a], v.sgn[b], p)
                if u > q and v.moving[a] and v.moving[b]:
                    q, qlabel = u, label
            if q > 0.0:
                u = _verdict(q, 1.0, p)
                if u > best:
                    best, channel = u, qlabel
            k += len(sen.pairs)
        fused = best - math.log(k) * p.inv_log_floor
        if p.fisher:
            h = 0.0
            for j in range(start, end):
                h += us[j] if us[j] < SPATIAL else SPATIAL
            h *= -p.log_floor  # -sum(log tail)
            acc, term = 1.0, 1.0
            for i in range(1, end - start):
                term *= h / i
                acc += term
            f = (h - math.log(acc)) * p.inv_log_floor
            fused = (fused if fused > f else f) - _LN2 * p.inv_log_floor
        by_change = False
        if top_r > 0.0 and learned:  # (a change channel judges only readings learnt whole)
            tail = math.erfc(top_r / _SQRT2) * (end - start)  # two-sided, Bonferroni over the metrics
            u = p.threshold * math.log(tail) / p.change_log if 0.0 < tail < 1.0 else (SPATIAL if tail <= 0.0 else 0.0)
            if u > fused:
                fused, channel, top, by_change = u, f"{names[top_c]}:change", top_c, True
        other = False  # a spike of a metric none of the alarms being cooled off was about: a finding of its own
        if p.spike_z and top_s >= p.spike_z and learned:  # one reading jumped: a spike
            other = damp and names[top_j] not in sen.alarmed
            if fused < 1.0 or other:  # (a spike of one of those metrics is an echo of its fault)
                fused, channel, top, by_change = 1.0, f"{names[top_j]}:spike", top_j, False
                damp = damp and not other
        s = 1.0 if fused >= 1.0 or top_u >= SPATIAL else (fused if fused > 0.0 else 0.0)
        if learned:
            if damp:
                sen.cool -= 1
            elif s >= p.threshold:
                sen.cool = p.sensor_refractory
                sen.alarmed = (*sen.alarmed, names[top]) if other else (names[top],)
                if by_change:
                    self.table.alarmed(int(v.block[top, CH]))
                for j in range(start, end):
                    if us[j] >= p.threshold:  # re-baseline the metrics that alarmed: a level shift alarms once
                        v.rebaseline(j, xs[j])
                        cool[j] = p.refractory
        if damp:
            s *= 0.5
        if s >= p.threshold:
            sc = _evidence(SensorScore, sid, FUSED, when, xs[top], s, v, top)
            sc.channel, sc.top = channel, names[top]
            sc.metric_scores = {names[j]: (us[j] if us[j] < 1.0 else 1.0) for j in range(start, end)}
            out.append(sc)
        elif s >= min_score:
            out.append(MetricScore(sensor_id=sid, metric=FUSED, ts=when, value=xs[top], score=s))


def _evidence(kind: type, sid: str, metric: str, when: datetime, x: float, s: float, v: Verdicts, j: int) -> AnomalyScore:
    n, short, lmean, lvar = v.block[j, [N, SHORT, LMEAN, LVAR]].tolist()
    return kind(
        sensor_id=sid, metric=metric, ts=when, value=x, score=s,
        expected=float(v.expected[j]), band=float(v.band[j]), surprise=short,
        surprise_mean=lmean, surprise_std=math.sqrt(lvar), readings=int(n),
    )


@csp.node(memoize=False)  # the config is a mutable dataclass, not hashable
def anomaly_scores(readings: ts[list[SensorReading]], cfg: AnomalyConfig, min_score: float = 0.0,
                   states: object = None, group: str = "") -> ts[list[MetricScore]]:
    """Score every metric of every reading; one node keyed by (sensor, metric) inside. With `min_score` > 0 only
    the scores at or above it or the (live) event threshold, whichever is lower, go out (0: every score).
    Its states are kept in `states` (a snapshot.StateBook, or None), under a name of their own for a group of
    sensors (`anomaly:NAME`): the constants come from `cfg` on every start."""
    with csp.state():
        state = state_name("anomaly", group)
        s_detector = Detector(cfg, state)
        s_detector.table = keep(states, state, s_detector.table)
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


def raises_event(sc: MetricScore, threshold: float) -> bool:
    """Whether a score becomes an `anomaly` event: at or above the threshold, and not a fused sensor's own metric
    score (the sensor-level score speaks for it)."""
    return sc.score >= threshold and not isinstance(sc, PartScore)


@csp.node(memoize=False)
def anomaly_events(scores: ts[list[MetricScore]], cfg: AnomalyConfig) -> ts[list[Event]]:
    """`anomaly` events for the scores at or above cfg.threshold (a fused sensor's own metric scores raise none)."""
    if csp.ticked(scores):
        out = [anomaly_event(sc, cfg) for sc in scores if raises_event(sc, cfg.threshold)]
        if out:
            return out
