"""pytest plugin shipped with edgewatch (entry point `pytest11`).

Fixtures for testing an Edgewatch setup against a real broker: an in-process
amqtt broker (the mock broker), a private Mosquitto, and helpers to publish
readings and wait for events.
"""

from __future__ import annotations

import os

import pytest


def require(what: str, available: bool, reason: str) -> None:
    """Fail in CI (CI set) when a needed service is missing; skip with the reason elsewhere."""
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI but missing: {reason}", pytrace=False)
    pytest.skip(f"{what} unavailable: {reason}")
