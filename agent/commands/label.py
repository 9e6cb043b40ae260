"""`edge-agent label`: an operator's verdict on one event, a real finding or a false alarm, kept in the log.

The detector's settings were chosen on public benchmarks; only a site's own verdicts say how they do on its
machines. A label names the event by the log id `edge-agent events` shows (or by its event_id) and keeps the
event's kind, key and time, so it outlives the event's retention. `edge-agent labels` lists them, and
`edge-agent calibrate --labels` weighs stricter settings against them: how many alarms labelled real each
step still raises, and how many labelled false it no longer does.
"""

from __future__ import annotations

import sys

import sqlalchemy as sa
from edgewatch.agent import config
from edgewatch.agent.commands.logfile import detail, open_log, sqlite_path
from edgewatch.agent.config import ConfigError
from edgewatch.agent.eventlog.store import StoreError


def label_command(args) -> int:
    """`edge-agent label EVENT real|false|none [--note TEXT] [--db URL|PATH] [--config PATH]`."""
    url = args.db or config.load(args.config).store.url
    path = sqlite_path(url)
    if path is not None and not path.exists():  # a label names an event: it never starts a log
        raise ConfigError(f"{path}: no event log there")
    verdict = None if args.label == "none" else args.label
    try:
        store = open_log(url)
    except StoreError as e:
        return _failed(str(e), 1)
    try:
        row = store.label(args.event, verdict, args.note)
    except (StoreError, sa.exc.SQLAlchemyError) as e:
        return _failed(detail(e), 1)
    finally:
        store.close()
    if row is None:
        return _failed(f"{args.event}: no such event in {store.display_url} (give the id `edge-agent events` shows)", 2)
    said = "label taken off" if verdict is None else f"labelled {verdict}"
    print(f"event {row['id']} ({row['kind']} {row['key']} at {row['ts']}): {said}")
    return 0


def _failed(message: str, code: int) -> int:
    print(f"edge-agent label: {message}", file=sys.stderr)
    return code
