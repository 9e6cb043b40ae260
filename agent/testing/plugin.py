"""pytest plugin shipped with edgewatch (entry point `pytest11`).

Fixtures for testing an Edgewatch setup against a real broker: `mqtt_broker` (an
in-process amqtt broker, the mock broker) and `mosquitto` (a private Mosquitto);
the helpers to publish, collect and wait for events live in `testing.harness` and
are re-exported here. See docs/reference/testing.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from edgewatch.agent.testing.harness import (  # noqa: F401 - re-exported for users' tests
    AgentProcess,
    BrokerAddress,
    Collected,
    EmbeddedBroker,
    Mosquitto,
    free_port,
    publish,
    publish_many,
    subscribe_collect,
    wait_for,
    wait_for_dead_letters,
    wait_for_events,
    write_config,
)


def require(what: str, available: bool, reason: str) -> None:
    """Fail in CI (CI set) when a needed service is missing; skip with the reason elsewhere."""
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI but missing: {reason}", pytrace=False)
    pytest.skip(f"{what} unavailable: {reason}")


@pytest.fixture
def mqtt_broker() -> Iterator[EmbeddedBroker]:
    """An in-process amqtt broker on a free port (MQTT 3.1.1): `.host`, `.port`, `.url`."""
    with EmbeddedBroker() as broker:
        yield broker


@pytest.fixture
def mosquitto(tmp_path_factory) -> Iterator[Mosquitto]:
    """A private Mosquitto on a free port with persistence: `.host`, `.port`, `.kill()`, `.stop()`, `.restart()`."""
    require("mosquitto", Mosquitto.binary() is not None, "the `mosquitto` binary is not on PATH")
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    yield broker
    broker.stop()
