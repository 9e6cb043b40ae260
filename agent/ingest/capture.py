"""The capture record: every accepted input message as JSON Lines (docs/reference/capture.md), and reading it back.

A capture is what `edge-agent replay` runs the graphs over, and the fault tests'
proof that no accepted reading was lost, so lines are written in arrival order,
flushed to the OS once per batch (a killed process loses nothing flushed), and
files rotate by size with only the newest `max_files` kept.
"""

from __future__ import annotations

import json
import json.encoder
import os
import threading
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path

import structlog
from edgewatch.agent.config import RecordConfig
from edgewatch.agent.timeutil import ENGINE_FIRST, ENGINE_LAST, engine_range, parse_timestamp, utcnow

log = structlog.get_logger(__name__)

PATTERN = "capture-*.jsonl"
FILE_MODE = 0o640  # as the event log: owner writes, the service's group (operators) reads, nobody else
DIR_MODE = 0o750
_quote = json.encoder.encode_basestring  # C-speed JSON string literal, non-ASCII kept as is


class CaptureWriter:
    """Appends `{"received_at","topic","payload"}` lines to rotated files in `cfg.path`."""

    def __init__(self, cfg: RecordConfig):
        self.dir = Path(cfg.path)
        self.max_bytes = cfg.max_bytes  # 0 = never rotate
        self.max_files = cfg.max_files  # 0 = keep every file
        self.dir.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        self._lock = threading.Lock()
        self._pending: list[str] = []
        self._pending_bytes = 0
        self._file = None
        self._size = 0
        self.path: Path | None = None
        self.lines = 0  # lines written since start
        self._open()

    def _open(self) -> None:
        stamp = utcnow().strftime("%Y%m%dT%H%M%S%f")
        n = 0
        while True:  # names sort in write order, and never reuse a file from an earlier run
            path = self.dir / f"capture-{stamp}-{n:03d}.jsonl"
            try:
                self._file = _create(path)
                break
            except FileExistsError:
                n += 1
        self.path, self._size = path, 0
        self._prune()

    def _prune(self) -> None:
        if not self.max_files:
            return
        for old in sorted(self.dir.glob(PATTERN))[: -self.max_files]:
            try:
                old.unlink()
            except OSError as e:
                log.warning("capture.prune_failed", path=str(old), error=str(e))

    def write(self, received_at: datetime, topic: str, payload_text: str) -> None:
        """Queue one message; it reaches the file at the next `flush()`."""
        # received_at is naive UTC (the agent's convention), so isoformat() + "Z" is timeutil.isoformat
        line = f'{{"received_at":"{received_at.isoformat()}Z","topic":{_quote(topic)},"payload":'
        line += f"{_quote(payload_text)}}}\n"
        with self._lock:
            self._pending.append(line)
            self._pending_bytes += len(line)
            if self.max_bytes and self._size + self._pending_bytes >= self.max_bytes:
                self._flush_locked()

    def flush(self) -> None:
        """Hand the queued lines to the OS (once per batch); rotates past `max_bytes`."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if self._pending:
            data = "".join(self._pending).encode("utf-8", "backslashreplace")
            self._pending.clear()
            self._pending_bytes = 0
            self._file.write(data)
            self._file.flush()
            self._size += len(data)
            self.lines += data.count(b"\n")
        if self.max_bytes and self._size >= self.max_bytes:
            self._file.close()
            self._open()

    def close(self) -> None:
        with self._lock:
            if self._file is None:
                return
            self._flush_locked()
            self._file.close()
            self._file = None


def _create(path: Path):
    """A new file opened for writing, FILE_MODE whatever the process umask (captures hold every input)."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


class CaptureReader:
    """Iterates `(received_at, topic, payload_bytes)` over capture files in order.

    Paths may be files or directories (their `capture-*.jsonl`, oldest first). A
    torn last line (the writer was killed mid-write) or a damaged line is skipped
    and counted in `skipped`, never fatal: a replay should use what is there.
    """

    def __init__(self, paths: Iterable[str | os.PathLike], topic: str | None = None):
        self.files: list[Path] = []
        for p in map(Path, paths):
            self.files.extend(_captures_in(p) if p.is_dir() else [p])
        self.skipped = 0
        self.lines = 0
        self.unreadable: list[str] = []  # files that could not be opened or read to the end: skipped, logged
        # only this topic's lines (`topic`): found by the bytes `write` puts there, so other lines are never parsed
        self._needle = f'"topic":{_quote(topic)},'.encode("utf-8", "backslashreplace") if topic is not None else None

    def __iter__(self) -> Iterator[tuple[datetime, str, bytes]]:
        for path in self.files:
            try:
                with open(path, "rb") as f:
                    yield from self._read(path, f)
            except OSError as e:  # a file gone, unreadable or no file: what the others hold still counts
                self.unreadable.append(str(path))
                log.warning("capture.file_skipped", path=str(path), error=str(e)[:200])

    def _read(self, path: Path, f) -> Iterator[tuple[datetime, str, bytes]]:
        lines = enumerate(f, 1) if self._needle is None else ((None, raw) for raw in _lines_with(f, self._needle))
        for lineno, raw in lines:
            try:
                row = json.loads(raw)
                item = (parse_timestamp(row["received_at"]), row["topic"], row["payload"].encode("utf-8"))
                if type(item[1]) is not str:
                    raise TypeError("topic is not a string")
                if not ENGINE_FIRST <= item[0] <= ENGINE_LAST:
                    raise ValueError(f"received_at {item[0].date()} is outside {engine_range()}, "
                                     "the times the engine can run")
            except (ValueError, KeyError, TypeError, AttributeError, UnicodeError, OverflowError,
                    RecursionError) as e:  # (a time past datetime's range; JSON nested too deep to parse)
                self.skipped += 1
                torn = not raw.endswith(b"\n")
                log.warning("capture.line_skipped", path=str(path), line=lineno, torn=torn,
                            error=f"{type(e).__name__}: {e}"[:200])
                continue
            self.lines += 1
            yield item


def _captures_in(folder: Path) -> list[Path]:
    """A folder's capture files, oldest first; anything else named like one (a folder) is left out, logged."""
    found = []
    for p in sorted(folder.glob(PATTERN)):
        if p.is_file():
            found.append(p)
        else:
            log.warning("capture.not_a_file", path=str(p))
    return found


def _lines_with(f, needle: bytes, chunk: int = 1 << 20) -> Iterator[bytes]:
    """The lines of `f` holding `needle`, found with bytes.find over 1 MiB blocks: no Python step per line."""
    rest = b""
    while block := f.read(chunk):
        data = rest + block
        cut = data.rfind(b"\n") + 1  # whole lines now, the partial last one with the next block
        data, rest = data[:cut], data[cut:]
        pos = data.find(needle)
        while pos >= 0:
            end = data.find(b"\n", pos) + 1
            yield data[data.rfind(b"\n", 0, pos) + 1:end]
            pos = data.find(needle, end)
    if needle in rest:
        yield rest  # a torn last line: counted as skipped below


def read_captures(paths: Iterable[str | os.PathLike]) -> CaptureReader:
    """The messages recorded in `paths`, in order: an iterable of (received_at, topic, payload_bytes)."""
    return CaptureReader(paths)
