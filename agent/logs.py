"""structlog setup: JSON lines when stdout is not a terminal (journald, files), console otherwise."""

from __future__ import annotations

import logging
import sys

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def setup(level: str = "info", fmt: str = "auto") -> None:
    """(Re)configure logging; called at start and again on SIGHUP with the new level."""
    json_lines = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    renderer = structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )
    # paho and SQLAlchemy log through the standard library: same level, same stream
    logging.basicConfig(level=_LEVELS[level], stream=sys.stdout, format="%(name)s %(levelname)s %(message)s",
                        force=True)


def get(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
