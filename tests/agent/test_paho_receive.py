"""paho's receive path as the agent runs it: properties decode exactly as stock paho decodes them (tables
built once), reads served from one large recv lose, reorder and delay nothing, and looking up per-topic
callbacks leaves no garbage cycle behind; a burst is parsed in one turn of paho's loop."""

import gc
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from edgewatch.agent.ingest import paho_receive
from edgewatch.agent.ingest.mqtt import open_socket
from edgewatch.agent.ingest.paho_receive import (
    READ_AHEAD,
    EmptyFastMatcher,
    ReadAheadSocket,
    SharedTablesProperties,
)
from paho.mqtt import _packet
from paho.mqtt.matcher import MQTTMatcher
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def _publish_packet(props: bytes, payload: bytes = b'{"value": 1}') -> bytes:
    """The variable part of a QoS 1 PUBLISH (after the fixed header): topic, packet id 7, properties, payload."""
    topic = b"sensors/s1/temperature"
    return len(topic).to_bytes(2, "big") + topic + (7).to_bytes(2, "big") + props + payload


def _properties(**values) -> Properties:
    p = Properties(PacketTypes.PUBLISH)
    for name, value in values.items():
        setattr(p, name, value)
    return p


CASES = [
    {},
    {"ContentType": "application/json"},
    {"PayloadFormatIndicator": 1, "MessageExpiryInterval": 60, "ResponseTopic": "r/1", "CorrelationData": b"\x00\xff",
     "UserProperty": [("site", "berlin"), ("site", "paris")], "TopicAlias": 3, "SubscriptionIdentifier": [5]},
]


def test_install_routes_publish_decoding_through_the_shared_tables():
    assert paho_receive.install()
    assert paho_receive.install()  # idempotent
    assert _packet.Properties is SharedTablesProperties
    assert type(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)._on_message_filtered) is EmptyFastMatcher
    # what the agent builds itself (CONNECT, PUBLISH) stays paho's own, with tables of its own
    assert type(mqtt.Properties(PacketTypes.CONNECT)) is Properties
    assert mqtt.Properties(PacketTypes.CONNECT).names is not SharedTablesProperties._tables["names"]


@pytest.mark.parametrize("values", CASES)
def test_decoded_properties_equal_stock_paho(values):
    paho_receive.install()
    packed = _properties(**values).pack()
    stock, _ = Properties(PacketTypes.PUBLISH).unpack(packed)
    ours = _packet.decode_publish(0x32, _publish_packet(packed), mqtt.MQTTv5)
    assert isinstance(ours.properties, SharedTablesProperties) and isinstance(ours.properties, Properties)
    assert vars(ours.properties) == vars(stock)
    assert str(ours.properties) == str(stock) and ours.properties.json() == stock.json()
    assert (ours.mid, ours.topic, ours.payload) == (7, b"sensors/s1/temperature", b'{"value": 1}')


def test_instances_share_tables_but_not_values():
    paho_receive.install()
    a, b = SharedTablesProperties(PacketTypes.PUBLISH), SharedTablesProperties(PacketTypes.PUBLISH)
    assert a.names is b.names and a.properties is b.properties
    a.ContentType = "text/plain"
    assert not hasattr(b, "ContentType")
    a.unpack(_properties(ResponseTopic="x").pack())  # unpack clears what was set before
    assert vars(a) == vars(Properties(PacketTypes.PUBLISH).unpack(_properties(ResponseTopic="x").pack())[0])
    assert a.names == Properties(PacketTypes.PUBLISH).names  # the shared tables were not modified


@pytest.mark.mosquitto
def test_a_real_mqtt5_subscriber_receives_every_property(mqtt5):
    """Through Mosquitto: properties the publisher set arrive on a subscriber decoding with the shared tables."""
    got, done = [], threading.Event()
    mqtt5("sub", subscribe="sensors/#", on_message=lambda c, u, msg: (got.append(msg), done.set()))
    pub = mqtt5("pub")
    sent = _properties(ContentType="application/json", UserProperty=[("site", "berlin")], MessageExpiryInterval=60)
    pub.publish("sensors/s1/temperature", b'{"value": 21.5}', qos=1, properties=sent).wait_for_publish(5)
    assert done.wait(5)
    props = got[0].properties
    assert isinstance(props, SharedTablesProperties)
    assert (props.ContentType, props.UserProperty) == ("application/json", [("site", "berlin")])
    assert 0 < props.MessageExpiryInterval <= 60  # the broker forwards the time left
    assert got[0].payload == b'{"value": 21.5}' and got[0].qos == 1


class _Chunks:
    """A socket stand-in that returns the queued chunks, then raises BlockingIOError (a non-blocking socket)."""

    def __init__(self, *chunks: bytes):
        self.chunks = list(chunks)
        self.asked: list[int] = []

    def recv(self, n: int) -> bytes:
        self.asked.append(n)
        if not self.chunks:
            raise BlockingIOError
        return self.chunks.pop(0)[:n]

    def fileno(self) -> int:
        return 42


def test_read_ahead_serves_small_reads_from_one_large_recv():
    inner = _Chunks(b"\x32\x0bhello world!")
    s = ReadAheadSocket(inner)
    assert s.pending() == 0
    assert s.recv(1) == b"\x32" and s.pending() == 13
    assert s.recv(1) == b"\x0b"
    assert s.recv(100) == b"hello world!"  # no more than is buffered: paho reads the rest next time
    assert s.pending() == 0 and inner.asked == [READ_AHEAD]  # one system call for three reads
    with pytest.raises(BlockingIOError):  # an empty buffer reads the socket, as paho expects
        s.recv(1)
    assert s.fileno() == 42  # everything else is the socket's own


def test_read_ahead_passes_a_closed_connection_through():
    s = ReadAheadSocket(_Chunks(b"ab", b""))
    assert s.recv(5) == b"ab"  # what the socket returned fits the request: handed over as is
    assert s.recv(1) == b""  # paho treats b"" as the connection lost


def test_read_ahead_adds_what_a_tls_socket_holds_to_pending():
    inner = _Chunks(b"xyz")
    inner.pending = lambda: 7
    s = ReadAheadSocket(inner)
    s.recv(1)
    assert s.pending() == 2 + 7


@pytest.mark.mosquitto
def test_paho_reads_a_burst_through_the_read_ahead_socket(mqtt5):
    """The agent's `on_socket_open` on a real connection: a burst of QoS 1 messages arrives whole and in order."""
    got, done = [], threading.Event()

    def on_message(client, userdata, msg):
        got.append(msg.payload)
        if len(got) == 2000:
            done.set()

    sub = mqtt5("sub", subscribe="sensors/#", on_socket_open=open_socket, on_message=on_message)
    assert isinstance(sub.socket(), ReadAheadSocket)
    pub = mqtt5("pub")
    sent = [b'{"value": %d, "pad": "%s"}' % (i, b"x" * (i % 300)) for i in range(2000)]
    for i, payload in enumerate(sent):
        info = pub.publish(f"sensors/s{i % 50}/temperature", payload, qos=1)
    info.wait_for_publish(10)
    assert done.wait(10), f"{len(got)} of 2000 arrived"
    assert got == sent


@pytest.mark.mosquitto
def test_read_bursts_parses_what_is_buffered_then_calls_after_once(mqtt5):
    """`read_bursts`: messages queued behind a slow one are parsed in bursts, whole and in order, and `after`
    runs once a burst (not once a message), always after the burst's last message."""
    got, bursts, done, published = [], [], threading.Event(), threading.Event()

    def on_message(client, userdata, msg):
        if not got:  # the other 1,999 pile up in the socket meanwhile, however slowly they are published
            published.wait(20)
            time.sleep(0.3)
        got.append(msg.payload)

    def after():
        if got and (not bursts or bursts[-1] != len(got)):
            bursts.append(len(got))
        if len(got) == 2000:
            done.set()

    sub = mqtt5("sub", subscribe="sensors/#", on_socket_open=open_socket, on_message=on_message)
    paho_receive.read_bursts(sub, after)
    pub = mqtt5("pub")
    sent = [b'{"value": %d}' % i for i in range(2000)]
    for i, payload in enumerate(sent):
        info = pub.publish(f"sensors/s{i % 50}/temperature", payload, qos=1)
    info.wait_for_publish(10)
    published.set()
    assert done.wait(10), f"{len(got)} of 2000 arrived"
    assert got == sent
    assert bursts[-1] == 2000  # `after` ran once the last message was in
    assert len(bursts) < 200, f"{len(bursts)} wake-ups for 2000 messages"


def _unreachable_after(client, messages: int) -> int:
    """Objects only the cyclic collector could free, left by paho handling `messages` PUBLISHes."""
    msg = mqtt.MQTTMessage(mid=1, topic=b"sensors/s1")
    msg.payload = b'{"temperature": 20.5}'
    gc.collect()
    gc.disable()
    try:
        for _ in range(messages):
            client._handle_on_message(msg)
        return gc.collect()
    finally:
        gc.enable()


def test_the_fast_matcher_leaves_no_cyclic_garbage_per_message():
    paho_receive.install()
    stock = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    stock._on_message_filtered = MQTTMatcher()  # paho's own
    stock.on_message = lambda *a: None
    assert _unreachable_after(stock, 1000) >= 1000  # stock paho 2.x: a function/cell cycle per message
    ours = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    got = []
    ours.on_message = lambda c, u, m: got.append(m.topic)
    assert _unreachable_after(ours, 1000) == 0
    assert len(got) == 1000  # and every message still reached on_message


def test_the_fast_matcher_still_routes_per_topic_callbacks():
    paho_receive.install()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    routed, fallback = [], []
    c.on_message = lambda cl, u, m: fallback.append(m.topic)
    c.message_callback_add("sensors/+", lambda cl, u, m: routed.append(m.topic))
    for topic in (b"sensors/s1", b"market/ACME/trade"):
        c._handle_on_message(mqtt.MQTTMessage(mid=1, topic=topic))
    assert routed == ["sensors/s1"] and fallback == ["market/ACME/trade"]  # as stock paho routes them
    c.message_callback_remove("sensors/+")
    c._handle_on_message(mqtt.MQTTMessage(mid=1, topic=b"sensors/s2"))
    assert fallback == ["market/ACME/trade", "sensors/s2"]
