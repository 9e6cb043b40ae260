"""Slow drift of a sensor's level, found against a reference that does not follow it.

Health's short-window `drift_z` compares recent readings with a baseline that keeps
learning, so that a new normal is accepted; a drift slower than that learning is
followed, never found. This detector watches how the level moves instead, per
(sensor, metric):

- readings are averaged over blocks of data time (`drift.block`, aligned to the
  epoch, so a replay cuts the same blocks as the live run);
- the change between consecutive block means, in units of its scale s and
  clipped to +-c (`drift.clip`), feeds a two-sided CUSUM (Page's test):
  up = max(0, up + z - k), down = max(0, down - z - k), k = `drift.allowance`;
- the maintenance reason `drift` is raised when either sum reaches h
  (`drift.threshold`); it clears as health's drift does, once the sum stays below
  `maintenance.drift_clear_z / health.drift_z` of h (half, by default).

The reference is the block mean at which the sum last stood at zero: a ramp moves
away from it block after block, while noise keeps pulling the sum back to zero.
A step to a new stable level (an anomaly, then a new normal) changes at most two
block means, each adding at most c - k: with 2(c - k) < h (checked) a step alone
cannot raise `drift`. A daily cycle of amplitude A changes the level by at most
2 pi A / (blocks per day) per block, so it never accumulates while
A < 23 k s at 10-minute blocks (with k = 1 and s = 0.055 for noise sigma = 0.3
read every 10 s: cycles up to an amplitude of about 1.25).

The scale s of a block change comes from second differences of block means:
their mean square is 3 s^2 when block means scatter independently about the
level (white noise), and a steady drift cancels from them (a slow cycle nearly),
so the drift being measured cannot inflate its own yardstick. A level that also
wanders slowly gets a scale up to sqrt(1.5) too small, which makes the detector
readier to call its wander drift.

k and h come from the false-alarm rate (Siegmund's approximation of a CUSUM's
in-control average run length over independent standardised changes,
ARL0 = (exp(2 k b) - 2 k b - 1) / (2 k^2), b = h + 1.166): k = 1, h = 6 give
8.4e5 blocks per side, 4.2e5 for both, one false `drift` per metric in about
eight years of 10-minute blocks (the changes of white-noise block means are
negatively correlated, which only lengthens it); for a level that wanders as a
random walk, whose scale is underestimated as above, about 50 days. c = 3 keeps
a step's share to 2(c - k) = 4 < h. k = 1 is half the change per block that is
found fastest (the usual rule, k = half the design shift): a level moving 2 s a
block or more raises `drift` within about h / (z - k) blocks, at most
h / (c - k) = 3 blocks when it moves by c scales or more. For white noise of
standard deviation sigma read n times a block, s = 1.41 sigma / sqrt(n), so 2 s
a block is 2.2 sigma an hour at one reading per 10 s and 10-minute blocks (0.7
sigma an hour at 1 Hz); the smallest drift found at all is half that.

O(1) per reading (a sum and a count) and per block (a few float operations).

Against peers (`drift.reference = "peers"`): sensors whose ids share everything up to
the last `/` (`site-a/t1`, `site-a/t2`: group `site-a`) often move together, with the
weather, the load or the time of day, and a shared move of their level is no sensor's
fault. Each closed block mean is added to its group's sums for that block; a block
later, when every peer reporting at least once a block has closed it too, the
sensor's mean minus the mean of its peers' (itself left out) goes through a second
CUSUM exactly as above. For a block with `peer_min` peers or more that CUSUM is the
one that counts (nothing is raised while it learns its scale): a front that moves the
whole group is not drift, while one sensor walking away from its peers is, and is
found sooner, because the peers' shared wander no longer widens the scale. When a
peer falls silent and fewer than `peer_min` remain, the last verdict against them
holds for `warmup` blocks; after that the sensor is judged against its own level
until its peers are back (a sensor that never had enough of them always is). The
peer sums cost nothing per reading.

Against the usual day (`drift.reference = "daily"`): a daily cycle steeper than
the bound above (a room that warms by 6 C over the day, read by a sensor with 0.3
of noise) climbs like a ramp, and judged against its own level a healthy sensor
raises `drift` on its slopes. Each block's mean minus the same block of the usual
day goes through a second CUSUM exactly as above: the cycle cancels, a ramp does
not. The usual day holds each block's mean over the days before, the latest
weighing half (DAY_WEIGHT), and learns nothing while the CUSUM is at its
threshold: compared with yesterday alone, a drift that has ended would come back
the next day as a drift the other way, and one that goes on would look normal a
day after it began. Its difference from a block mean is noisier than one block
mean (up to sqrt 2 for white noise), so a ramp is found about 1.5 times later, and
nothing is judged before a block has a usual value and the scale has warmed up (a
metric's second day). A ring of the usual day's block means per metric (144
floats at 10-minute blocks) holds them.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from edgewatch.agent.analytics.anomaly import ewma_alpha
from edgewatch.agent.analytics.snapshot import persisted
from edgewatch.agent.analytics.states import RecentStates
from edgewatch.agent.config import DRIFT_REFERENCES, ConfigError, DriftConfig, HealthConfig

LEARN_CLIP = 3.0  # second differences beyond this many of their standard deviations are clipped before learning
REL_FLOOR = 1e-4  # scale floor as a fraction of the level: a flat (quantised) level is not infinitely sensitive
SECOND_DIFF_RATIO = 3.0  # E[second difference^2] / E[change^2] of independent block means
DAY = 86400.0  # seconds: the period of `reference = "daily"`
DAY_WEIGHT = 0.5  # the weight of the latest day in the usual day's block means (an EWMA over days)
_EPOCH = datetime(1970, 1, 1)


def check(d: DriftConfig, h: HealthConfig) -> None:
    """Raise ConfigError naming the first bad [drift] key (called when the graph is wired), with the references
    [health] and its groups choose over `d.reference` (`drift_reference`)."""
    references = [h.drift_reference, *(g.settings.drift_reference for g in h.groups.values())]
    for key in ("allowance", "threshold"):
        if getattr(d, key) <= 0:
            raise ConfigError(f"drift.{key}: must be positive")
    if not d.clip > d.allowance:
        raise ConfigError(f"drift.clip: must be above drift.allowance ({d.allowance}), got {d.clip}")
    if not 2.0 * (d.clip - d.allowance) < d.threshold:
        raise ConfigError(f"drift.clip: 2 x (clip - allowance) must stay below drift.threshold ({d.threshold}), "
                          f"or a step to a new level raises drift; got clip {d.clip}")
    if d.warmup < 2:
        raise ConfigError(f"drift.warmup: must be at least 2, got {d.warmup}")
    if d.scale_span < 1:
        raise ConfigError(f"drift.scale_span: must be at least 1, got {d.scale_span}")
    if d.reference not in DRIFT_REFERENCES:
        *rest, last = (repr(r) for r in DRIFT_REFERENCES)
        raise ConfigError(f"drift.reference: must be {', '.join(rest)} or {last}, got {d.reference!r}")
    if "daily" in (d.reference, *references) and d.block > 0 and not (DAY / d.block).is_integer():
        raise ConfigError(f"drift.block: with a reference 'daily' it must divide a day ({DAY:g} s) into whole "
                          f"blocks, got {d.block:g}")
    if d.peer_min < 1:
        raise ConfigError(f"drift.peer_min: must be at least 1, got {d.peer_min}")


class DriftParams:
    """Constants derived once from DriftConfig; `drift_z` maps the CUSUM onto health's drift measure, so that
    it reaches `health.drift_z` (the raise level of the `drift` reason) exactly when the sum reaches h."""

    __slots__ = ("block", "on", "allowance", "threshold", "clip", "cap", "warmup", "span", "a_var", "drift_z",
                 "peers", "peer_min", "peer_hold", "daily", "per_day")

    def __init__(self, d: DriftConfig, drift_z: float, reference: str = ""):
        reference = reference or d.reference
        self.block = timedelta(seconds=d.block)
        self.on = d.block > 0
        self.allowance = d.allowance
        self.threshold = d.threshold
        self.clip = d.clip
        self.cap = 2.0 * d.threshold  # a long ramp clears about as soon after it stops as a short one
        self.warmup = d.warmup
        self.span = d.scale_span
        self.a_var = ewma_alpha(d.scale_span)
        self.drift_z = drift_z
        self.peers = reference == "peers"
        self.peer_min = d.peer_min
        self.peer_hold = self.block * d.warmup  # how long a verdict against peers holds while too few report
        self.daily = reference == "daily" and self.on
        self.per_day = round(DAY / d.block) if self.daily else 0  # blocks a day


def next_block(when: datetime, p: DriftParams) -> datetime:
    """The end of the block of data time holding `when` (never, when drift is off)."""
    if not p.on:
        return datetime.max
    return when - (when - _EPOCH) % p.block + p.block


@persisted
class LevelDrift:
    """One metric's block sum, its last block mean and change, the scale and the two CUSUMs with their references."""

    __slots__ = ("total", "n", "mean", "change", "learnt", "var", "up", "down", "ref_up", "ref_down", "score")

    def __init__(self):
        self.total = 0.0
        self.n = 0  # readings in the open block
        self.mean = self.change = None  # the last block mean and the change that led to it
        self.learnt = 0  # second differences learnt
        self.var = 0.0  # mean squared second difference of block means
        self.up = self.down = 0.0
        self.ref_up = self.ref_down = 0.0
        self.score = 0.0  # the larger CUSUM as a fraction of the threshold, as of the last block

    def close(self, p: DriftParams) -> float:
        """Close the open block; return the larger CUSUM as a fraction of the threshold (0 while learning)."""
        if self.n == 0:  # a silent block: the next change spans it
            return self.score
        mean = self.total / self.n
        self.total, self.n = 0.0, 0
        return self.step(mean, p)

    def step(self, mean: float, p: DriftParams) -> float:
        """One more block mean (from this metric's readings, or its difference from its peers'): as `close`."""
        last, self.mean = self.mean, mean
        if last is None:
            return 0.0
        change, before = mean - last, self.change
        self.change = change
        if before is None:
            return 0.0
        e = change - before
        if not math.isfinite(e * e):  # levels near the float limit overflow the squares: such a series starts over
            self.__init__()
            return 0.0
        learnt = self.learnt = self.learnt + 1
        if learnt <= p.warmup:  # the scale's first estimate
            self.var += (e * e - self.var) / learnt
            self.ref_up = self.ref_down = mean
            return 0.0
        scale = math.sqrt(self.var / SECOND_DIFF_RATIO)
        floor = REL_FLOOR * abs(mean) + 1e-12
        scale = scale if scale > floor else floor
        lim = LEARN_CLIP * math.sqrt(self.var)
        e = lim if e > lim else (-lim if e < -lim else e)
        # a plain mean until there are scale_span of them, then an EWMA: the estimate firms up as fast as it can
        self.var += (e * e - self.var) * (1.0 / learnt if learnt < p.span else p.a_var)
        z = change / scale
        z = p.clip if z > p.clip else (-p.clip if z < -p.clip else z)
        up = self.up + z - p.allowance
        down = self.down - z - p.allowance
        if up <= 0.0:
            up, self.ref_up = 0.0, mean
        if down <= 0.0:
            down, self.ref_down = 0.0, mean
        self.up = up if up < p.cap else p.cap
        self.down = down if down < p.cap else p.cap
        self.score = max(self.up, self.down) / p.threshold
        return self.score

    def evidence(self) -> dict:
        """The level's move since the reference, in the metric's units, and the CUSUM as a fraction of h."""
        up = self.up >= self.down
        ref = self.ref_up if up else self.ref_down
        return {"level": self.mean, "reference": ref, "change": self.mean - ref, "cusum": self.score}


def group_of(sensor_id: str) -> str:
    """A sensor's peer group: its id up to the last '/' (the topic prefix it shares with its peers)."""
    return sensor_id.rpartition("/")[0]


@persisted
class PeerBlocks:
    """Per (group, metric): the sum and count of its sensors' means of each recent block, keyed by the block's
    end (the last KEEP blocks), at most `cap` keys (a group per sensor at worst)."""

    KEEP = 3

    __slots__ = ("sums",)

    def __init__(self, cap: int):
        self.sums = RecentStates(cap, "drift_peers")

    def __len__(self) -> int:
        return len(self.sums)

    def add(self, key: tuple, end: datetime, mean: float) -> None:
        blocks = self.sums.get(key)
        if blocks is None:
            blocks = self.sums[key] = {}
        total = blocks.get(end)
        if total is None:
            blocks[end] = [mean, 1]
            while len(blocks) > self.KEEP:
                del blocks[min(blocks)]
        else:
            total[0] += mean
            total[1] += 1

    def others(self, key: tuple, end: datetime, own: float) -> tuple[float, int]:
        """The mean of the other sensors' means of the block ending at `end`, and how many there were."""
        total = (self.sums.get(key) or {}).get(end)
        if total is None or total[1] < 2:
            return 0.0, 0
        return (total[0] - own) / (total[1] - 1), total[1] - 1


def close_blocks(tracks: dict, p: DriftParams, end: datetime, peers: PeerBlocks | None = None,
                 sensor_id: str = "") -> tuple[float, dict | None]:
    """Close every metric's block (ending at `end`); return the largest CUSUM in health's drift units and its
    evidence (None when every CUSUM is at zero). With `peers` (the groups' sums), a metric of `sensor_id`
    judged against its peers (see above) counts with that CUSUM instead of its own level's."""
    worst, name, against = 0.0, None, "own"
    group = group_of(sensor_id)
    for metric, m in tracks.items():
        level = m.level
        closed = level.n > 0
        score, ref = level.close(p), "own"
        mean = level.mean if closed else None
        if peers is not None:
            key = (group, metric)
            held, m.held = m.held, None if mean is None else (end, mean)
            if mean is not None:
                peers.add(key, end, mean)
            if held is not None:  # the block before: every peer reporting once a block has closed it by now
                others, k = peers.others(key, *held)
                if k >= p.peer_min:  # judged against them (nothing while that CUSUM learns its scale)
                    score, ref = m.peer.step(held[1] - others, p), "peers"
                    m.peer_at = end
            if ref == "own" and m.peer_at is not None and end - m.peer_at <= p.peer_hold:
                score, ref = m.peer.score, "peers"  # peers missing for a while: their verdict holds
        elif p.daily:  # the own level's verdict never counts: a daily cycle moves it
            score, ref = m.daily.score, "daily"
            if mean is not None:
                at = (end - _EPOCH) // p.block % p.per_day
                usual = m.day[at]
                if usual != usual:  # NaN: the block's first day
                    m.day[at] = mean
                else:
                    score = m.daily.step(mean - usual, p)
                    if score < 1.0:  # a drift being raised does not teach the usual day
                        m.day[at] = usual + DAY_WEIGHT * (mean - usual)
        if score > worst:
            worst, name, against = score, metric, ref
    if name is None:
        return 0.0, None
    track = tracks[name]
    drift = {"own": track.level, "peers": track.peer, "daily": track.daily}[against]
    return worst * p.drift_z, {"metric": name, "against": against, **drift.evidence()}
