"""Configuration: one TOML file, one dataclass per section, environment overrides.

Every key has a default here and a line in docs/reference/configuration.md. Unknown keys are errors
that name the key; `EDGEWATCH_<SECTION>_<KEY>` overrides any key; secrets are
read from files (`*_file` keys) so they never sit in the TOML itself.
"""

from __future__ import annotations

import dataclasses
import grp
import math
import os
import re
import socket
import stat
import sys
import typing
import zoneinfo
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration problem; the message names the bad key or file."""


MAX_FILE_BYTES = 1024 * 1024  # a configuration file is a few KiB: anything larger is the wrong file
SERVICE_GROUP = "edgewatch"  # the systemd units' Group=: it may read the secret files
SECRET_KEYS = (("mqtt", "password_file"), ("mqtt", "key_file"), ("sidecar", "api_key_file"))


def _under_systemd() -> bool:
    return bool(os.environ.get("INVOCATION_ID") or os.environ.get("NOTIFY_SOCKET"))


def _host_name() -> str:
    """This machine's name as an agent id, in the characters an id may hold."""
    return _id_token(socket.gethostname()) or "edgewatch"


def _id_token(text: str) -> str:
    """`text` made a valid agent id: other characters become '-', at most AGENT_ID_MAX characters."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", text).strip("-._")[:AGENT_ID_MAX]


AGENT_ID_MAX = 64
AGENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # fits a client id, a topic level, a file name


@dataclasses.dataclass
class AgentConfig:
    # this agent's name among those sharing a broker and a log: stored with each event, dead letter and bar
    id: str = dataclasses.field(default_factory=_host_name)


@dataclasses.dataclass
class MqttConfig:
    host: str = "127.0.0.1"  # broker address
    port: int = 1883  # broker port (8883 is usual with TLS)
    protocol: str = "auto"  # "5", "3.1.1" or "auto"
    # fixed client id of the persistent session
    client_id: str = dataclasses.field(default_factory=lambda: f"edgewatch-{_host_name()}")
    # topic filters this agent subscribes to; empty = every input feed ({prefix}/# of the four input prefixes)
    subscriptions: list[str] = dataclasses.field(default_factory=list)
    username: str = ""  # broker user; empty = anonymous
    password_file: str = ""  # file holding the broker password (secret kept out of the TOML)
    tls: bool = False  # connect with TLS
    ca_file: str = ""  # CA bundle for TLS; empty = system CAs
    cert_file: str = ""  # client certificate for mutual TLS
    key_file: str = ""  # client key for mutual TLS
    keepalive: int = 30  # seconds between MQTT keep-alive pings
    session_expiry: int = 86400  # seconds the broker keeps our session while we are away
    receive_maximum: int = 5000  # QoS 1 messages in flight to us (MQTT 5): how far the broker streams ahead of the log
    reconnect_min_delay: float = 0.5  # first reconnect backoff, seconds
    reconnect_max_delay: float = 30.0  # longest reconnect backoff, seconds
    max_payload: int = 65536  # larger messages become dead letters, bytes
    max_qos0_backlog: int = 20000  # input messages waiting for the engine at most before a new QoS 0 one (sent at most once) is dropped and counted; QoS 1 input is bounded by receive_maximum and never dropped
    sensors_prefix: str = "sensors"  # input topic prefix: {prefix}/{sensor_id}
    market_prefix: str = "market"  # input topic prefix: {prefix}/{symbol}/trade|quote
    portfolio_prefix: str = "portfolio"  # input topic prefix: {prefix}/positions, {prefix}/pnl
    news_prefix: str = "news"  # input topic prefix: {prefix}/{source}
    output_prefix: str = "edgewatch"  # output prefix: events/, deadletter, status, bars/
    ack_deadline: float = 30.0  # seconds a received message may wait for its acknowledgement before /health fails


@dataclasses.dataclass
class StoreConfig:
    # event log: a path (SQLite) or an SQLAlchemy URL
    url: str = dataclasses.field(
        default_factory=lambda: "/var/lib/edgewatch/events.db" if _under_systemd() else "./edgewatch.db"
    )
    batch_size: int = 5000  # rows per transaction at most (the writer never waits to fill one)
    retention_days: float = 30.0  # delete events/dead letters/bars older than this; 0 = keep forever
    retention_rows: int = 10_000_000  # keep at most this many rows per table; 0 = no row limit
    retention_dead_letters: int = 100_000  # ... and at most this many dead letters (up to ~4 KB each, and anyone who can publish can make them); 0 = retention_rows
    retention_interval: float = 60.0  # seconds between retention passes of the writer
    max_backlog_rows: int = 200_000  # /health fails while more rows than this wait for the writer
    max_backlog_age: float = 30.0  # ... or while the oldest of them has waited longer than this, seconds


@dataclasses.dataclass
class RecordConfig:
    path: str = ""  # directory for capture files; empty = no recording
    max_bytes: int = 64 * 1024 * 1024  # rotate a capture file past this size
    max_files: int = 20  # rotated files kept
    warm_start: float = 3600.0  # seconds of the newest captures the graph re-runs at start to rebuild its state (0 = start cold)


@dataclasses.dataclass
class StateConfig:
    snapshot_interval: float = 60.0  # seconds between snapshots of the analytics' state in the event log (one more at a clean stop); 0 = none, every start is cold or warms from the captures
    snapshot_keep: int = 3  # newest snapshots kept per agent


@dataclasses.dataclass
class SidecarConfig:
    url: str = "http://127.0.0.1:8765"  # http://host:port or unix:///path.sock
    api_key_file: str = ""  # file holding the sidecar API key; empty = none
    timeout: float = 2.0  # seconds for one sidecar HTTP call


@dataclasses.dataclass
class MetricsConfig:
    listen: str = "127.0.0.1:9108"  # host:port of the Prometheus /metrics and /health endpoint and the /status page; "" = off
    status_readings: int = 300  # latest readings per sensor kept in memory for the status page's chart (older ones are read from the capture files); 0 = none
    status_sensors: int = 100  # sensors whose latest readings are kept in memory (the least recently heard is dropped first; about 650 bytes per reading held)


@dataclasses.dataclass
class LogConfig:
    level: str = "info"  # debug, info, warning or error
    format: str = "auto"  # auto (JSON when not on a terminal), json, console


@dataclasses.dataclass
class AnomalyConfig:
    threshold: float = 0.8  # score at or above which a reading becomes an `anomaly` event
    critical: float = 1.0  # score at or above which an `anomaly` event is critical (else warning)
    warmup: int = 100  # readings per (sensor, metric) learnt before any score above 0
    level_span: float = 20.0  # readings: EWMA span of the level forecast
    trend_span: float = 500.0  # readings: EWMA span of the level's slow trend (Holt); 0 = no trend
    scale_span: float = 100.0  # readings: EWMA span of the robust residual scale
    season_span: float = 30.0  # updates: EWMA span of each profile bucket
    season_buckets: int = 96  # buckets of the profile over its period (1 = no profile)
    season_days: int = 1  # the profile's period: 1 = a daily profile, 7 = a weekly one, for machines whose weekends differ (with, say, season_buckets = 672; each bucket then learns once a week, so the profile is consulted after season_min weeks)
    season_min: int = 5  # updates a bucket needs before the profile is consulted
    timezone: str = "UTC"  # the clock the profile keeps (an IANA name, "Europe/Berlin"): a rhythm people set, opening hours or shifts, moves with daylight saving time, and in UTC each change would misplace it for weeks
    counters: list[str] = dataclasses.field(default_factory=list)  # metrics that report a running total (an energy meter's kWh): judged by their change per second since the sensor's previous reading, as the metric `<name>_rate`; a reset (the total falls) gives no rate for that reading
    tail_floor: float = 1e-4  # tail probability that maps to score 1.0 (scores are -log(tail)/-log(floor))
    short_span: float = 2.0  # readings: span of the recent surprise compared with its history
    long_span: float = 2000.0  # readings: span of the surprise's long-run mean and variance
    clip: float = 4.0  # residuals beyond this many scales are clipped before learning
    rel_floor: float = 0.001  # scale floor as a fraction of the metric's mean magnitude
    refractory: int = 100  # readings after a detection during which the metric cannot alarm again
    spatial_tolerance: float = 0.05  # a reading beyond the range seen so far by this fraction of it scores 1 (0 = off)
    spatial_z: float = 5.0  # ... and only when the reading is also this many robust scales from its forecast (a young range is narrow)
    max_series: int = 200_000  # (sensor, metric) series tracked at most (about 1 – 1.25 KB each); beyond it the longest-silent sensors are forgotten, all their series at once
    fuse: str = "bonferroni"  # a reading of several metrics: one sensor-level score (metric "*") raises the events: "bonferroni" (most surprising channel, corrected for their number; valid however the metrics correlate), "fisher" (also Fisher's combination of the metrics: more sensitive to a joint shift, but it assumes independent metrics and over-counts correlated ones), "off" (each metric alone)
    sensor_refractory: int = 60  # readings after a sensor-level detection during which that sensor cannot alarm again
    fuse_metrics: bool = False  # the sensor-level score takes each metric's own verdict; off: a metric counts there only when it breaks the range seen so far (the pairs and change channels still count)
    pairs: bool = False  # the sensor-level score also watches the correlation of each metric with the next (ring in name order): a broken relation counts
    pair_span: float = 200.0  # readings: EWMA span of the pair regressions
    change_window: int = 300  # readings: the sensor-level score's slow reference per metric (mean and spread of the last this many, in blocks of 30; 0 = no change channels)
    change_span: float = 12.0  # readings: EWMA span of a metric's deviation from its slow reference (in reference spreads)
    change_z: float = 3.4  # that deviation, in units of its own long-run RMS, at which a change channel reaches the live threshold, for one metric (Bonferroni: a sensor of more metrics needs a larger one)
    change_norm_span: float = 3000.0  # readings: EWMA span of the deviation's long-run RMS
    change_hold: float = 5.0  # a deviation beyond this many RMS stops teaching that RMS until it is back within 2 (0: it always teaches, clipped at 5), so a fault does not make the next one look normal; on hold, the channel raises at most one alarm
    spike_z: float = 6.0  # a reading of a metric this many spreads from where it has been (its smoothed level, while within two spreads of its slow reference: the change channel's last change_window readings; a spread is at least one step of the sensor) makes the sensor-level score 1.0: single spikes, which the change channels smooth away; 0: off
    regime_visits: int = 5  # a level a metric has settled at, after being away from it, this many separate times is one of the machine's operating regimes: a return to it raises no change or spike alarm (a compressor that cycles); 0: off
    groups: dict[str, SensorGroup] = dataclasses.field(default_factory=dict)  # sensors with settings of their own: [anomaly.groups.NAME] holds `sensors` (sensor-id filters) and any [anomaly] key, the rest come from [anomaly]; a sensor takes the first group, in file order, whose filters match it (else [anomaly])


@dataclasses.dataclass
class SensorGroup:
    """Sensors whose machines need other settings than the fleet's: [anomaly.groups.NAME] (a compressor that
    cycles between regimes), [health.groups.NAME] (a plant whose pressure is in bar, not kPa)."""

    sensors: list[str]  # sensor-id filters in MQTT syntax ("+" one level, "#" the rest): "plant1/compressors/#"
    settings: AnomalyConfig | HealthConfig  # the section with the group's own keys over it (its `groups` empty)


@dataclasses.dataclass
class HealthConfig:
    interval: float = 60.0  # seconds of data time between periodic `health` events per sensor (sent with its first reading in a new bucket)
    sweep_interval: float = 1.0  # seconds between engine-time sweeps that find silent (stale) sensors and report their health
    warmup: int = 30  # readings that form a sensor's own baseline before drift/noise are judged
    fast_span: int = 20  # readings in the short window (EWMA span) compared against the baseline
    noise_span: int = 50  # readings in the short noise window (EWMA span of squared changes): longer than fast_span, as squares are skewed
    baseline_span: int = 2000  # readings in the slowly adapting baseline (EWMA span)
    anomaly_span: int = 20  # readings over which the recent anomaly rate is averaged (EWMA span)
    stale_factor: float = 10.0  # a sensor is stale after this many of its usual reporting intervals
    stale_min: float = 5.0  # ... but never before this many seconds without a reading
    stuck_readings: int = 20  # identical consecutive values of a metric that make it stuck
    drift_z: float = 6.0  # short-window mean this many baseline deviations away = drift
    drift_reference: str = ""  # what these sensors' levels drift against, over [drift] reference ("own", "peers" or "daily"; empty: [drift] reference): in a group, rooms against their usual day while the outdoor sensors are judged against their peers
    noise_ratio: float = 2.75  # short-window noise (std of changes) this many times the baseline = noisy
    anomaly_rate: float = 0.2  # recent fraction of anomalous readings that is a burst
    anomaly_score: float = 0.8  # anomaly score at or above which a reading counts as anomalous here (the detector halves scores during its refractory period after an alarm)
    outlier_z: float = 8.0  # a value this far (baseline deviations) from the short-window mean is an outlier: it counts toward the anomaly rate (the detector suppresses repeats after an alarm) and stays out of drift and noise
    noise_clip: float = 6.0  # values and changes beyond this many baseline deviations are clipped in the short window, so sporadic spikes are neither drift nor noise
    steady_metrics: str = "battery"  # metrics that may legitimately hold still: not judged stuck, drifting or noisy
    low_battery: float = 15.0  # battery level (percent) at or below which it is low
    bad_status: str = "error,fault,failed,offline,low_battery"  # `status` attribute values that mean unhealthy
    ranges: str = ""  # physical range per metric in your units, name=low:high,...; empty = none (no range is guessed from a name)
    bands: str = "0.5,0.8"  # score boundaries of the poor / degraded / good bands (a crossing emits `health`)
    band_margin: float = 0.05  # how far past a band boundary the score must move to count as a crossing
    max_sensors: int = 100_000  # sensors tracked at most by health and maintenance; the longest-silent is forgotten beyond it
    max_series: int = 200_000  # (sensor, metric) tracks health keeps at most (about 0.5 KB each): beyond it the longest-silent sensors are forgotten, and a sensor that holds them all tracks no new metric name
    forget_after: float = 86400.0  # seconds of silence after which a sensor is forgotten (its next reading starts afresh)
    groups: dict[str, SensorGroup] = dataclasses.field(default_factory=dict)  # sensors with settings of their own: [health.groups.NAME] holds `sensors` (sensor-id filters) and any [health] key (ranges in their units, stale and stuck limits), the rest come from [health]; the first group in file order whose filters match a sensor's id wins (else [health])


@dataclasses.dataclass
class DriftConfig:
    block: float = 600.0  # seconds of data time averaged into one level; slow drift compares consecutive levels (0 = off)
    allowance: float = 1.0  # CUSUM allowance: a level may move this many scales per block without counting toward drift
    threshold: float = 6.0  # CUSUM threshold: the sum at which the `drift` maintenance reason is raised
    clip: float = 3.0  # one block's change counts at most this many scales, so a step adds at most 2 x (clip - allowance)
    warmup: int = 12  # blocks whose changes form the scale before slow drift is judged
    scale_span: int = 144  # blocks: the scale of block-to-block changes is their mean over this many, then an EWMA of this span
    reference: str = "own"  # what a level drifts against: "own" (the sensor's own earlier level), "peers" (the mean level of the sensors whose ids share its prefix up to the last '/', which often move together: a shared move is no drift) or "daily" (the same block of the usual day, learnt over the days before: a daily cycle, however steep, is no drift; block must divide a day)
    peer_min: int = 3  # peers a block needs before a sensor is judged against them (fewer: the last verdict against them holds for drift.warmup blocks, then its own level is the reference)


@dataclasses.dataclass
class MaintenanceConfig:
    clear_readings: int = 10  # consecutive readings inside the clear level before a reason clears
    drift_clear_z: float = 3.0  # drift clears below this many baseline deviations
    noise_clear_ratio: float = 1.5  # noisy clears below this noise ratio
    anomaly_clear_rate: float = 0.1  # anomaly_burst clears below this recent anomaly rate (one lone anomaly stays below it)
    out_of_range_rate: float = 0.3  # recent fraction of out-of-range readings that raises out_of_range
    out_of_range_clear_rate: float = 0.05  # ... and the fraction below which it clears
    battery_clear_margin: float = 10.0  # low_battery clears once the level is this far above health.low_battery


@dataclasses.dataclass
class MarketConfig:
    bar_interval: float = 1.0  # seconds per VWAP bar
    bar_grace: float = 0.25  # seconds after a bar's end before a quiet symbol's bar is closed (late trades still count)
    price_alert_threshold: float = 0.02  # fractional move between consecutive trades that always alerts
    price_alert_multiple: float = 20.0  # ... and a move this many times the symbol's typical tick move alerts too
    price_alert_min_move: float = 0.002  # ... when it is at least this fraction (a flat symbol cannot alert on a cent)
    price_alert_thresholds: str = ""  # the floor of some symbols, SYMBOL=fraction,... (a symbol may be a pattern: `BTC-*`; the first that matches wins); the rest take price_alert_threshold
    price_alert_multiples: str = ""  # the tick multiple of some symbols, SYMBOL=multiple,... (patterns as above); the rest take price_alert_multiple
    price_alert_span: int = 100  # trades: EWMA span of the typical tick move (mean |move|); no multiple-based alert before
    price_alert_horizon: float = 60.0  # seconds: a move within this horizon is judged against the symbol's typical horizon move too (0: off)
    price_alert_horizon_multiple: float = 8.0  # ... and alerts at this many times that typical move (and at least price_alert_min_move)
    session_gap: float = 300.0  # seconds: a pause this long in a symbol's trading (the night, a halt, a feed outage) ends its session: the first trade after it is judged by price_alert_threshold alone and teaches neither scale, and the first bar after it starts the signal's references afresh (a gap is not a tick, nor a bar's move)
    fast_span: int = 5  # bars in the fast price average (EWMA span) of the trend
    slow_span: int = 30  # bars in the slow price average and the volume profile (EWMA span)
    vol_span: int = 30  # bars in the realised volatility estimate (EWMA span of squared returns)
    vol_long_span: int = 300  # bars in the long-run volatility the regime compares against
    warmup_bars: int = 10  # bars per symbol before regime and signals are computed
    volatile_ratio: float = 1.5  # realised / long-run volatility above this = `volatile` regime
    calm_ratio: float = 0.6  # ... below this = `calm` regime
    trend_z: float = 2.0  # |trend| in volatility units above this = `trending` regime
    signal_z: float = 2.0  # base threshold: price vs slow average, in volatility units, for BUY/SELL
    volatile_mult: float = 1.5  # threshold multiplier in a volatile regime
    calm_mult: float = 0.8  # threshold multiplier in a calm regime
    trending_mult: float = 1.2  # threshold multiplier in a trending regime
    strong_mult: float = 1.75  # STRONG_* when the move exceeds threshold x this and volume confirms
    strong_volume: float = 1.5  # bar volume vs its average needed for a STRONG_* signal
    strong_requires_news: bool = False  # STRONG_* only when recent news sentiment agrees
    news_window: float = 600.0  # seconds a sentiment stays recent enough to agree
    news_min_score: float = 0.2  # |sentiment score| that counts as agreeing
    signal_cooldown: float = 30.0  # seconds of data time after a signal before the next for that symbol
    max_symbols: int = 10_000  # symbols tracked at most by bars, signals, price alerts, risk and advice; the longest-silent is forgotten beyond it


@dataclasses.dataclass
class RiskConfig:
    max_drawdown: float = 10000.0  # P&L drop from its high-water mark that triggers EMERGENCY_STOP
    max_gross_exposure: float = 1_000_000.0  # sum of |position x last price| that triggers REDUCE_POSITIONS
    check_interval: float = 0.1  # seconds between timer-driven risk checks
    max_net_exposure: float = 500_000.0  # |sum of position x last price| that triggers REDUCE_NET_EXPOSURE
    max_concentration: float = 0.5  # largest symbol's share of gross exposure that triggers REDUCE_CONCENTRATION
    concentration_min_gross: float = 100_000.0  # concentration is judged only above this gross exposure
    max_vol_exposure: float = 50_000.0  # sum of |exposure| x daily realised volatility (a one-sigma daily loss) that triggers REDUCE_RISK
    rearm_fraction: float = 0.05  # a breach re-arms once the value is this fraction back inside its limit


@dataclasses.dataclass
class NewsConfig:
    enabled: bool = True  # send headlines to the sidecar and emit news events
    timeout: float = 0.5  # seconds one sidecar call may take before headlines are logged as degraded
    cache_size: int = 4096  # distinct headline texts whose analysis is remembered (LRU)
    batch_size: int = 32  # headlines sent to the sidecar in one classify request at most
    breaker_failures: int = 2  # consecutive sidecar failures that open the circuit (degrade at once)
    breaker_reset: float = 1.0  # seconds before an open circuit lets one trial request through


@dataclasses.dataclass
class AdvisorConfig:
    enabled: bool = True  # emit `advice` events (BUY / SELL / HOLD per symbol)
    signal_weight: float = 0.5  # weight of the technical view (bar move / signal threshold, clipped to +-2, halved)
    news_weight: float = 0.5  # weight of the latest headline's sentiment score, decayed by its age
    news_horizon: float = 900.0  # seconds for a headline's weight to decay to 1/e
    enter: float = 0.4  # |score| at which the advice becomes BUY or SELL
    exit: float = 0.2  # |score| below which a BUY or SELL falls back to HOLD (hysteresis)
    min_headroom: float = 0.1  # a BUY is vetoed when a risk limit has less than this fraction of headroom left


@dataclasses.dataclass
class Config:
    agent: AgentConfig = dataclasses.field(default_factory=AgentConfig)
    mqtt: MqttConfig = dataclasses.field(default_factory=MqttConfig)
    store: StoreConfig = dataclasses.field(default_factory=StoreConfig)
    record: RecordConfig = dataclasses.field(default_factory=RecordConfig)
    state: StateConfig = dataclasses.field(default_factory=StateConfig)
    sidecar: SidecarConfig = dataclasses.field(default_factory=SidecarConfig)
    metrics: MetricsConfig = dataclasses.field(default_factory=MetricsConfig)
    log: LogConfig = dataclasses.field(default_factory=LogConfig)
    anomaly: AnomalyConfig = dataclasses.field(default_factory=AnomalyConfig)
    health: HealthConfig = dataclasses.field(default_factory=HealthConfig)
    drift: DriftConfig = dataclasses.field(default_factory=DriftConfig)
    maintenance: MaintenanceConfig = dataclasses.field(default_factory=MaintenanceConfig)
    market: MarketConfig = dataclasses.field(default_factory=MarketConfig)
    risk: RiskConfig = dataclasses.field(default_factory=RiskConfig)
    news: NewsConfig = dataclasses.field(default_factory=NewsConfig)
    advisor: AdvisorConfig = dataclasses.field(default_factory=AdvisorConfig)

    def __post_init__(self) -> None:
        # where each key given was set, (section, key) -> the file or "environment" (`load` fills it): an
        # attribute, not a field, so it is no section and never compared
        self.source: dict[tuple[str, str], str] = {}


DRIFT_REFERENCES = ("own", "peers", "daily")  # what a level drifts against ([drift] reference; drift.py checks it)
_CHOICES = {
    ("mqtt", "protocol"): ("5", "3.1.1", "auto"),
    ("log", "level"): ("debug", "info", "warning", "error"),
    ("log", "format"): ("auto", "json", "console"),
    ("anomaly", "fuse"): ("bonferroni", "fisher", "off"),
    ("health", "drift_reference"): ("", *DRIFT_REFERENCES),
}


def _check_zone(where: str, name: str) -> None:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{where}: no time zone {name[:64]!r} in this system's database (an IANA name such as "
                          "\"Europe/Berlin\", or \"UTC\")") from None


MQTT_STRING = 65535  # bytes of UTF-8 in an MQTT string (a two-byte length)


def _check_mqtt_string(where: str, text: str) -> None:
    """What goes into the CONNECT packet as an MQTT string: at most 65535 bytes of UTF-8, no NUL."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:  # an environment value of bytes that are not UTF-8
        raise ConfigError(f"{where}: not UTF-8 text") from None
    if size > MQTT_STRING:
        raise ConfigError(f"{where}: {size} bytes of UTF-8, at most {MQTT_STRING} (an MQTT string)")
    if "\x00" in text:
        raise ConfigError(f"{where}: holds NUL, which an MQTT string cannot")


def _check_host(where: str, host: str) -> None:
    """A broker's name or address: an empty one or one with NUL or blanks never connects, silently."""
    if not host or any(c.isspace() or c == "\x00" for c in host):
        raise ConfigError(f"{where}: {host!r} is no host name or address")


# keys whose values no list or range describes: a check that raises ConfigError naming the key
_CHECKS = {
    ("anomaly", "timezone"): _check_zone,
    ("mqtt", "host"): _check_host,
    ("mqtt", "client_id"): _check_mqtt_string,
    ("mqtt", "username"): _check_mqtt_string,
}


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a number key can take and still mean something: low..high, either end open."""

    low: float
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    off: bool = False  # 0 is allowed too (it turns the thing off)

    def __contains__(self, x: float) -> bool:
        above = x > self.low if self.low_open else x >= self.low
        below = x < self.high if self.high_open else x <= self.high
        return (above and below) or (self.off and x == 0)

    def __str__(self) -> str:
        if self.high == math.inf:
            text = "positive" if self.low == 0 and self.low_open else f"at least {_number(self.low)}"
        else:
            text = (f"in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}"
                    f"{')' if self.high_open else ']'}")
        return f"0 (off) or {text}" if self.off else text


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


POSITIVE = Range(0, low_open=True)
AT_LEAST_1 = Range(1)
SHARE = Range(0, 1, low_open=True)  # a fraction or rate that must let something through; also an anomaly score
BELOW_1 = Range(0, 1, high_open=True)  # a fraction that may be 0
# seconds, about 31 years: a longer span or interval means "never", and a much longer one overflows the clocks
# it meets (datetime arithmetic to the year 9999, csp's int64 nanoseconds to 2262, a thread's wait)
LONGEST = 1e9
SECONDS = Range(0, LONGEST, low_open=True)  # a span of time
# a timer's period: a shorter one keeps a thread busy with its own alarms (at 1e-6 s the engine spins at
# 100 % CPU, its clock falls behind and a stop or a reading waits behind millions of them)
TIMER = Range(0.01, LONGEST)
INT64 = 2**63 - 1  # TOML's integers are 64-bit; so are the engine's and numpy's that the counts reach

# number keys with a tighter range than "not negative" (the rule for every other number key): limits,
# intervals and timeouts of 0 stop the thing they bound; anomaly scores run from 0 to 1, so a threshold
# above 1 silently turns detection off
RANGES = {
    ("mqtt", "keepalive"): Range(1, 65535),  # MQTT's Keep Alive is two bytes
    ("mqtt", "session_expiry"): Range(1, 4_294_967_295),  # MQTT 5's Session Expiry Interval is four bytes
    ("mqtt", "port"): Range(1, 65535),
    ("mqtt", "receive_maximum"): Range(1, 65535),  # the MQTT 5 range
    ("mqtt", "reconnect_min_delay"): TIMER,  # shorter: a busy loop of reconnects while the broker is away
    ("mqtt", "reconnect_max_delay"): TIMER,
    ("mqtt", "max_payload"): Range(1, 268_435_455),  # the largest MQTT packet
    ("mqtt", "max_qos0_backlog"): AT_LEAST_1,
    ("mqtt", "ack_deadline"): SECONDS,
    ("store", "max_backlog_rows"): AT_LEAST_1,
    ("state", "snapshot_keep"): AT_LEAST_1,
    # each snapshot serialises every analytic's state into the log: more often than a second, that is all it does
    ("state", "snapshot_interval"): Range(1, LONGEST, off=True),
    ("record", "warm_start"): Range(0, LONGEST),  # 0: start cold
    ("store", "max_backlog_age"): SECONDS,
    ("store", "retention_days"): Range(0, 36500),  # days (0: forever): the cutoff, now minus this, is a date
    ("anomaly", "max_series"): AT_LEAST_1,
    ("health", "max_sensors"): AT_LEAST_1,
    ("health", "max_series"): AT_LEAST_1,
    ("health", "forget_after"): SECONDS,
    ("market", "max_symbols"): AT_LEAST_1,
    ("store", "batch_size"): AT_LEAST_1,
    ("store", "retention_interval"): TIMER,
    ("sidecar", "timeout"): SECONDS,
    ("anomaly", "threshold"): SHARE,
    ("anomaly", "critical"): SHARE,
    ("anomaly", "tail_floor"): Range(0, 1, low_open=True, high_open=True),
    ("anomaly", "change_span"): AT_LEAST_1,
    ("anomaly", "season_buckets"): Range(1, 10080),  # at most a bucket a minute of a week (9 bytes a bucket and series)
    ("anomaly", "season_days"): Range(1, 7),
    # the change channel divides by log(erfc(change_z / sqrt 2)): near 0 that tail is 1 and its log 0 (division
    # by zero), past about 37 it underflows to 0 (no log); in between, any threshold a metric can mean
    ("anomaly", "change_z"): Range(0.1, 30),
    # readings: every row of the change channels' table holds change_window / 30 blocks from the start
    ("anomaly", "change_window"): Range(0, 86400),  # 0: off; check() wants whole blocks of 30
    ("anomaly", "change_hold"): Range(0, 1000),  # RMS units (0: off); it is squared once, so it must stay a number
    ("anomaly", "change_norm_span"): AT_LEAST_1,
    ("anomaly", "spike_z"): Range(0),  # 0: off
    ("anomaly", "regime_visits"): Range(0),  # 0: off
    ("health", "interval"): SECONDS,
    ("health", "sweep_interval"): TIMER,
    ("health", "stale_factor"): POSITIVE,
    ("health", "stale_min"): SECONDS,
    ("health", "anomaly_rate"): SHARE,
    ("health", "anomaly_score"): SHARE,
    ("health", "low_battery"): Range(0, 100),  # percent
    ("health", "band_margin"): BELOW_1,
    ("maintenance", "clear_readings"): AT_LEAST_1,
    ("maintenance", "anomaly_clear_rate"): BELOW_1,
    ("maintenance", "out_of_range_rate"): SHARE,
    ("maintenance", "out_of_range_clear_rate"): BELOW_1,
    # seconds of data time averaged into a level: 0 = off; the daily reference keeps a day of blocks per metric
    ("drift", "block"): Range(1, LONGEST, off=True),
    ("drift", "warmup"): Range(0, 10_000),  # blocks (drift.check wants 2 at least); a verdict holds block x warmup
    ("market", "bar_interval"): Range(0.001, LONGEST),  # also the period of the timer that closes quiet bars
    ("market", "bar_grace"): Range(0, LONGEST),
    ("market", "price_alert_horizon"): Range(0, LONGEST),  # 0: off (market.check: else at least 1 s)
    ("market", "signal_cooldown"): Range(0, LONGEST),
    ("market", "price_alert_threshold"): POSITIVE,
    ("market", "price_alert_horizon_multiple"): POSITIVE,
    ("market", "session_gap"): Range(0.001, LONGEST),
    ("market", "volatile_ratio"): POSITIVE,
    ("market", "calm_ratio"): POSITIVE,
    ("market", "trend_z"): POSITIVE,
    ("market", "signal_z"): POSITIVE,
    ("market", "volatile_mult"): POSITIVE,
    ("market", "calm_mult"): POSITIVE,
    ("market", "trending_mult"): POSITIVE,
    ("market", "strong_mult"): POSITIVE,
    ("market", "strong_volume"): POSITIVE,
    ("market", "news_window"): SECONDS,
    ("market", "news_min_score"): Range(0, 1),
    ("risk", "max_drawdown"): POSITIVE,
    ("risk", "max_gross_exposure"): POSITIVE,
    ("risk", "check_interval"): TIMER,
    ("risk", "max_net_exposure"): POSITIVE,
    ("risk", "max_concentration"): SHARE,
    ("risk", "max_vol_exposure"): POSITIVE,
    ("risk", "rearm_fraction"): BELOW_1,
    ("news", "timeout"): SECONDS,
    ("news", "batch_size"): AT_LEAST_1,
    ("news", "breaker_failures"): AT_LEAST_1,
    ("news", "breaker_reset"): SECONDS,
}

# (section, smaller, larger, strictly): pairs whose order gives them their meaning, e.g. a fast average
# that is slower than the slow one inverts every trend
ORDERED = (
    ("mqtt", "reconnect_min_delay", "reconnect_max_delay", False),
    ("anomaly", "threshold", "critical", False),
    ("anomaly", "short_span", "long_span", True),
    ("anomaly", "change_span", "change_norm_span", True),
    ("health", "fast_span", "baseline_span", True),
    ("health", "noise_span", "baseline_span", True),
    ("market", "fast_span", "slow_span", True),
    ("market", "vol_span", "vol_long_span", True),
    ("market", "calm_ratio", "volatile_ratio", True),
)

GROUPED = ("anomaly", "health")  # the sections whose settings can differ by group of sensors
FILE_ONLY = {(section, "groups") for section in GROUPED}  # tables of tables: not for the environment nor a group
MAX_GROUPS = 64  # groups per section: each runs a node of its own
GROUP_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")

PREFIX_KEYS = ("sensors_prefix", "market_prefix", "portfolio_prefix", "news_prefix", "output_prefix")
INPUT_PREFIX_KEYS = PREFIX_KEYS[:4]
MAX_SUBSCRIPTIONS = 100  # topic filters per agent: a feed split finer than this is a split by topic level, not by list


def _coerce(where: str, value: object, typ: type) -> object:
    """Convert a TOML or environment value to the field's type, or name the key."""
    if typing.get_origin(typ) is list:  # a TOML array of strings, or in the environment a comma-separated list
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        return value
    if isinstance(value, str) and typ is not str:
        text = value.strip()
        if typ is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        try:
            if not text.isascii() or "_" in text:  # int() and float() also take "1_883" and other scripts' digits
                raise ValueError(text)
            return typ(text)
        except ValueError:
            raise ConfigError(f"{where}: expected {typ.__name__}, got {value!r}") from None
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. protocol = 5
    if not isinstance(value, typ) or (typ is not bool and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {typ.__name__}, got {type(value).__name__} {value!r}")
    return value


def _section_types(section_cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls)}


def _apply(cfg: Config, data: dict, source: str) -> set[tuple[str, str]]:
    """Set the keys `data` names; returns them as (section, key)."""
    sections = _section_types(Config)
    given = set()
    for section, values in data.items():
        if section not in sections:
            raise ConfigError(f"{source}: unknown section [{section}]")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        for key, value in values.items():
            _set(getattr(cfg, section), section, key, value, f"{source}: {section}.{key}")
            given.add((section, key))
    return given


def _set(target: object, section: str, key: str, value: object, where: str) -> None:
    """Check one key's value against its type, choices and range, and set it on the section `target`."""
    fields = _section_types(type(target))
    if key not in fields:
        raise ConfigError(f"{where}: unknown key")
    value = _coerce(where, value, fields[key])
    choices = _CHOICES.get((section, key))
    if choices and value not in choices:
        raise ConfigError(f"{where}: must be one of {', '.join(choices)}, got {value!r}")
    if (check := _CHECKS.get((section, key))) is not None:
        check(where, value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: must be a finite number, got {value!r}")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT64:
        raise ConfigError(f"{where}: must be at most {INT64} (a 64-bit integer)")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        allowed = RANGES.get((section, key))
        if value < 0 and (allowed is None or (allowed.low == 0 and not allowed.low_open)):
            raise ConfigError(f"{where}: must not be negative, got {value!r}")
        if allowed is not None and value not in allowed:
            raise ConfigError(f"{where}: must be {allowed}, got {value!r}")
    setattr(target, key, value)


def _pop_groups(data: dict, source: str) -> dict[str, dict]:
    """Take [SECTION.groups.NAME] out of the file's tables (they are built once every other key is set)."""
    out = {}
    for section in GROUPED:
        values = data.get(section)
        groups = values.pop("groups", {}) if isinstance(values, dict) else {}
        if not isinstance(groups, dict) or not all(isinstance(t, dict) for t in groups.values()):
            raise ConfigError(f"{source}: {section}.groups: each group is a table [{section}.groups.NAME]")
        if len(groups) > MAX_GROUPS:
            raise ConfigError(f"{source}: {section}.groups: {len(groups)} groups, at most {MAX_GROUPS}")
        out[section] = groups
    return out


def _groups(section: str, base: AnomalyConfig | HealthConfig, tables: dict, source: str) -> dict[str, SensorGroup]:
    """Each group: its `sensors` filters and the section `base` with the group's keys over it."""
    groups = {}
    for name, table in tables.items():
        where = f"{source}: {section}.groups.{name}"
        if not GROUP_NAME.fullmatch(name):
            raise ConfigError(f"{where}: a group name is letters, digits, '_' or '-'")
        table = dict(table)
        if "groups" in table:
            raise ConfigError(f"{where}.groups: groups do not nest")
        if not table.get("sensors"):
            raise ConfigError(f"{where}.sensors: required: the sensor-id filters whose sensors take these settings")
        sensors = _coerce(f"{where}.sensors", table.pop("sensors"), list[str])
        for sensor_filter in sensors:
            _filter_levels(f"{where}.sensors", sensor_filter)
        settings = dataclasses.replace(base, groups={})
        for key, value in table.items():
            _set(settings, section, key, value, f"{where}.{key}")
        groups[name] = SensorGroup(sensors, settings)
    return groups


def _check_prefix(key: str, prefix: str) -> None:
    """A topic prefix the agent can subscribe under (`{prefix}/#`) and publish under."""
    if not prefix:
        raise ConfigError(f"mqtt.{key}: empty (topics are {{prefix}}/...)")
    if "+" in prefix or "#" in prefix or "\x00" in prefix:
        raise ConfigError(f"mqtt.{key}: {prefix!r} contains an MQTT wildcard (+ or #) or NUL: a prefix is a topic")
    if prefix.startswith("/") or prefix.endswith("/"):
        raise ConfigError(f"mqtt.{key}: {prefix!r} starts or ends with '/' (write levels as a/b)")
    if prefix.startswith("$"):
        raise ConfigError(f"mqtt.{key}: {prefix!r} starts with '$', which the broker reserves for itself")


def _overlap(a: str, b: str) -> bool:
    """One prefix's topics include the other's (equal, or one is a topic level above the other)."""
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def _check_agent_id(agent_id: str) -> None:
    if not AGENT_ID.fullmatch(agent_id) or len(agent_id) > AGENT_ID_MAX:
        raise ConfigError(f"agent.id: {agent_id!r} is not an agent id (1 to {AGENT_ID_MAX} letters, digits, "
                          "'.', '_' or '-', starting with a letter or digit)")


def _filter_levels(where: str, topic_filter: str) -> list[str]:
    """The levels of an MQTT topic filter, or ConfigError: `#` only as the whole last level, `+` only as a whole level."""
    if not topic_filter or "\x00" in topic_filter:
        raise ConfigError(f"{where}: {topic_filter!r} is empty or holds NUL: not a topic filter")
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if ("#" in level and (level != "#" or i != len(levels) - 1)) or ("+" in level and level != "+"):
            raise ConfigError(f"{where}: {topic_filter!r} is not a topic filter ('#' only as the last level, "
                              "'+' only as a whole level)")
    return levels


def _intersect(a: list[str], b: list[str]) -> bool:
    """Some topic matches both filters (given as their levels)."""
    for x, y in zip(a, b):
        if x == "#" or y == "#":
            return True
        if x != y and "+" not in (x, y):
            return False
    longer = a if len(a) > len(b) else b
    return len(a) == len(b) or longer[min(len(a), len(b))] == "#"  # `x/#` also matches `x`


def topic_pattern(topic_filter: str) -> str:
    """An MQTT topic filter as a regular expression over a whole topic ('+' one level, a last '#' every level
    below and the level above it), in the syntax Python's `re` and PostgreSQL share (the event log's queries)."""
    levels = topic_filter.split("/")
    many = levels[-1] == "#"
    head = levels[:-1] if many else levels
    body = "/".join("[^/]*" if level == "+" else re.escape(level) for level in head)
    if not many:
        return f"^{body}$"
    return f"^{body}(/.*)?$" if head else "^.*$"


def group_named(cfg: Config, name: str, sections: tuple[str, ...] = GROUPED) -> list[SensorGroup]:
    """The groups called `name` in `sections` (`--group NAME` of the commands); ConfigError lists the groups."""
    found = [getattr(cfg, s).groups[name] for s in sections if name in getattr(cfg, s).groups]
    if not found:
        names = sorted({n for s in sections for n in getattr(cfg, s).groups})
        raise ConfigError(f"--group {name}: no {' or '.join(f'[{s}.groups.{name}]' for s in sections)} in the "
                          f"configuration (groups: {', '.join(names) or 'none'})")
    return found


SHARE_PREFIX = "$share/"
STATELESS_FEEDS = ("news_prefix",)  # feeds whose processing keeps no per-key state: a shared subscription may split them


def subscriptions(m: MqttConfig) -> list[str]:
    """The topic filters the agent subscribes to: `mqtt.subscriptions`, or every input feed."""
    return list(m.subscriptions) or [f"{getattr(m, key)}/#" for key in INPUT_PREFIX_KEYS]


def unshared(topic_filter: str) -> str:
    """The filter of a shared subscription without its `$share/{group}/` (any other filter as it is)."""
    return topic_filter.split("/", 2)[2] if topic_filter.startswith(SHARE_PREFIX) else topic_filter


def _check_subscriptions(m: MqttConfig) -> None:
    """Each filter lies under one input prefix; `$share/{group}/` only for a feed without per-key state."""
    where = "mqtt.subscriptions"
    if len(m.subscriptions) > MAX_SUBSCRIPTIONS:
        raise ConfigError(f"{where}: {len(m.subscriptions)} topic filters, at most {MAX_SUBSCRIPTIONS} "
                          "(split by a topic level: sensors/site-a/#)")
    seen: list[tuple[str, list[str]]] = []
    for topic_filter in m.subscriptions:
        plain, group = topic_filter, None
        if topic_filter.startswith(SHARE_PREFIX):
            group, _, plain = topic_filter[len(SHARE_PREFIX):].partition("/")
            if not group or "+" in group or "#" in group or not plain:
                raise ConfigError(f"{where}: {topic_filter!r}: a shared subscription is $share/{{group}}/{{filter}}")
        elif topic_filter.startswith("$"):
            raise ConfigError(f"{where}: {topic_filter!r} starts with '$', which the broker reserves for itself "
                              "(only $share/{group}/... is allowed)")
        levels = _filter_levels(where, plain)
        feed = next((key for key in INPUT_PREFIX_KEYS if plain.startswith(getattr(m, key) + "/")), None)
        if feed is None:
            raise ConfigError(f"{where}: {topic_filter!r} is under no input prefix (mqtt.sensors_prefix, "
                              "market_prefix, portfolio_prefix, news_prefix): it would take other topics")
        if group is not None and feed not in STATELESS_FEEDS:
            raise ConfigError(f"{where}: {topic_filter!r}: a shared subscription hands each message to any one "
                              f"agent of the group, so the per-key state of the mqtt.{feed} feed would be split "
                              "between agents; split it by topic subtree instead (only the news feed may be shared)")
        for other, other_levels in seen:
            if _intersect(levels, other_levels):
                raise ConfigError(f"{where}: {topic_filter!r} overlaps {other!r}: a message matching both "
                                  "would be delivered, and processed, twice")
        seen.append((topic_filter, levels))


def check(cfg: Config) -> None:
    """Rules between keys (each key's own range is checked as it is read); ConfigError names the key."""
    _check_agent_id(cfg.agent.id)
    prefixes = {key: getattr(cfg.mqtt, key) for key in PREFIX_KEYS}
    for key, prefix in prefixes.items():
        _check_prefix(key, prefix)
    for i, (key, prefix) in enumerate(prefixes.items()):
        for other, other_prefix in list(prefixes.items())[:i]:
            if _overlap(prefix, other_prefix):
                raise ConfigError(f"mqtt.{key}: {prefix!r} overlaps mqtt.{other} ({other_prefix!r}): "
                                  "each feed and the output need topics of their own")
    _check_subscriptions(cfg.mqtt)
    sections = [(section, getattr(cfg, section)) for section in _section_types(Config)]
    sections += [(f"{section}.groups.{name}", group.settings) for section in GROUPED
                 for name, group in getattr(cfg, section).groups.items()]
    for where, values in sections:
        _check_order(where, values)
        if isinstance(values, AnomalyConfig):
            window = values.change_window
            if window and (window < 60 or window % 30):
                raise ConfigError(f"{where}.change_window: must be 0 (off) or a multiple of 30 from 60 on (whole "
                                  f"blocks of 30 readings, at least two), got {window}")


def _check_order(where: str, values: object) -> None:
    """The ORDERED pairs of one section (`where`: its name, or a group's)."""
    section = where.split(".", 1)[0]
    for name, smaller, larger, strictly in ORDERED:
        if name != section:
            continue
        low, high = getattr(values, smaller), getattr(values, larger)
        if low > high or (strictly and low == high):
            raise ConfigError(f"{where}.{smaller}: must be {'below' if strictly else 'at most'} "
                              f"{where}.{larger} ({_number(high)}), got {_number(low)}")


def _env_overrides(environ: typing.Mapping[str, str]) -> dict:
    """`EDGEWATCH_<SECTION>_<KEY>` -> {section: {key: text}}; unknown names are errors."""
    out: dict[str, dict[str, str]] = {}
    sections = _section_types(Config)
    for name, value in environ.items():
        if not name.startswith("EDGEWATCH_"):
            continue
        rest = name[len("EDGEWATCH_") :].lower()
        section = next((s for s in sections if rest.startswith(s + "_")), None)
        key = rest[len(section) + 1 :] if section else ""
        if section is None or key not in _section_types(sections[section]):
            raise ConfigError(f"environment: {name}: no such configuration key")
        if (section, key) in FILE_ONLY:
            raise ConfigError(f"environment: {name}: {section}.{key} is set in the file ([{section}.{key}.NAME])")
        out.setdefault(section, {})[key] = value
    return out


def load(path: str | os.PathLike | None = None, environ: typing.Mapping[str, str] | None = None) -> Config:
    """Read the TOML file (if any), then environment overrides; validate everything."""
    cfg = Config()
    source = cfg.source  # where each key given was set: the file, or the environment
    groups = {}
    if path is not None:
        data = _read_toml(path)
        groups = _pop_groups(data, str(path))
        source |= dict.fromkeys(_apply(cfg, data, str(path)), str(path))
    source |= dict.fromkeys(_apply(cfg, _env_overrides(os.environ if environ is None else environ), "environment"),
                            "environment")
    for section, tables in groups.items():
        getattr(cfg, section).groups = _groups(section, getattr(cfg, section), tables, str(path))
    if path is not None and ("agent", "id") not in source:  # two agents on one host differ by their files
        cfg.agent.id = _id_token(f"{_host_name()}-{Path(path).stem}")
    if ("mqtt", "client_id") not in source:
        cfg.mqtt.client_id = f"edgewatch-{cfg.agent.id}"
    try:
        check(cfg)
    except ConfigError as e:
        raise located(cfg, e) from None
    return cfg


def located(cfg: Config, error: ConfigError) -> ConfigError:
    """`error`, which names a key, with where that key was set (the file, or the environment) in front, as a
    key's own error has it; the checks made after loading (check-config's `validate`) use it too."""
    key = tuple(str(error).split(":", 1)[0].split(".", 1))
    where = cfg.source.get(key)
    return ConfigError(f"{where}: {error}") if where else error


def _read_toml(path: str | os.PathLike) -> dict:
    """The file's TOML table, or ConfigError naming the file and what is wrong with it."""
    if os.path.exists(path) and not os.path.isdir(path) and not os.path.isfile(path):  # a FIFO would block
        raise ConfigError(f"{path}: not a regular file, not a configuration file")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a configuration file") from None
    except OSError as e:
        raise ConfigError(f"{path}: {(e.strerror or str(e)).lower()}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_FILE_BYTES // 1024} KiB, not a configuration file")
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")  # a byte order mark some editors write first
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (invalid byte at offset {e.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    except RecursionError:  # arrays or inline tables nested thousands deep: no configuration is
        raise ConfigError(f"{path}: invalid TOML: nested too deeply") from None
    except (ValueError, MemoryError):  # an integer of more digits than Python converts (4300)
        raise ConfigError(f"{path}: invalid TOML: a value too large to read") from None


def read_secret(cfg_key: str, path: str) -> str | None:
    """Contents of a secret file (stripped), None when no file is configured."""
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as e:
        raise ConfigError(f"{cfg_key}: cannot read {path}: {e.strerror}") from None



def secret_exposure(path: str) -> str | None:
    """Who besides the service can read a secret file, or None: readable by others, or by a group other
    than the service's (or this process's own), it is a password anyone on the machine may copy."""
    try:
        st = os.stat(path)
    except OSError:
        return None  # unreadable or absent: reading it reports that
    mode = stat.S_IMODE(st.st_mode)
    if mode & stat.S_IROTH:
        return f"readable by everyone (mode {mode:04o})"
    if mode & stat.S_IRGRP and st.st_gid not in _trusted_gids():
        return f"readable by group {_group_name(st.st_gid)} (mode {mode:04o})"
    return None


def _trusted_gids() -> set[int]:
    gids = {os.getegid()}
    try:
        gids.add(grp.getgrnam(SERVICE_GROUP).gr_gid)
    except KeyError:
        pass
    return gids


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def exposed_secrets(cfg: Config) -> list[tuple[str, str, str]]:
    """(key, path, who else can read it) for each configured secret file that others can read."""
    out = []
    for section, key in SECRET_KEYS:
        path = getattr(getattr(cfg, section), key)
        exposure = secret_exposure(path) if path else None
        if exposure:
            out.append((f"{section}.{key}", path, exposure))
    return out


def secret_fix(path: str) -> str:
    return f"chmod 0600 {path} (or 0640 with group {SERVICE_GROUP})"
