"""`edge-agent migrate`: bring the event log's schema to this release's version, and nothing else.

`run` does the same at start; this verb lets an operator upgrade a shared log once, before restarting
its agents, or see which version a log is at. Errors follow the other query verbs: a log newer than
this code, or no log at all, is a usage error (exit 2, one line); a database that fails is exit 1.
"""

from __future__ import annotations

import sys

from edgewatch.agent import config
from edgewatch.agent.commands.logfile import open_log
from edgewatch.agent.eventlog.store import StoreError
from edgewatch.common import logs


def migrate_command(args) -> int:
    logs.setup("warning", stream="stderr")  # stdout carries the one line of result; a lock wait still shows
    try:
        store = open_log(args.db or config.load(args.config).store.url)
    except StoreError as e:  # a database server that fails (a SQLite file's problems are ConfigErrors: exit 2)
        print(f"edge-agent migrate: {e}", file=sys.stderr)
        return 1
    try:
        before, after = store.migrated
        state = "already at" if before == after else f"migrated from {before or 'an empty database'} to"
        print(f"{store.display_url}: {state} schema revision {after}")
    finally:
        store.close()
    return 0
