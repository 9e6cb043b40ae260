"""Fixtures of the agent's tests: plain MQTT 5 clients on a private Mosquitto, for paho's send and receive paths;
the fields the reference docs name."""

from __future__ import annotations

import functools
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
    """`fields(section, page="events.md", header=...)`: the field names a table of docs/reference/PAGE names under
    the heading `SECTION` (by default an event kind's `data` fields). A user builds against those pages, so
    every key the agent emits must be there."""
    reference = Path(__file__).resolve().parents[2] / "docs" / "reference"

    @functools.cache
    def fields(section: str, page: str = "events.md", header: str = "| `data` field | meaning |") -> set[str]:
        # without its code blocks: a shell `# comment` in one is no heading
        text = re.sub(r"^```.*?^```", "", (reference / page).read_text(), flags=re.S | re.M)
        heading = re.search(rf"^(#+) `{re.escape(section)}`.*$", text, re.M)
        body = text[heading.end():]
        following = re.search(rf"^#{{1,{len(heading.group(1))}}} ", body, re.M)
        tables = [t.split("\n\n", 1)[0] for t in body[:following.start() if following else None].split(header + "\n")[1:]]
        return {name for table in tables for line in table.splitlines()[1:]
                for name in re.findall(r"`([a-z_]+)`", line.split("|")[1])}

    return fields
