"""The paho adapter manager in process: bursts arrive as batches, in order, acknowledged only when durable."""

import json
import time
from datetime import timedelta

import csp
from csp import ts
from edgewatch.agent.config import Config
from edgewatch.agent.ingest.mqtt import Link, MqttAdapterManager
from edgewatch.agent.ingest.paho_receive import EmptyFastMatcher
from edgewatch.agent.ingest.validate import Validator
from edgewatch.agent.ops import metrics
from edgewatch.agent.records import BatchMark, DeadLetter, SensorReading
from edgewatch.agent.testing.harness import EmbeddedBroker
from edgewatch.agent.testing.plugin import publish_many, wait_for


class Seen:
    def __init__(self):
        self.readings: list[SensorReading] = []
        self.dead: list[DeadLetter] = []
        self.marks: list[BatchMark] = []


@csp.node
def collect(readings: ts[list[SensorReading]], dead: ts[list[DeadLetter]], marks: ts[BatchMark], seen: object,
            durable: object, total: int):
    """Record what the engine sees; declare each batch durable at once (as the writer would after a commit)."""
    if csp.ticked(readings):
        seen.readings.extend(readings)
    if csp.ticked(dead):
        seen.dead.extend(dead)
    if csp.ticked(marks):
        seen.marks.append(marks)
        durable(marks, 0.0)
        if sum(m.count for m in seen.marks) >= total:
            csp.stop_engine()


def _link(broker, client_id: str) -> tuple[Config, Link]:
    cfg = Config()
    cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.protocol, cfg.mqtt.client_id = broker.host, broker.port, "5", client_id
    return cfg, Link(cfg)


def test_bursts_become_batches_in_order_and_are_acknowledged(mosquitto):
    cfg, link = _link(mosquitto, "test-mqtt-batches")
    link.start()
    wait_for(link.connected.is_set, 10, what="connected")
    assert isinstance(link.client._on_message_filtered, EmptyFastMatcher)  # no garbage cycle per message
    n = 3000
    messages = [("sensors/a", {"seq": i, "temperature": 20.0 + i % 5}) for i in range(n)]
    messages[1000] = ("sensors/a", b"{broken")
    publish_many(mosquitto, messages)  # queued at the broker before the engine starts: one big burst
    mgr = MqttAdapterManager(link, Validator(cfg))
    seen = Seen()

    def graph():
        collect(mgr.subscribe("sensor"), mgr.dead_letters(), mgr.marks(), seen, mgr.durable, n)

    try:
        csp.run(graph, realtime=True, endtime=timedelta(seconds=20))
    finally:
        link.close()
    assert [int(r.metrics["seq"]) for r in seen.readings] == [i for i in range(n) if i != 1000]
    assert len(seen.dead) == 1 and "not JSON" in seen.dead[0].reason
    assert sum(m.count for m in seen.marks) == n
    # the pre-queued burst (up to the receive maximum) is one cycle; the rest trickles in as acks free the
    # window, in batches whose size depends on the machine's load
    largest = max(m.count for m in seen.marks)
    assert largest >= 500, f"largest batch {largest}: not batched"
    assert len(seen.marks) < n / 3, f"{len(seen.marks)} engine cycles for {n} messages: not batched"
    assert [m.seq for m in seen.marks] == list(range(1, len(seen.marks) + 1))
    # everything was acknowledged: a new connection with the same persistent session gets nothing again
    _, again = _link(mosquitto, "test-mqtt-batches")
    again.start()
    wait_for(again.connected.is_set, 10, what="reconnected")
    time.sleep(1.0)  # the broker resends unacknowledged messages right after CONNACK; none may come
    again.close()
    assert len(again.inbox) == 0


def test_unacknowledged_messages_are_redelivered(mosquitto):
    """A batch that never became durable is not acknowledged: the broker redelivers it to the session."""
    cfg, link = _link(mosquitto, "test-mqtt-redeliver")
    link.start()
    wait_for(link.connected.is_set, 10, what="connected")
    publish_many(mosquitto, [("sensors/b", {"temperature": float(i)}) for i in range(50)])
    wait_for(lambda: len(link.inbox) >= 50, 10, what="50 messages received")
    link.close()  # nothing acknowledged
    _, again = _link(mosquitto, "test-mqtt-redeliver")
    again.start()
    try:
        wait_for(lambda: len(again.inbox) >= 50, 10, what="redelivery after reconnect")
        values = sorted(json.loads(m.payload)["temperature"] for _, m in list(again.inbox))
        assert values == [float(i) for i in range(50)]
    finally:
        again.close()


def test_qos0_input_beyond_the_backlog_is_dropped_and_counted_qos1_never(mosquitto):
    """A publisher at QoS 0 faster than the engine cannot grow the inbox without bound: once
    `mqtt.max_qos0_backlog` messages wait, a new QoS 0 message is dropped and counted. QoS 1 input is bounded by
    the broker's flow control (our PUBACKs) and is never dropped. Here nothing drains the inbox."""
    cfg, link = _link(mosquitto, "test-mqtt-qos0-shed")
    cfg.mqtt.max_qos0_backlog = 40
    shed = metrics.MESSAGES_SHED._value.get()
    link.start()
    try:
        wait_for(lambda: link.connected.is_set() and not link._subscribing, 10, what="subscribed")
        publish_many(mosquitto, [("sensors/q1", {"temperature": float(i)}) for i in range(30)], qos=1)
        wait_for(lambda: len(link.inbox) == 30, 10, what="30 QoS 1 messages")
        publish_many(mosquitto, [("sensors/q0", {"temperature": float(i)}) for i in range(100)], qos=0)
        wait_for(lambda: len(link.inbox) + metrics.MESSAGES_SHED._value.get() - shed == 130, 10,
                 what="100 QoS 0 messages received or shed")
        assert len(link.inbox) == 40 and metrics.MESSAGES_SHED._value.get() - shed == 90
        kept = [json.loads(m.payload)["temperature"] for _, m in list(link.inbox) if m.qos == 0]
        assert kept == [float(i) for i in range(10)]  # the first ones: a message in the inbox is never dropped
        publish_many(mosquitto, [("sensors/q1", {"temperature": float(i)}) for i in range(5)], qos=1)
        wait_for(lambda: len(link.inbox) == 45, 10, what="QoS 1 past the backlog")
    finally:
        link.close()


def test_auto_falls_back_to_311_when_the_broker_comes_up_after_the_agent():
    """protocol "auto" decides on the first answer, however late it comes: an agent started while its MQTT 3.1.1
    broker (amqtt) is down keeps trying MQTT 5 only until the broker is up and answers, then uses 3.1.1."""
    broker = EmbeddedBroker()  # its port is free: nothing listens there yet
    cfg, link = _link(broker, "test-mqtt-late-311")
    cfg.mqtt.protocol = "auto"
    link.start()
    try:
        assert link.protocol == "5" and not link.connected.is_set()  # unreachable: nothing decided yet
        with broker:
            wait_for(link.connected.is_set, 20, what="connected once the broker is up")
            assert link.protocol == "3.1.1"
            publish_many(broker, [("sensors/late", {"temperature": 21.0})])
            wait_for(lambda: len(link.inbox) == 1, 10, what="a reading over 3.1.1")
    finally:
        link.close()
