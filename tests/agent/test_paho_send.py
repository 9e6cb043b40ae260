"""paho's send path as the agent runs it: PUBLISH and PUBACK leave from the calling thread, without waiting for
paho's own, and concurrent writers never lose, reorder or interleave a packet."""

import hashlib
import threading

import paho.mqtt.client as mqtt
import pytest
from edgewatch.agent.ingest import paho_send
from edgewatch.agent.testing.harness import publish, subscribe_collect
from paho.mqtt.client import _ConnectionState


def _blocked_loop(broker, client: mqtt.Client) -> threading.Event:
    """Park `client`'s paho thread (subscribed to park/#) inside a callback; set the returned event to let it go."""
    release, parked = threading.Event(), threading.Event()

    def on_message(c, u, msg):
        parked.set()
        release.wait(10)

    client.message_callback_add("park/#", on_message)
    publish(broker, "park/now", b"", qos=0)
    assert parked.wait(5)
    return release


@pytest.mark.mosquitto
@pytest.mark.parametrize("direct", [True, False])
def test_a_publish_leaves_while_paho_thread_is_busy(mosquitto, mqtt5, direct):
    """With `install`, a QoS 1 PUBLISH reaches a subscriber while paho's thread is stuck in a callback; stock
    paho only queues it for that thread (the control case shows the hop exists)."""
    got = threading.Event()
    mqtt5("sub", subscribe="sensors/#", on_message=lambda c, u, msg: got.set())
    pub = mqtt5("pub", subscribe="park/#")
    if direct:
        paho_send.install(pub)
    release = _blocked_loop(mosquitto, pub)
    try:
        info = pub.publish("sensors/s1", b'{"temperature": 21.5}', qos=1)
        assert got.wait(2) is direct
    finally:
        release.set()
    info.wait_for_publish(5)  # the PUBACK is paho's business as before
    assert info.is_published() and got.wait(5)


@pytest.mark.mosquitto
def test_concurrent_publishers_lose_reorder_and_interleave_nothing(mosquitto, mqtt5):
    """Through Mosquitto: four threads publish payloads of up to 256 KiB while paho's thread reads and
    acknowledges: every payload arrives intact, each thread's in the order it sent them."""
    per_thread = 150
    pub = mqtt5("pub", subscribe="echo/#")  # paho's thread reads and acknowledges too
    paho_send.install(pub)
    noise = mqtt5("noise")

    def payload(t: int, i: int) -> bytes:
        seed = hashlib.sha256(b"%d-%d" % (t, i)).digest()
        return seed * (1 + (t * 7919 + i * 104729) % 8192)  # 32 B to 256 KiB

    def publisher(t: int) -> None:
        for i in range(per_thread):
            pub.publish(f"load/{t}", payload(t, i), qos=1)
            noise.publish("echo/x", b"x", qos=1)

    with subscribe_collect(mosquitto, "load/#") as got:
        threads = [threading.Thread(target=publisher, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        got.wait(4 * per_thread, timeout=30)
    for t in range(4):
        assert [p for topic, p in got if topic == f"load/{t}"] == [payload(t, i) for i in range(per_thread)]


class _ShortWrites:
    """A socket stand-in that takes at most `limit` bytes a send and records the byte stream."""

    def __init__(self, limit: int):
        self.limit, self.sent = limit, b""

    def send(self, data: bytes) -> int:
        n = min(len(data), self.limit)
        self.sent += bytes(data[:n])
        return n

    def close(self) -> None:
        pass


def _connected_client(sock, paho_thread: threading.Thread | None = None) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="short-writes")
    client._sock, client._state = sock, _ConnectionState.MQTT_CS_CONNECTED
    client._thread = paho_thread or threading.Thread(target=lambda: None)  # paho's thread is some other thread
    paho_send.install(client)
    return client


class _StallsPahoMidPacket(_ShortWrites):
    """Whole writes, except paho's thread's first: 5 bytes, then it stalls inside `send` until `resume`."""

    def __init__(self):
        super().__init__(limit=1 << 20)
        self.paho, self.stalled, self.resume = None, threading.Event(), threading.Event()

    def send(self, data: bytes) -> int:
        if threading.current_thread() is self.paho and not self.stalled.is_set():
            self.sent += bytes(data[:5])
            self.stalled.set()
            self.resume.wait(5)
            return 5
        return super().send(data)


def test_a_direct_write_waits_for_paho_to_finish_its_packet():
    """paho's thread has written 5 bytes of a queued packet (the queue is empty while it writes) when another
    thread publishes: that publish waits for the lock, so the wire carries whole packets, in order."""
    sock = _StallsPahoMidPacket()
    paho = threading.Thread(target=lambda: client._packet_write())
    client = _connected_client(sock, paho)
    sock.paho = paho
    queued = _publish_bytes(b"first")
    client._out_packet.append({"command": mqtt.PUBLISH | 2, "mid": 1, "qos": 1, "pos": 0,
                               "to_process": len(queued), "packet": queued, "info": None})
    paho.start()
    assert sock.stalled.wait(5) and not client._out_packet
    publisher = threading.Thread(target=lambda: client.publish("sensors/s1", b"second", qos=1))
    publisher.start()
    publisher.join(0.2)
    assert publisher.is_alive() and len(sock.sent) == 5  # waiting for the lock, nothing written in between
    sock.resume.set()
    paho.join(5)
    publisher.join(5)
    assert sock.sent == _publish_bytes(b"first") + _publish_bytes(b"second")


def test_a_short_write_queues_the_rest_and_later_packets_wait_behind_it():
    sock = _ShortWrites(limit=10)
    client = _connected_client(sock)
    client.publish("sensors/s1", b"x" * 40, qos=1)
    first = bytes(client._out_packet[0]["packet"])
    assert len(sock.sent) == 10 and sock.sent + first == _publish_bytes(b"x" * 40)  # nothing lost, nothing twice
    client.publish("sensors/s1", b"y", qos=1)  # the queue is not empty: this one must not jump it
    assert len(sock.sent) == 10 and len(client._out_packet) == 2


def test_only_acked_packets_take_the_direct_path():
    sock = _ShortWrites(limit=1 << 20)
    client = _connected_client(sock)
    client.publish("sensors/s1", b"qos0", qos=0)  # paho's thread must see it written (on_publish, info)
    assert sock.sent == b"" and len(client._out_packet) == 1
    client._out_packet.clear()
    client.publish("sensors/s1", b"qos1", qos=1)
    assert sock.sent.endswith(b"qos1") and not client._out_packet
    client._state = _ConnectionState.MQTT_CS_CONNECTING  # before CONNACK: paho resends in-flight messages itself
    client.publish("sensors/s1", b"later", qos=1)
    assert not sock.sent.endswith(b"later") and len(client._out_packet) == 1


def _publish_bytes(payload: bytes) -> bytes:
    """What paho sends for a QoS 1 PUBLISH of `payload` to sensors/s1 with mid 1 (MQTT 3.1.1)."""
    topic = b"sensors/s1"
    body = len(topic).to_bytes(2, "big") + topic + (1).to_bytes(2, "big") + payload
    return bytes([0x32, len(body)]) + body
