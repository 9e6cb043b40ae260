"""`edge-agent replay`: the live analytics graph over capture files, in csp historical mode.

Engine time is each message's `received_at`, the clock the live engine ran on
when it consumed it, so timers, bars and windows behave as they did live and the
same input yields the same event ids. The run goes as fast as the graph allows
and ends at the last captured message.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import csp
from csp import ts
from csp.impl.pulladapter import PullInputAdapter
from csp.impl.wiring import py_pull_adapter_def
from edgewatch.agent import config
from edgewatch.agent.analytics.topology import analytics
from edgewatch.agent.commands.logfile import open_log
from edgewatch.agent.config import Config, ConfigError
from edgewatch.agent.eventlog.sink import sink
from edgewatch.agent.eventlog.store import StoreError
from edgewatch.agent.eventlog.writer import StoreWriter
from edgewatch.agent.ingest.capture import read_captures
from edgewatch.agent.ingest.validate import Parsed, Validator
from edgewatch.agent.records import (
    RECORD_TYPES,
    BatchMark,
    DeadLetter,
    Headline,
    Pnl,
    Position,
    Quote,
    SensorReading,
    Trade,
)
from edgewatch.agent.timeutil import ENGINE_LAST

# The engine stops at the last message; this only bounds the run: the last time the engine can represent (an end
# a span past the first message would overflow for data near it; CaptureReader skips lines outside that range)
RUN_LIMIT = ENGINE_LAST


class CaptureSource:
    """Captured messages, validated, grouped into one batch per distinct `received_at`."""

    def __init__(self, paths: list, cfg: Config, since: datetime | None = None, after: datetime | None = None,
                 until: datetime | None = None, feeds: set[str] | None = None,
                 sensors: Callable[[str], bool] | None = None):
        """Messages received at or after `since`, strictly after `after` (a snapshot's watermark), and at or
        before `until`; of the input `feeds` only (`RECORD_TYPES` names, None: all), and of the sensors whose id
        `sensors` accepts (None: all)."""
        self.reader = read_captures(paths)
        self._items = iter(self.reader)
        if since is not None:
            self._items = (i for i in self._items if i[0] >= since)
        if after is not None:
            self._items = (i for i in self._items if i[0] > after)
        if until is not None:
            self._items = itertools.takewhile(lambda i: i[0] <= until, self._items)
        self.validator = Validator(cfg)
        self.feeds = feeds
        self.sensors = sensors
        self.accepted: Counter[str] = Counter()
        self.rejected: list[DeadLetter] = []
        self.last: datetime | None = None
        self._next = next(self._items, None)
        self.first = self._next[0] if self._next else None

    def next_batch(self) -> tuple[datetime, dict] | None:
        """(engine time, {kind: [records]}); the last batch carries `done`."""
        if self._next is None:
            return None
        when = max(self._next[0], self.last or self._next[0])  # a clock step back must not reorder the engine
        batch: dict[str, list] = {}
        while self._next is not None and self._next[0] <= when:
            received_at, topic, payload = self._next
            self._next = next(self._items, None)
            if self.feeds is not None and self.validator.feed(topic) not in self.feeds:
                continue  # another feed's message: not decoded
            if self.sensors is not None and (sensor_id := self.validator.sensor_of(topic)) is not None \
                    and not self.sensors(sensor_id):
                continue  # another sensor's reading: not decoded either
            r = self.validator.parse(topic, payload, received_at)
            if isinstance(r, Parsed):
                batch.setdefault(r.kind, []).append(r.record)
                self.accepted[r.kind] += 1
            else:
                self.rejected.append(r)
        batch["done"] = self._next is None
        self.last = when
        return when, batch


class _CaptureAdapter(PullInputAdapter):
    def __init__(self, source: CaptureSource):
        self.source = source
        super().__init__()

    def next(self):
        return self.source.next_batch()


capture_feed = py_pull_adapter_def("capture_feed", _CaptureAdapter, ts[dict], source=object)


@csp.node
def split(batches: ts[dict]) -> csp.Outputs(
    sensor=ts[list[SensorReading]],
    trade=ts[list[Trade]],
    quote=ts[list[Quote]],
    position=ts[list[Position]],
    pnl=ts[list[Pnl]],
    news=ts[list[Headline]],
    done=ts[bool],
):
    """One batch of mixed records -> the six typed feeds the analytics take, as live."""
    b = batches
    if "sensor" in b:
        csp.output(sensor=b["sensor"])
    if "trade" in b:
        csp.output(trade=b["trade"])
    if "quote" in b:
        csp.output(quote=b["quote"])
    if "position" in b:
        csp.output(position=b["position"])
    if "pnl" in b:
        csp.output(pnl=b["pnl"])
    if "news" in b:
        csp.output(news=b["news"])
    if b["done"]:
        csp.output(done=True)


@csp.graph(memoize=False)
def replay_graph(source: object, writer: object, cfg: Config):
    """Captures -> the same `analytics` as live -> the log; stops after the last message."""
    feeds = split(capture_feed(source))
    out = analytics(feeds.sensor, feeds.trade, feeds.quote, feeds.position, feeds.pnl, feeds.news, cfg)
    sink(out.events, out.bars, csp.null_ts(list[DeadLetter]), csp.null_ts(BatchMark), writer, None)
    csp.stop_engine(feeds.done)


@csp.node
def discard(x: ts[object]):
    """Consumes a feed nobody needs, so that csp keeps the nodes that make it (their state is what counts)."""


@csp.graph(memoize=False)
def learn_graph(source: object, cfg: Config, book: object):
    """Captures -> the same `analytics` as live, keeping their state in `book`; nothing is logged."""
    feeds = split(capture_feed(source))
    out = analytics(feeds.sensor, feeds.trade, feeds.quote, feeds.position, feeds.pnl, feeds.news, cfg, book)
    discard(out.events)
    discard(out.bars)
    csp.stop_engine(feeds.done)


class _CountingWriter:
    """The store writer, counting what the graph submits (every event, new or already logged)."""

    def __init__(self, writer: StoreWriter):
        self.writer = writer
        self.events: Counter[tuple[str, str]] = Counter()  # (kind, severity) -> count
        self.bars = 0

    def submit(self, events=(), dead_letters=(), bars=(), on_durable=None) -> None:
        for e in events:
            self.events[e.kind, e.severity] += 1
        self.bars += len(bars)
        self.writer.submit(events=events, dead_letters=dead_letters, bars=bars, on_durable=on_durable)


def replay(paths: list[str], cfg: Config, db: str) -> dict:
    """Run the analytics over `paths` into the log at `db`; returns the summary."""
    source = CaptureSource(paths, cfg)
    new_events = [0]
    writer = StoreWriter(open_log(db, agent_id=cfg.agent.id), batch_size=cfg.store.batch_size,
                         on_commit=lambda rows: new_events.__setitem__(0, new_events[0] + len(rows)))
    counting = _CountingWriter(writer)
    started = time.perf_counter()
    writer.start()
    try:
        if source.first is not None:
            csp.run(replay_graph, source, counting, cfg, starttime=source.first, endtime=RUN_LIMIT, realtime=False)
    finally:
        writer.close(timeout=60.0)
    seconds = time.perf_counter() - started
    messages = source.reader.lines
    return {
        "files": len(source.reader.files),
        "messages": messages,
        "accepted": dict(source.accepted),
        "rejected": len(source.rejected),
        "rejected_examples": [d.reason for d in source.rejected[:5]],
        "skipped_lines": source.reader.skipped,
        "unreadable_files": list(source.reader.unreadable),
        "first": source.first,
        "last": source.last,
        "events": sum(counting.events.values()),
        "events_by_kind": dict(counting.events),
        "new_events": new_events[0],
        "bars": counting.bars,
        "seconds": seconds,
        "messages_per_second": messages / seconds if seconds > 0 else 0.0,
        "db": db,
    }


def _print_summary(s: dict, out=None) -> None:
    out = out or sys.stdout
    span = f"{s['first']:%Y-%m-%d %H:%M:%S} .. {s['last']:%Y-%m-%d %H:%M:%S} UTC" if s["first"] else "empty"
    accepted = ", ".join(f"{k} {s['accepted'][k]}" for k in RECORD_TYPES if k in s["accepted"]) or "none"
    print(f"replayed {s['messages']} messages from {s['files']} file(s), {span}", file=out)
    print(f"  accepted: {accepted}; rejected {s['rejected']}; damaged lines skipped {s['skipped_lines']}", file=out)
    for path in s.get("unreadable_files", ()):
        print(f"    skipped, cannot be read: {path}", file=out)
    for reason in s["rejected_examples"]:
        print(f"    rejected: {reason}", file=out)
    print(f"  events: {s['events']} ({s['new_events']} new in the log, the rest already there); bars: {s['bars']}",
          file=out)
    for (kind, severity), n in sorted(s["events_by_kind"].items()):
        print(f"    {kind:<12} {severity:<9} {n}", file=out)
    print(f"  {s['seconds']:.2f} s, {s['messages_per_second']:,.0f} messages/s", file=out)
    print(f"explore: edge-agent events --db {s['db']}", file=out)


def replay_command(args) -> int:
    """`edge-agent replay CAPTURE... [--config PATH] [--db URL|PATH]`."""
    cfg = config.load(args.config)
    missing = [p for p in args.captures if not Path(p).exists()]
    if missing:
        raise ConfigError(f"{missing[0]}: no such capture file or directory")
    try:
        summary = replay(args.captures, cfg, args.db or cfg.store.url)
    except StoreError as e:  # a database server that cannot be used (a SQLite file's problem is a ConfigError)
        print(f"edge-agent replay: {e}", file=sys.stderr)
        return 1
    _print_summary(summary)
    return 0
