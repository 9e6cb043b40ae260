"""The shipped pytest plugin: brokers come up on free ports, helpers publish and collect."""

import json
from pathlib import Path

import pytest
from edgewatch.agent.testing.plugin import (
    EmbeddedBroker,
    Mosquitto,
    publish,
    publish_many,
    subscribe_collect,
    wait_for,
)


def test_mqtt_broker_round_trip(mqtt_broker):
    assert mqtt_broker.url == f"mqtt://127.0.0.1:{mqtt_broker.port}"
    with subscribe_collect(mqtt_broker, "sensors/#") as got:
        publish(mqtt_broker, "sensors/a", {"temperature": 1})
        assert publish_many(mqtt_broker, [(f"sensors/b{i}", b'{"x": 2}') for i in range(50)]) == 50
        msgs = got.wait(51)
    assert msgs[0] == ("sensors/a", b'{"temperature": 1}')
    assert {t for t, _ in msgs[1:]} == {f"sensors/b{i}" for i in range(50)}


def test_two_embedded_brokers_get_different_ports():
    with EmbeddedBroker() as a, EmbeddedBroker() as b:
        assert a.port != b.port
        with subscribe_collect(b, "t") as got:
            publish(b, "t", "hello")
            assert got.wait(1) == [("t", b"hello")]


def test_mosquitto_keeps_a_persistent_session_across_kill_and_restart(mosquitto):
    import paho.mqtt.client as mqtt

    got, subscribed = [], []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="persistent-sub", clean_session=False,
                      protocol=mqtt.MQTTv311)
    sub.on_message = lambda c, u, m: got.append(json.loads(m.payload))
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("sensors/#", 1)
    sub.on_subscribe = lambda *a: subscribed.append(1)
    sub.connect(mosquitto.host, mosquitto.port)
    sub.loop_start()
    wait_for(lambda: subscribed, 5)
    sub.disconnect()
    sub.loop_stop()
    publish(mosquitto, "sensors/a", {"n": 1})  # queued for the absent subscriber
    mosquitto.stop()  # clean stop saves the queue
    assert not mosquitto.running
    mosquitto.restart()
    publish(mosquitto, "sensors/a", {"n": 2})
    mosquitto.kill()
    mosquitto.restart()
    sub.connect(mosquitto.host, mosquitto.port)
    sub.loop_start()
    try:
        wait_for(lambda: len(got) >= 1, 5)
    finally:
        sub.disconnect()
        sub.loop_stop()
    assert got[0] == {"n": 1}  # survived a clean restart; n=2 may or may not survive SIGKILL (autosave 1 s)


def test_mosquitto_start_failure_is_reported(tmp_path):
    if Mosquitto.binary() is None:
        pytest.skip("no mosquitto")
    first = Mosquitto(tmp_path / "a").start()
    try:
        clash = Mosquitto(tmp_path / "b", port=first.port)
        with pytest.raises(RuntimeError, match="did not start"):
            clash.start(timeout=3)
    finally:
        first.stop()


def test_the_readme_example(mqtt_broker, tmp_path):
    """The README's example test, executed as written there."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("A complete test of an anomaly rule"):]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    namespace["test_spike_becomes_an_anomaly"](mqtt_broker, tmp_path)
