"""Log lines straight into the systemd journal with their keys as fields (native protocol, stdlib only).

Through stdout journald keeps a JSON log line as one opaque MESSAGE. Sent over
the journal's own socket instead, each top-level key becomes a field, so
`journalctl -u edgewatch-agent EVENT=agent_ready` or `PRIORITY=3` select
entries, while MESSAGE still holds the whole JSON line for `-o cat | jq`.
Used only when stdout is the journal (systemd sets JOURNAL_STREAM); anything
the socket refuses (journald restarting, an entry too large) goes to stdout,
so no line is lost.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import sys
import threading
import typing

JOURNAL_SOCKET = "/run/systemd/journal/socket"
PRIORITY = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3, "exception": 3, "critical": 2}
RESERVED = {"MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER"}  # set by us from the entry itself


def program_name() -> str:
    """The identifier sd_journal_send would use: the program's short name (`edge-agent`, `edge-sidecar`)."""
    return os.path.basename(sys.argv[0]) or "edgewatch"


def stdout_is_journal(environ: typing.Mapping[str, str] | None = None, stream: typing.TextIO | None = None) -> bool:
    """True when `stream` (stdout) is the journal stream systemd connected (JOURNAL_STREAM=dev:inode)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat((stream or sys.stdout).fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (ValueError, OSError, AttributeError):
        return False


def error_line(line: str, stream: typing.TextIO) -> str:
    """`line` as an error for `stream` (stderr): each of its lines prefixed `<3>` where the stream is the
    journal, which reads the prefix as PRIORITY=3 (SyslogLevelPrefix=, on by default), so `journalctl -p err`
    shows why a start failed."""
    return "\n".join(f"<3>{part}" for part in line.split("\n")) if stdout_is_journal(stream=stream) else line


def _field_name(key: str) -> str | None:
    """journald field names: upper-case letters, digits, underscores, not starting with '_'."""
    name = re.sub(r"[^A-Z0-9_]", "_", key.upper()).lstrip("_")
    if not name or name[0].isdigit() or name in RESERVED:
        return None
    return name[:64]


def encode(fields: list[tuple[str, str]]) -> bytes:
    """The native protocol: `KEY=value\\n`, or `KEY\\n<64-bit LE length><value>\\n` for values with newlines."""
    out = bytearray()
    for key, value in fields:
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


def entry_fields(line: str, identifier: str) -> list[tuple[str, str]]:
    """Journal fields of one rendered JSON log line; a line that is not JSON is still one MESSAGE."""
    fields = [("MESSAGE", line), ("SYSLOG_IDENTIFIER", identifier)]
    try:
        entry = json.loads(line)
    except ValueError:
        return [*fields, ("PRIORITY", "6")]
    if not isinstance(entry, dict):
        return [*fields, ("PRIORITY", "6")]
    fields.append(("PRIORITY", str(PRIORITY.get(str(entry.get("level", "info")).lower(), 6))))
    for key, value in entry.items():
        name = _field_name(str(key))
        if name is not None:
            fields.append((name, value if isinstance(value, str) else json.dumps(value, default=str)))
    return fields


class JournalLogger:
    """A structlog logger taking the rendered JSON line (after JSONRenderer) to the journal."""

    def __init__(self, identifier: str, path: str | None = None, fallback: typing.TextIO | None = None):
        self.identifier = identifier
        self.path = path or JOURNAL_SOCKET
        self.fallback = fallback  # None: sys.stdout as it is at the time of the write (see common.logs)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._lock = threading.Lock()

    def msg(self, message: str) -> None:
        data = encode(entry_fields(message, self.identifier))
        try:
            self._sock.sendto(data, self.path)
        except OSError:  # journald away or the entry too large for a datagram: keep the line on stdout
            with self._lock:
                print(message, file=self.fallback or sys.stdout, flush=True)

    debug = info = warning = warn = error = err = critical = exception = fatal = log = msg


class JournalLoggerFactory:
    """structlog `logger_factory`: one shared logger (one socket) for the whole process."""

    def __init__(self, identifier: str | None = None, path: str | None = None):
        self._logger = JournalLogger(identifier or program_name(), path)

    def __call__(self, *args: object) -> JournalLogger:
        return self._logger
