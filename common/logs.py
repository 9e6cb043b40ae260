"""structlog setup shared by the three commands: JSON lines when the stream is not a terminal
(journald, files), console otherwise. The standard library's records (uvicorn, paho, SQLAlchemy,
warnings) go through the same renderer, so the output is one JSON object per line throughout.

The stream is looked up at every write (`sys.stdout` or `sys.stderr` by name), so a process
that swaps its streams (pytest's capture, a daemon redirecting output) never writes to a
closed file.
"""

from __future__ import annotations

import logging
import sys

import structlog
from edgewatch.common import journal

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _StreamLogger:
    """A structlog logger writing one line to `sys.<stream>` as it is at the moment of the call."""

    def __init__(self, stream: str):
        self._stream = stream

    def msg(self, message: str) -> None:
        stream = getattr(sys, self._stream)
        stream.write(message + "\n")  # one write: print() writes the text and its newline apart, and another
        stream.flush()  # thread's record could land between them (two records on one line)

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def setup(level: str = "info", fmt: str = "auto", stream: str = "stdout") -> None:
    """(Re)configure logging; called at start and again on SIGHUP with the new level.

    `stream` is "stdout" for the services and "stderr" for commands whose stdout carries results.
    """
    json_lines = fmt == "json" or (fmt == "auto" and not getattr(sys, stream).isatty())
    renderer = structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer()
    stamped = [structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True)]
    finish = [structlog.processors.StackInfoRenderer(),
              structlog.processors.dict_tracebacks if json_lines else structlog.processors.format_exc_info]
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *stamped, *finish, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=_journal_or(stream, json_lines),
        cache_logger_on_first_use=False,
    )
    # paho, SQLAlchemy, uvicorn and warnings log through the standard library: same level, stream and rendering
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *stamped],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *finish, renderer],
    )
    handler = _StreamHandler(stream)
    handler.setFormatter(formatter)
    logging.basicConfig(level=_LEVELS[level], handlers=[handler], force=True)
    logging.captureWarnings(True)


class _StreamHandler(logging.StreamHandler):
    """A logging handler writing to `sys.<stream>` as it is at the moment of the record (see _StreamLogger)."""

    def __init__(self, stream: str):
        self._stream_name = stream
        super().__init__()

    @property
    def stream(self):
        return getattr(sys, self._stream_name)

    @stream.setter
    def stream(self, _value) -> None:  # StreamHandler.__init__ assigns one: the name decides instead
        pass


def _journal_or(stream: str, json_lines: bool):
    """[deploy] Under systemd (the stream is the journal), JSON entries go over the journal's native socket,
    so each key becomes a journal field; elsewhere the stream."""
    if json_lines and journal.stdout_is_journal(stream=getattr(sys, stream)):
        return journal.JournalLoggerFactory()
    return lambda *_: _StreamLogger(stream)


def get(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
