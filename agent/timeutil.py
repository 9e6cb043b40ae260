"""Time parsing shared by validation, queries and commands.

Inside the agent every datetime is naive UTC (csp's convention); text going
out is ISO-8601 with an explicit `Z`.
"""

from __future__ import annotations

import math
import re
import sys
from datetime import datetime, timedelta, timezone

MAX_EPOCH = 253402300800.0  # epoch seconds of the year 10000: datetime's end
# The times the engine (csp: nanoseconds since 1970 in 64 bits) can run, first and last; csp's own tests pin these
# (csp/tests/test_engine.py, test_datetime_timedelta_ranges). Data outside them cannot be run: replayed or scored.
ENGINE_FIRST = datetime(1678, 1, 1) if sys.platform == "linux" else datetime(1970, 1, 1)
ENGINE_LAST = datetime(2261, 12, 31, 23, 59, 59, 999999)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(text: str) -> timedelta:
    """`90s`, `15m`, `2h`, `7d`, `250ms` or bare seconds."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 15m, 2h, 7d)")
    try:
        return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    except OverflowError:
        raise ValueError(f"duration too long: {text!r}") from None


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def parse_timestamp(value: object) -> datetime:
    """ISO-8601 with a timezone, or epoch seconds -> naive UTC. Raises ValueError with a reason."""
    if isinstance(value, bool):
        raise ValueError("timestamp must be ISO-8601 text or epoch seconds, not a boolean")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or not (0 <= value < MAX_EPOCH):
            raise ValueError(f"epoch timestamp out of range: {value!r}")
        return datetime.fromtimestamp(value, timezone.utc).replace(tzinfo=None)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"unparsable timestamp: {value[:64]!r}") from None
        if dt.tzinfo is None:
            raise ValueError(f"timestamp without a timezone: {value[:64]!r}")
        try:
            return dt.astimezone(timezone.utc).replace(tzinfo=None)
        except OverflowError:
            raise ValueError(f"timestamp outside the years 1 to 9999 in UTC: {value[:64]!r}") from None
    raise ValueError(f"timestamp must be ISO-8601 text or epoch seconds, got {type(value).__name__}")


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """A query bound: relative (`15m` ago) or absolute ISO-8601 (naive means UTC)."""
    if _DURATION.match(text):
        try:
            return (now or utcnow()) - parse_duration(text)
        except (ValueError, OverflowError):
            raise ValueError(f"{text.strip()} ago is before the year 1") from None
    t = text.strip()
    if t.endswith(("Z", "z")):
        t = t[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(t)
        return dt.astimezone(timezone.utc).replace(tzinfo=None) if dt.tzinfo else dt
    except OverflowError:
        raise ValueError(f"{text!r} is outside the years 1 to 9999 in UTC") from None
    except ValueError:
        raise ValueError(f"not a time: {text!r} (ISO-8601 or relative like 90s, 15m, 2h, 7d)") from None


def isoformat(dt: datetime) -> str:
    """Naive-UTC datetime -> ISO-8601 with `Z`, microseconds kept when present."""
    return (dt if dt.tzinfo is None else dt.replace(tzinfo=None)).isoformat() + "Z"  # replace() costs as much again


def milliseconds_hint(value: object) -> str:
    """What to tell a user whose epoch time did not parse because it is in milliseconds (else "")."""
    return " (epoch seconds expected; this looks like milliseconds)" if (
        type(value) in (int, float) and 1e11 < value < MAX_EPOCH * 1000) else ""


def engine_range() -> str:
    """The times the engine can run, as a message says them: `1678-01-01 – 2261-12-31`."""
    return f"{ENGINE_FIRST.date()} – {ENGINE_LAST.date()}"
