"""The one JSON encoding of what the agent writes: event data in the log, and every payload it publishes.

Strict JSON (no NaN/Infinity literals, which PostgreSQL and most parsers refuse), ASCII, compact. Its own
module, free of csp, so that the query commands load it without the graphs.
"""

from __future__ import annotations

import json
import math


def _finite(value: object) -> object:
    """JSON-safe copy: NaN/Inf become strings, other non-JSON values their text (PostgreSQL rejects NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=str).encode


def json_dumps(value: object) -> str:
    """The one JSON encoding of what the agent writes, in the log and on MQTT: strict ASCII JSON, never raises."""
    try:
        return _encode(value)
    except (ValueError, TypeError):  # NaN/Inf, or keys that are not text
        return _encode(_finite(value))
