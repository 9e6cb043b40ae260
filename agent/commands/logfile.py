"""Opening the event log for a command, with the exit code its failure deserves.

A SQLite log is a file on this machine: a directory the agent may not write, a file it may not read, a
truncated file or one that is no database at all are setup problems that no retry fixes (exit 2, one
line naming the file, so systemd does not restart the agent forever). A database server that cannot be
reached may come back (exit 1).
"""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from edgewatch.agent import config
from edgewatch.agent.config import ConfigError
from edgewatch.agent.eventlog.store import Store, StoreError, resolve_url

PERMISSION = "permission denied (read and write access needed)"


def open_log(url: str, **options) -> Store:
    """`Store(url, **options)`: ConfigError naming the file when a SQLite log cannot be used, StoreError
    with the server's one-line answer when a database server cannot be used."""
    path = sqlite_path(url)
    writable = not options.get("readonly")
    if path is not None and writable and path.exists() and not os.access(path, os.R_OK | os.W_OK):
        # SQLite would open it read-only without a word, and the first write would fail much later
        raise ConfigError(f"{path}: {PERMISSION}")
    try:
        return Store(url, **options)
    except OSError as e:  # creating the file or its directory
        raise ConfigError(f"{e.filename or url}: {(e.strerror or str(e)).lower()}") from None
    except (StoreError, sa.exc.SQLAlchemyError) as e:
        if path is None:
            if isinstance(e, StoreError):
                raise
            raise StoreError(f"{resolve_url(url).render_as_string(hide_password=True)}: {detail(e)}") from None
        raise ConfigError(f"{path}: {_why(path, e, writable)}") from None


def with_log(name: str, args, body: Callable[[Store], int | None], readonly: bool = True) -> int:
    """Open the log `--db` names (else `store.url` of `--config`) and run `body` on it; its exit code, 0 when it
    returns None. Usage and log-file errors raise ConfigError (exit 2, by the CLI); a database server's failure
    is a runtime one (1). Either way, one line. A command that writes (`readonly=False`) never creates a SQLite
    log: it acts on one that exists."""
    url = args.db or config.load(args.config).store.url
    path = sqlite_path(url)
    if not readonly and path is not None and not path.exists():
        raise ConfigError(f"{path}: no event log there")
    try:
        store = open_log(url, readonly=readonly)
    except StoreError as e:
        return failed(name, str(e), 1)
    try:
        return body(store) or 0
    except KeyboardInterrupt:
        pass
    except (StoreError, sa.exc.SQLAlchemyError) as e:
        if is_file_problem(e):
            return failed(name, f"{store.display_url}: not a usable event log ({detail(e)})", 2)
        return failed(name, detail(e), 1)
    finally:
        store.close()
    return 0


def failed(name: str, message: str, code: int) -> int:
    """Say why `edge-agent NAME` failed, in one line on stderr; return its exit code."""
    print(f"edge-agent {name}: {message}", file=sys.stderr)
    return code


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite log, None for a database server."""
    parsed = resolve_url(url)
    return Path(parsed.database) if parsed.get_backend_name() == "sqlite" else None


def is_file_problem(e: BaseException) -> bool:
    """A SQLite error that says the file itself is damaged or no database (not a busy or locked one)."""
    orig = getattr(e, "orig", None)
    return isinstance(orig, sqlite3.DatabaseError) and not isinstance(orig, sqlite3.OperationalError)


def detail(e: BaseException) -> str:
    """The first line of the driver's message, without SQLAlchemy's statement and background link."""
    return str(getattr(e, "orig", None) or e).splitlines()[0]


def _why(path: Path, e: BaseException, writable: bool) -> str:
    if isinstance(e, StoreError):  # its message names the file already
        return str(e).removeprefix(f"{path}: ")
    if path.exists() and not os.access(path, os.R_OK | (os.W_OK if writable else 0)):
        return PERMISSION if writable else "permission denied (read access needed)"
    if writable and not os.access(path.parent, os.W_OK):
        return f"directory {path.parent} is not writable (SQLite keeps the -wal and -shm files beside the log)"
    if is_file_problem(e):
        return f"not a usable event log ({detail(e)})"
    return detail(e)
