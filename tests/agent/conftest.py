"""Fixtures of the agent's tests: plain MQTT 5 clients on a private Mosquitto, for paho's send and receive paths;
the events reference's fields."""

from __future__ import annotations

import re
import threading
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from edgewatch.agent.ingest import paho_receive


@pytest.fixture
def mqtt5(mosquitto):
    """`connect(name, subscribe=None, **callbacks)`: a started MQTT 5 client of the test's Mosquitto, subscribed
    (QoS 1, SUBACK awaited) when `subscribe` names a topic filter; every client is closed after the test."""
    paho_receive.install()
    clients: list[mqtt.Client] = []

    def connect(name: str, subscribe: str | None = None, **callbacks) -> mqtt.Client:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{name}-{uuid.uuid4().hex[:8]}",
                        protocol=mqtt.MQTTv5)
        c.max_queued_messages_set(0)
        for attr, callback in callbacks.items():
            setattr(c, attr, callback)
        clients.append(c)
        c.connect(mosquitto.host, mosquitto.port)
        c.loop_start()
        if subscribe is not None:
            subscribed = threading.Event()
            c.on_subscribe = lambda *a: subscribed.set()
            c.subscribe(subscribe, qos=1)
            assert subscribed.wait(5), f"{name}: no SUBACK for {subscribe}"
        return c

    yield connect
    for c in clients:
        c.disconnect()
        c.loop_stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request, tmp_path) -> str:
    """An event log's URL: an SQLite file, then a scratch PostgreSQL schema."""
    return str(tmp_path / "events.db") if request.param == "sqlite" else request.getfixturevalue("postgres_url")


@pytest.fixture(scope="session")
def documented_fields():
    """`fields(kind)`: the `data` fields docs/reference/events.md names in the tables of a kind's section (a user
    builds against that page, so every key an event carries must be there)."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "reference" / "events.md").read_text()

    def fields(kind: str) -> set[str]:
        section = text.split(f"## `{kind}`", 1)[1].split("\n## ", 1)[0]
        tables = [t.split("\n\n", 1)[0] for t in section.split("| `data` field | meaning |\n")[1:]]
        return {name for table in tables for line in table.splitlines()[1:]
                for name in re.findall(r"`([a-z_]+)`", line.split("|")[1])}

    return fields
