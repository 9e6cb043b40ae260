"""`edge-agent events` and `edge-agent deadletters`: read the log while the agent writes it.

The log is opened read-only (SQLite `mode=ro`, PostgreSQL read-only transactions), so a query can
never create, lock out or change the agent's database. Filter values are bound parameters, never SQL.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

import sqlalchemy as sa
from edgewatch.agent import config
from edgewatch.agent.config import ConfigError
from edgewatch.agent.eventlog.store import Store, StoreError
from edgewatch.agent.timeutil import parse_when

FOLLOW_POLL_SECONDS = 0.5
PAGE = 1000  # rows per query when streaming a whole log
EVENT_COLUMNS = ("id", "ts", "kind", "key", "severity", "message", "data")
DEADLETTER_COLUMNS = ("id", "received_at", "topic", "reason", "payload")
WIDTH_CAPS = {"message": 60, "data": 48, "payload": 48, "reason": 48, "key": 32, "topic": 40}


def _summary(data: object) -> str:
    """`data` on one line: `metric=temperature value=31.2 score=0.97`, floats shortened."""
    if not isinstance(data, dict):
        return json.dumps(data)
    parts = []
    for k, v in data.items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        elif isinstance(v, (dict, list)):
            v = json.dumps(v, separators=(",", ":"))
        parts.append(f"{k}={v}")
    return " ".join(parts)


def _cell(column: str, value: object) -> str:
    if column == "data":
        return _summary(value)
    text = str(value)
    if column in ("ts", "received_at") and len(text) > 24:  # milliseconds are enough on screen
        text = text[:23] + "Z"
    return " ".join(text.split()) if column in ("message", "payload", "reason") else text


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


class _Printer:
    """Writes rows in one format; a table keeps the column widths of its first batch (for --follow)."""

    def __init__(self, fmt: str, columns: tuple[str, ...], out=None):
        self.fmt, self.columns, self.out = fmt, columns, out or sys.stdout
        self.widths: dict[str, int] | None = None
        self.csv = csv.writer(self.out, lineterminator="\n") if fmt == "csv" else None
        self.started = False

    def rows(self, rows: list[dict]) -> None:
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
                c: min(max([len(c)] + [len(row[i]) for row in cells]), WIDTH_CAPS.get(c, 1000))
                for i, c in enumerate(self.columns)
            }
            self._line(list(self.columns))
            self._line(["-" * self.widths[c] for c in self.columns])
        for row in cells:
            self._line(row)

    def _line(self, cells: list[str]) -> None:
        text = "  ".join(_fit(v, self.widths[c]).ljust(self.widths[c]) for c, v in zip(self.columns, cells))
        self.out.write(text.rstrip() + "\n")


def _open(args) -> Store:
    url = args.db or config.load(args.config).store.url
    return Store(url, readonly=True)


def _when(flag: str, text: str | None):
    if text is None:
        return None
    try:
        return parse_when(text)
    except ValueError as e:
        raise ConfigError(f"{flag}: {e}") from None


def _limit(n: int | None) -> int | None:
    if n is not None and n < 0:
        raise ConfigError(f"--limit: must not be negative, got {n}")
    return n


def _run(name: str, args, body: Callable[[Store], None]) -> int:
    """Open the log read-only and run `body`. Usage errors raise ConfigError (exit 2, by the CLI); runtime 1."""
    try:
        store = Store(args.db or config.load(args.config).store.url, readonly=True)
    except (StoreError, sa.exc.SQLAlchemyError) as e:
        return _runtime_error(name, e)
    try:
        body(store)
    except BrokenPipeError:
        # the reader went away (`| head`): stop quietly; stdout -> devnull so the flush at exit is silent too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except KeyboardInterrupt:
        pass
    except (StoreError, sa.exc.SQLAlchemyError) as e:
        return _runtime_error(name, e)
    finally:
        store.close()
    return 0


def _runtime_error(name: str, e: Exception) -> int:
    detail = str(getattr(e, "orig", None) or e).splitlines()[0]
    print(f"edge-agent {name}: {detail}", file=sys.stderr)
    return 1


def events_command(args) -> int:
    """`edge-agent events`: filters, formats, --follow."""
    filters = dict(
        kinds=args.kind,
        key=args.key,
        severity=args.severity,
        since=_when("--since", args.since),
        until=_when("--until", args.until),
    )
    limit = _limit(args.limit)

    def body(store: Store) -> None:
        printer = _Printer(args.format, EVENT_COLUMNS)
        fetch = functools.partial(store.events, **filters)
        if limit is not None:  # the N most recent
            rows = fetch(limit=limit)
            printer.rows(rows)
            last = rows[-1]["id"] if rows else _newest_id(store)
        else:  # everything, streamed in pages so a large log never sits in memory
            printer.rows([])  # the CSV header, even when nothing matches
            last = _newest_id(store) if args.follow else 0
            last_seen = 0
            for page in _pages(fetch, 0):
                printer.rows(page)
                last_seen = page[-1]["id"]
            last = max(last, last_seen)
        if args.follow:
            for page in _follow(fetch, last):
                printer.rows(page)

    return _run("events", args, body)


def _pages(fetch: Callable[..., list[dict]], after: int) -> Iterator[list[dict]]:
    """Rows with id > `after`, oldest first, PAGE at a time, until there are no more."""
    while True:
        page = fetch(after_id=after, limit=PAGE)
        if page:
            yield page
            after = page[-1]["id"]
        if len(page) < PAGE:
            return


def _newest_id(store: Store) -> int:
    newest = store.events(limit=1)
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


def deadletters_command(args) -> int:
    """`edge-agent deadletters`."""
    since, limit = _when("--since", args.since), _limit(args.limit)

    def body(store: Store) -> None:
        printer = _Printer(args.format, DEADLETTER_COLUMNS)
        fetch = functools.partial(store.dead_letters, since=since)
        printer.rows(fetch(limit=limit) if limit is not None else [])
        if limit is None:
            for page in _pages(fetch, 0):
                printer.rows(page)

    return _run("deadletters", args, body)
