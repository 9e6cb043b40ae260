"""`edge-agent run`: the service around the live graph — start, readiness, heartbeat, reload, clean stop.

The csp engine runs on its own thread (`csp.run_on_thread`) so that the main
thread is free for POSIX signals: csp handles SIGINT itself only when it owns
the main thread, and never SIGTERM or SIGHUP. The stop order is the one that
loses nothing: stop taking messages (unacknowledged ones are redelivered next
session), stop the engine (its adapter manager joins the push thread first, so
nothing is pushed into a stopped engine), drain the writer (commits, then
acknowledgements and outbox publishes), wait briefly for PUBACKs, publish
status `offline`, disconnect.

SIGHUP re-reads the configuration and applies, in place, only the keys that the
running graph reads at run time (`LIVE_KEYS`: the log level and format, the
anomaly event thresholds, the risk limits, the advisor's weights and gates);
every other changed key is reported as `needs_restart` and left as it was, so
the running graph never mixes old and new settings of one analytic.
"""

from __future__ import annotations

import dataclasses
import gc
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

import csp
from csp import ts
from edgewatch.agent import config
from edgewatch.agent.analytics import snapshot
from edgewatch.agent.analytics.sensor_groups import StatesOf
from edgewatch.agent.analytics.snapshot import StateBook, snapshots
from edgewatch.agent.analytics.topology import analytics
from edgewatch.agent.commands.check_config import validate
from edgewatch.agent.commands.logfile import open_log
from edgewatch.agent.commands.replay import RUN_LIMIT, CaptureSource, capture_feed, learn_graph, split
from edgewatch.agent.eventlog.outbox import Outbox
from edgewatch.agent.eventlog.sink import sink
from edgewatch.agent.eventlog.snapshots import Identity, SnapshotWriter, restore
from edgewatch.agent.eventlog.store import StoreError
from edgewatch.agent.ingest.capture import PATTERN as CAPTURE_PATTERN
from edgewatch.agent.eventlog.views import StatusViews
from edgewatch.agent.eventlog.writer import StoreWriter
from edgewatch.agent.ingest.capture import CaptureWriter
from edgewatch.agent.ingest.mqtt import Link, MqttAdapterManager
from edgewatch.agent.ingest.ring import ReadingRing
from edgewatch.agent.ingest.validate import Validator
from edgewatch.agent.ops import metrics
from edgewatch.agent.ops.heartbeat import Heartbeat, heartbeat
from edgewatch.agent.ops.http import parse_listen, serve
from edgewatch.agent.ops.status_page import StatusPage
from edgewatch.agent.records import RECORD_TYPES
from edgewatch.agent.timeutil import utcnow
from edgewatch.common import logs
from edgewatch.common.notify import Notifier

log = logs.get("edgewatch.agent.commands.run")

BEAT_EVERY = timedelta(seconds=1)
# section -> keys whose nodes read `cfg` at run time ("*": the whole section); the rest are copied at start
LIVE_KEYS = {
    "log": "*",
    "anomaly": {"threshold", "critical"},
    "risk": {"max_drawdown", "max_gross_exposure", "max_net_exposure", "max_concentration",
             "concentration_min_gross", "max_vol_exposure", "rearm_fraction"},
    "advisor": {"signal_weight", "news_weight", "news_horizon", "enter", "exit", "min_headroom"},
}


def snapshot_identity(cfg: config.Config, agent: str | None = None) -> Identity:
    """What a snapshot taken or restored under `cfg` is tied to: the agent (`agent.id`), the code, and the
    settings that shape the state (the live keys do not)."""
    return Identity(agent or cfg.agent.id, snapshot.version(), snapshot.config_hashes(cfg, LIVE_KEYS))


GC_THRESHOLDS = (100_000, 50, 100)  # allocations per young collection, then per older ones
T = TypeVar("T")
STOP_TIMEOUT = 10.0  # seconds the whole stop may take (docs/reference/commands.md)


@csp.node
def join(a: ts[T], b: ts[T]) -> ts[T]:
    """Either feed's batch; both in one cycle (a warm-up batch meeting a live one) become one list."""
    if csp.ticked(a) and csp.ticked(b):
        return a + b
    return a if csp.ticked(a) else b


@csp.node
def from_time(x: ts[T], start: datetime) -> ts[T]:
    """Pass ticks from engine time `start` on: what the warm-up re-derives was logged by the run that saw it."""
    if csp.now() >= start:
        return x


@csp.graph(memoize=False)
def live(mgr: MqttAdapterManager, writer: object, cfg: config.Config, hb: Heartbeat, beat_every: timedelta,
         warm: object = None, live_from: datetime | None = None, book: StateBook | None = None,
         snapshot_sink: object = None):
    """MQTT in -> analytics -> sink (log, acknowledgements); the outbox takes it from the log.

    With `warm` (a CaptureSource of captured messages) the engine starts at the first captured
    message's time and runs the captures through the same analytics first, in event time and as fast
    as it can (csp catches up before it takes live pushes), so detectors, health baselines and
    market regimes resume where the last run left them; nothing before `live_from` reaches the log.
    With `book` the analytics keep their state in it (restored from a snapshot, or fresh), and every
    `state.snapshot_interval` it goes to `snapshot_sink` (an eventlog.snapshots.SnapshotWriter).
    """
    feeds = {kind: mgr.subscribe(kind) for kind in RECORD_TYPES}
    batches = csp.null_ts(dict)
    if warm is not None:
        batches = capture_feed(warm)
        past = split(batches)
        feeds = {kind: join(getattr(past, kind), feed) for kind, feed in feeds.items()}
    out = analytics(feeds["sensor"], feeds["trade"], feeds["quote"], feeds["position"], feeds["pnl"],
                    feeds["news"], cfg, book)
    events, bars = out.events, out.bars
    if warm is not None:
        events, bars = from_time(events, live_from), from_time(bars, live_from)
    marks = mgr.marks()
    sink(events, bars, mgr.dead_letters(), marks, writer, mgr.durable)
    if book is not None:
        snapshots(out.events, marks, batches, book, timedelta(seconds=cfg.state.snapshot_interval), live_from,
                  snapshot_sink)
    heartbeat(hb, beat_every)


def warm_source(cfg: config.Config, exclude: Path | None, after: datetime | None = None,
                until: datetime | None = None, feeds: set[str] | None = None,
                sensors: Callable[[str], bool] | None = None) -> CaptureSource | None:
    """The captures to re-run at start (not the file this run writes), or None: those received after `after`
    (the watermark of a restored snapshot), else those of the last `record.warm_start` seconds (up to `until`,
    of `feeds` and `sensors` only); never past now: a line stamped ahead of the clock (a clock set back since)
    would start the live engine in the future, where it waits for that time to come."""
    if not cfg.record.path or not Path(cfg.record.path).is_dir() or (after is None and cfg.record.warm_start <= 0):
        return None
    files = [p for p in sorted(Path(cfg.record.path).glob(CAPTURE_PATTERN)) if p != exclude]
    now = utcnow()
    if after is not None:
        source = CaptureSource(files, cfg, after=after, until=now)
    else:
        source = CaptureSource(files, cfg, since=now - timedelta(seconds=cfg.record.warm_start),
                               until=min(until, now) if until is not None else now, feeds=feeds, sensors=sensors)
    return source if source.first is not None else None


def prewarm(book: StateBook, cfg: config.Config, exclude: Path | None) -> dict | None:
    """After a restore that left states out (`book.stale`: their settings changed), warm those as a start
    without a snapshot would: the analytics run over the captures of the last `record.warm_start` seconds up to
    the snapshot's watermark, in historical mode and off the log, and the book takes the states it lacks from
    that run (the restored ones go on from the snapshot; the captures after it then run through all of them).
    Only the feeds those states learn from are read (a market setting changed: no sensor reading), and of the
    sensors only those that shape a state the snapshot does not give (a sensor group's settings changed: that
    group's sensors). Returns what it did, for the log, or None (no captures before the watermark)."""
    states_of, restored = StatesOf(cfg), set(book.restored)
    source = warm_source(cfg, exclude, until=book.water, feeds=snapshot.feeds_of(list(book.stale)),
                         sensors=lambda sensor_id: not restored.issuperset(states_of(sensor_id)))
    if source is None:
        return None
    t0 = time.perf_counter()
    warmed = StateBook()
    try:
        csp.run(learn_graph, source, cfg, warmed, starttime=source.first, endtime=RUN_LIMIT)
    except Exception as e:  # noqa: BLE001 - a failed warm-up costs warmth, never the start
        log.warning("state_prewarm_failed", error=f"{type(e).__name__}: {e}", states=sorted(book.stale))
        return None
    return {"states": book.fill(warmed), "captured_from": source.first.isoformat() + "Z",
            "messages": sum(source.accepted.values()), "seconds": round(time.perf_counter() - t0, 3)}


class _ServiceHeartbeat(Heartbeat):
    """The engine's heartbeat, which also runs the service's `heartbeat()` hook."""

    def __init__(self, service: "Service", notifier: Notifier, max_age: float):
        super().__init__(notifier, max_age=max_age)
        self.service = service

    def beat(self) -> None:
        super().beat()
        self.service.heartbeat()


class Service:
    """One running agent. Hook points: `on_ready()` (once, when ready) and `heartbeat()` (every beat)."""

    def __init__(self, cfg: config.Config, config_path: str | None = None, notifier: Notifier | None = None):
        self.cfg = cfg
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self.hb = _ServiceHeartbeat(self, self.notifier, max_age=5 * BEAT_EVERY.total_seconds())
        self.ready = threading.Event()
        self._wake = threading.Event()  # a signal arrived
        self._stopping = False
        self._reload = False
        self.store = open_log(cfg.store.url, checkpoint_in_background=True, agent_id=cfg.agent.id)
        self.link = Link(cfg)
        self.outbox = Outbox(self.store, self.link)
        self.writer = StoreWriter(self.store, batch_size=cfg.store.batch_size, on_commit=self.outbox.on_commit,
                                  on_rows=self.outbox.on_rows,
                                  retention=(cfg.store.retention_days, cfg.store.retention_rows,
                                             cfg.store.retention_dead_letters))
        self.outbox.writer = self.writer
        metrics.watch_event_log(self.writer, self.outbox)
        self.capture = _capture(cfg.record)
        # the status page exists only where /metrics does; it reads the log and this ring, never the engine
        self.ring = ReadingRing(cfg.metrics.status_readings, cfg.metrics.status_sensors) \
            if parse_listen(cfg.metrics.listen) else None
        self.manager = MqttAdapterManager(self.link, Validator(cfg), self.capture, self.ring)
        self.snapshots: SnapshotWriter | None = None
        if cfg.state.snapshot_interval > 0:
            self.snapshots = SnapshotWriter(self.store, snapshot_identity(cfg), cfg.state.snapshot_keep)
        self.book: StateBook | None = None
        self.http = None
        self.status: StatusPage | None = None

    # -- hook points ------------------------------------------------------------------------
    def heartbeat(self) -> None:
        """Engine thread, every BEAT_EVERY (after `hb` itself beat): readiness is checked here."""
        metrics.ENGINE_HEARTBEAT.set(time.time())
        unacked, age = self.manager.unacked(utcnow())
        metrics.UNACKED.set(unacked)
        metrics.UNACKED_AGE.set(age)
        metrics.WRITER_BACKLOG_AGE.set(self.writer.backlog_age())
        if not self.ready.is_set() and self.link.connected.is_set() and self.writer_alive():
            self.on_ready()

    def on_ready(self) -> None:
        """Broker connected + graph running + log writable: tell systemd, log it once."""
        self.ready.set()
        gc.freeze()  # start-up objects (modules, the wired graph) never die: keep them out of GC passes
        self.notifier.ready(f"connected to {self.cfg.mqtt.host}:{self.cfg.mqtt.port}")
        log.info("agent_ready", broker=f"{self.cfg.mqtt.host}:{self.cfg.mqtt.port}", protocol=self.link.protocol,
                 store=self.store.display_url, agent_id=self.cfg.agent.id, client_id=self.cfg.mqtt.client_id,
                 subscriptions=self.link.topics)

    def writer_alive(self) -> bool:
        return self.writer._thread.is_alive()

    def health(self) -> dict:
        """For the /health endpoint: the engine beats, the writer runs and keeps up, the broker granted every
        input subscription, and every message it delivered is acknowledged within `mqtt.ack_deadline`;
        `failing` names what does not hold."""
        unacked, unacked_age = self.manager.unacked(utcnow())
        backlog, backlog_age = self.writer.pending_rows, self.writer.backlog_age()
        store = self.cfg.store
        checks = {
            "engine_heartbeat": self.hb.fresh(),
            "writer_alive": self.writer_alive(),
            "writer_backlog": backlog <= store.max_backlog_rows and backlog_age <= store.max_backlog_age,
            "subscriptions": not self.link.refused,
            "acknowledgements": unacked_age <= self.cfg.mqtt.ack_deadline,
        }
        return {"ok": all(checks.values()), "failing": [name for name, ok in checks.items() if not ok],
                "engine_heartbeat_age": round(self.hb.age(), 3), "mqtt_connected": self.link.connected.is_set(),
                "ready": self.ready.is_set(), "subscriptions_refused": dict(self.link.refused),
                "outbox_inflight": self.outbox.backlog(),
                "writer_pending_rows": backlog, "writer_backlog_age": round(backlog_age, 3),
                "unacked_messages": unacked, "oldest_unacked_age": round(unacked_age, 3)}

    # -- life cycle ---------------------------------------------------------------------------
    def request_stop(self, *_sig) -> None:
        self._stopping = True
        self._wake.set()

    def request_reload(self, *_sig) -> None:
        self._reload = True
        self._wake.set()

    def run(self) -> int:
        """Start everything, serve until SIGTERM/SIGINT, stop cleanly. Returns the exit code."""
        # per-sensor state is long-lived and large: with the default young-generation threshold (700)
        # the collector keeps re-scanning it, which cost much of the throughput at 100k sensors (docs/experiments.md)
        gc.set_threshold(*GC_THRESHOLDS)
        for sig, handler in ((signal.SIGTERM, self.request_stop), (signal.SIGINT, self.request_stop),
                             (signal.SIGHUP, self.request_reload)):
            signal.signal(sig, handler)
        self.writer.start()
        self.outbox.start()
        if self.ring is not None:
            self.status = StatusPage(StatusViews(self.cfg, self.ring))
        self.http = serve(self.cfg.metrics.listen, metrics.REGISTRY, self.health, self.status)
        restored = None
        if self.snapshots is not None:
            self.book, restored = restore(self.store, self.snapshots.ident)
            if self.book.stale:  # states a restore left out; before the engine runs, nothing else beats the watchdog
                with self.notifier.busy(f"warming {len(self.book.stale)} states up from the captures"):
                    warmed = prewarm(self.book, self.cfg, self.capture.path if self.capture else None)
                if warmed is not None:
                    log.info("state_prewarmed", **warmed)
            self.snapshots.start()
        self.link.start()
        warm = warm_source(self.cfg, self.capture.path if self.capture else None,
                           after=self.book.water if restored else None)
        now = utcnow()
        runner = csp.run_on_thread(live, self.manager, self.writer, self.cfg, self.hb, BEAT_EVERY, warm, now,
                                   self.book, self.snapshots,
                                   starttime=warm.first if warm else now, realtime=True, daemon=True)
        if warm is not None:
            log.info("warm_start", captured_from=warm.first.isoformat() + "Z",
                     **({"after_snapshot": restored["id"]} if restored else {"seconds": self.cfg.record.warm_start}))
        log.info("agent_started", config=self.config_path, store=self.store.display_url,
                 record=self.cfg.record.path or None)
        failed = False
        while not self._stopping:
            self._wake.wait(1.0)
            self._wake.clear()
            if self._reload and not self._stopping:
                self._reload = False
                self.reload()
            if not runner.is_alive():
                failed = True
                break
        return self.shutdown(runner, failed)

    def shutdown(self, runner, failed: bool = False) -> int:
        t0 = time.monotonic()
        self.notifier.stopping()
        log.info("agent_stopping")
        self.link.stop_accepting()
        self.outbox.writer = None  # the writer is about to drain and stop: the outbox marks on its own
        runner.stop_engine()
        try:
            runner.join()
        except RuntimeError as e:
            failed = True
            log.error("engine_failed", error=repr(e.__cause__ or e))
        budget = STOP_TIMEOUT - 2.0
        self.writer.close(timeout=max(1.0, budget - (time.monotonic() - t0)))
        if self.snapshots is not None:
            self._final_snapshot(failed, max(0.5, budget - (time.monotonic() - t0)))
        self.outbox.close(timeout=min(2.0, max(0.2, budget - (time.monotonic() - t0))))
        self.link.close(timeout=1.0)
        if self.capture is not None:
            self.capture.close()
        if self.status is not None:
            self.status.close()
        if self.http is not None:
            self.http.close()
        self.store.close()
        log.info("agent_stopped", seconds=round(time.monotonic() - t0, 3), failed=failed)
        return 1 if failed else 0

    def _final_snapshot(self, failed: bool, timeout: float) -> None:
        """The engine has stopped and its output is committed: save the state as it stands (not after a
        failed engine, whose state may be half-updated), once the periodic ones queued before are written."""
        self.snapshots.close(timeout)
        if failed or self.book is None:
            return
        try:
            self.snapshots.save(self.book)
        except Exception as e:  # noqa: BLE001 - the stop goes on; the next start uses an older snapshot
            log.warning("state_snapshot_failed", error=repr(e))

    def reload(self) -> None:
        """SIGHUP: apply what can change live; name what needs a restart. A bad file changes nothing."""
        self.notifier.reloading()
        try:
            new = config.load(self.config_path)
            validate(new)  # every check a start makes (check-config's): what a start would refuse never applies
        except Exception as e:  # noqa: BLE001 - whatever is wrong with the file, the agent goes on as it was
            error = str(e) if isinstance(e, config.ConfigError) else f"{self.config_path}: {type(e).__name__}: {e}"
            log.error("reload_rejected", error=error)
            self.notifier.ready()
            return
        applied, needs_restart = [], []
        for s in (f.name for f in dataclasses.fields(new)):
            _apply_live(s, getattr(self.cfg, s), getattr(new, s), LIVE_KEYS.get(s, ()), applied, needs_restart)
        logs.setup(self.cfg.log.level, self.cfg.log.format)
        log.info("config_reloaded", applied=applied, needs_restart=needs_restart)
        self.notifier.ready()


def _apply_live(where: str, live: object, new: object, live_keys: object, applied: list[str],
                needs_restart: list[str]) -> None:
    """Set on the running section `live` the `live_keys` that `new` changes; name the other changed keys. A
    group's live keys are live too, as long as the groups and their sensors stay as they are."""
    for f in dataclasses.fields(new):
        old_value, new_value = getattr(live, f.name), getattr(new, f.name)
        if old_value == new_value:
            continue
        if live_keys == "*" or f.name in live_keys:
            setattr(live, f.name, new_value)
            applied.append(f"{where}.{f.name}")
        elif f.name == "groups" and [(n, g.sensors) for n, g in old_value.items()] == \
                [(n, g.sensors) for n, g in new_value.items()]:
            for name, group in new_value.items():
                _apply_live(f"{where}.groups.{name}", old_value[name].settings, group.settings, live_keys, applied,
                            needs_restart)
        else:
            needs_restart.append(f"{where}.{f.name}")


def run_command(args) -> int:
    """`edge-agent run [--config PATH]`: the checks of `check-config` first, so a bad setting is one line, exit 2."""
    cfg = config.load(args.config)
    validate(cfg)
    logs.setup(cfg.log.level, cfg.log.format)
    for key, path, exposure in config.exposed_secrets(cfg):
        log.warning("secret_file_exposed", key=key, path=path, exposure=exposure, fix=config.secret_fix(path))
    try:
        service = Service(cfg, args.config)
    except StoreError as e:  # a database server that may come back: a runtime failure, restarted by systemd
        print(f"edge-agent run: {e}", file=sys.stderr)
        return 1
    return service.run()


def _capture(cfg: config.RecordConfig) -> CaptureWriter | None:
    """The capture writer, or ConfigError naming record.path when its directory cannot be written."""
    if not cfg.path:
        return None
    try:
        return CaptureWriter(cfg)
    except OSError as e:
        raise config.ConfigError(f"record.path: {e.filename or cfg.path}: {(e.strerror or str(e)).lower()}") from None
