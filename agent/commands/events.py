"""`edge-agent events`, `bars` and `deadletters`: read the log while the agent writes it.

The log is opened read-only (SQLite `mode=ro`, PostgreSQL read-only transactions), so a query can
never create, lock out or change the agent's database. Filter values are bound parameters, never SQL.
A query that matches nothing says so on stderr (exit 0), so an empty table is never mistaken for a hang.
"""

from __future__ import annotations

import csv
import functools
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator

from edgewatch.agent import config
from edgewatch.agent.commands.logfile import with_log
from edgewatch.agent.config import ConfigError
from edgewatch.agent.eventlog.store import Store
from edgewatch.agent.timeutil import parse_when

FOLLOW_POLL_SECONDS = 0.5
PAGE = 1000  # rows per query when streaming a whole log
MAX_LIMIT = 2**63 - 1  # the largest row count SQL can bind
# CSV: the agent id last, so that columns added with it leave the others where they were
EVENT_COLUMNS = ("id", "ts", "kind", "key", "severity", "message", "data", "agent_id")
EVENT_TABLE = ("id", "ts", "agent_id", "kind", "key", "severity", "message", "data")
DEADLETTER_COLUMNS = ("id", "received_at", "topic", "code", "reason", "payload", "agent_id")
# in a table the reason comes last and whole: it is what a reader of dead letters is after
DEADLETTER_TABLE = ("id", "received_at", "agent_id", "topic", "code", "payload", "reason")
LABEL_COLUMNS = ("ts", "kind", "key", "label", "note", "event_id", "labelled_at")
BAR_COLUMNS = ("id", "symbol", "start", "end", "open", "high", "low", "close", "volume", "vwap", "trades", "agent_id")
BAR_TABLE = ("id", "agent_id", "symbol", "start", "end", "open", "high", "low", "close", "volume", "vwap", "trades")
WIDTH_CAPS = {"message": 60, "data": 48, "payload": 48, "key": 32, "topic": 40, "agent_id": 24}


def _summary(data: object) -> str:
    """`data` on one line: `metric=temperature value=31.2 score=0.97`, floats shortened."""
    if not isinstance(data, dict):
        return json.dumps(data)
    parts = []
    for k, v in data.items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        elif isinstance(v, (dict, list, bool)) or v is None:  # as JSON spells them: null, true, [...]
            v = json.dumps(v, separators=(",", ":"))
        parts.append(f"{k}={v}")
    return " ".join(parts)


def _cell(column: str, value: object) -> str:
    if column == "data":
        return _summary(value)
    text = str(value)
    if column in ("ts", "received_at", "start", "end") and len(text) > 24:  # milliseconds are enough on screen
        text = text[:23] + "Z"
    return " ".join(text.split()) if column in ("message", "payload", "reason") else text


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


class _Printer:
    """Writes rows in one format; a table keeps the column widths of its first batch (for --follow).

    `table_columns` orders a table's columns (default: `columns`); `wide` shows every cell whole.
    """

    def __init__(self, fmt: str, columns: tuple[str, ...], out=None, table_columns: tuple[str, ...] | None = None,
                 wide: bool = False):
        self.fmt, self.out = fmt, out or sys.stdout
        self.columns = (table_columns or columns) if fmt == "table" else columns
        self.caps = {} if wide else WIDTH_CAPS
        self.widths: dict[str, int] | None = None
        self.csv = csv.writer(self.out, lineterminator="\n") if fmt == "csv" else None
        self.started = False
        self.count = 0  # rows written

    def rows(self, rows: list[dict]) -> None:
        self.count += len(rows)
        if self.fmt == "json":
            for r in rows:
                self.out.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")
        elif self.fmt == "csv":
            if not self.started:
                self.csv.writerow(self.columns)
            for r in rows:
                self.csv.writerow([json.dumps(r[c]) if c == "data" else r[c] for c in self.columns])
        else:
            self._table(rows)
        self.started = True
        self.out.flush()

    def _table(self, rows: list[dict]) -> None:
        cells = [[_cell(c, r[c]) for c in self.columns] for r in rows]
        if self.widths is None:
            if not rows:
                return
            self.widths = {
                c: min(max([len(c)] + [len(row[i]) for row in cells]), self.caps.get(c, 1000))
                for i, c in enumerate(self.columns)
            }
            last = self.columns[-1]
            if last not in self.caps:  # uncapped, it runs to the end of each line: its header rule stays short
                self.widths[last] = min(self.widths[last], 48)
            self._line(list(self.columns))
            self._line(["-" * self.widths[c] for c in self.columns])
        for row in cells:
            self._line(row)

    def _line(self, cells: list[str]) -> None:
        last = len(cells) - 1  # the last column runs to the end of the line unless capped
        text = "  ".join(
            (v if i == last and c not in self.caps else _fit(v, self.widths[c])).ljust(self.widths[c])
            for i, (c, v) in enumerate(zip(self.columns, cells))
        )
        self.out.write(text.rstrip() + "\n")

    def nothing_matched(self, message: str) -> None:
        """Say so on stderr when no row was written (stdout stays clean for pipes)."""
        if not self.count:
            print(message, file=sys.stderr)


def _when(flag: str, text: str | None):
    if text is None:
        return None
    try:
        return parse_when(text)
    except ValueError as e:
        raise ConfigError(f"{flag}: {e}") from None


def _limit(n: int | None) -> int | None:
    if n is not None and not 0 <= n <= MAX_LIMIT:
        raise ConfigError(f"--limit: must be 0 to {MAX_LIMIT}, got {n}")
    return n


def events_command(args) -> int:
    """`edge-agent events`: filters, formats, --follow."""
    keys = list(args.key)
    if args.group:  # the sensors of the group of that name in either section
        keys += [f for group in config.group_named(config.load(args.config), args.group) for f in group.sensors]
    filters = dict(
        kinds=args.kind,
        keys=keys,
        severity=args.severity,
        since=_when("--since", args.since),
        until=_when("--until", args.until),
        agent=args.agent,
    )
    return _query("events", args, EVENT_COLUMNS, EVENT_TABLE,
                  lambda store: functools.partial(store.events, **filters))


def bars_command(args) -> int:
    """`edge-agent bars`: the VWAP bars, with the options and formats of `events`."""
    filters = dict(symbol=args.symbol, since=_when("--since", args.since), until=_when("--until", args.until),
                   agent=args.agent)
    return _query("bars", args, BAR_COLUMNS, BAR_TABLE, lambda store: functools.partial(store.bars, **filters))


def deadletters_command(args) -> int:
    """`edge-agent deadletters`."""
    filters = dict(code=args.code, since=_when("--since", args.since), agent=args.agent)
    return _query("deadletters", args, DEADLETTER_COLUMNS, DEADLETTER_TABLE,
                  lambda store: functools.partial(store.dead_letters, **filters))


def labels_command(args) -> int:
    """`edge-agent labels`: the labels operators gave events (`edge-agent label`), oldest event first."""
    filters = dict(kinds=args.kind, since=_when("--since", args.since), until=_when("--until", args.until))

    def body(store: Store) -> None:
        printer = _Printer(args.format, LABEL_COLUMNS, wide=args.wide)
        printer.rows([])  # the CSV header, even when nothing matches
        printer.rows(store.labels(**filters))
        printer.nothing_matched("no labels match")

    return with_log("labels", args, body)


def _query(name: str, args, columns: tuple[str, ...], table_columns: tuple[str, ...] | None,
           bind: Callable[[Store], Callable[..., list[dict]]]) -> int:
    """Print the rows `bind(store)` fetches: the `--limit` most recent or all of them, then new ones with --follow."""
    limit = _limit(args.limit)
    follow = getattr(args, "follow", False)
    what = "dead letters" if name == "deadletters" else name

    def body(store: Store) -> None:
        printer = _Printer(args.format, columns, table_columns=table_columns, wide=args.wide)
        fetch = bind(store)
        printer.rows([])  # the CSV header, even when nothing matches
        last = _newest_id(fetch) if follow else 0
        # streamed in pages, so that a large log never sits in memory: everything, or the N most recent
        for page in _pages(fetch, 0) if limit is None else _newest(fetch, limit):
            printer.rows(page)
            last = max(last, page[-1]["id"])
        printer.nothing_matched(f"no {what} match" + ("; following new ones" if follow else ""))
        if follow:
            for page in _follow(fetch, last):
                printer.rows(page)

    return with_log(name, args, body)


def _pages(fetch: Callable[..., list[dict]], after: int) -> Iterator[list[dict]]:
    """Rows with id > `after`, oldest first, PAGE at a time, until there are no more."""
    while True:
        page = fetch(after_id=after, limit=PAGE)
        if page:
            yield page
            after = page[-1]["id"]
        if len(page) < PAGE:
            return


def _newest(fetch: Callable[..., list[dict]], n: int) -> Iterator[list[dict]]:
    """The `n` most recent rows, oldest first, in pages: from the n-th newest on (found by one indexed
    `OFFSET`), at most `n` of them, so rows logged meanwhile do not lengthen the answer."""
    if n == 0:
        return
    nth = fetch(limit=1, offset=n - 1)
    for page in _pages(fetch, nth[0]["id"] - 1 if nth else 0):  # fewer than n match: all of them
        yield page[:n]
        n -= len(page)
        if n <= 0:
            return


def _newest_id(fetch: Callable[..., list[dict]]) -> int:
    newest = fetch(limit=1)
    return newest[0]["id"] if newest else 0


def _follow(fetch: Callable[..., list[dict]], last: int) -> Iterator[list[dict]]:
    """Poll for rows after `last` until Ctrl-C or SIGTERM (both end it cleanly, exit 0)."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(FOLLOW_POLL_SECONDS):
            for page in _pages(fetch, last):
                last = page[-1]["id"]
                yield page
    finally:
        signal.signal(signal.SIGTERM, previous)
