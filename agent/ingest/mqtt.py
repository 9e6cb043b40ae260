"""MQTT into and out of the csp engine: one paho client per agent, as a realtime adapter manager.

`Link` owns the paho client (persistent QoS 1 session, reconnect with backoff,
TLS, credentials, the retained status topic with its will) and lives longer
than the engine, because acknowledgements and outbox publishes happen after the
last engine cycle. `MqttAdapterManager` is the csp side: its pump thread drains
everything paho received since the last wake-up, validates it and pushes ONE
list per topic kind in one `PushBatch`, so a burst of messages costs one engine
cycle, not one per message.

A QoS 1 message is acknowledged (`manual_ack`) only once it is safely recorded:
each push batch carries a `BatchMark`; the sink submits the batch's events and
dead letters to the store writer with `durable(mark)` as `on_durable`, and only
then are the batch's PUBACKs sent, in arrival order. A crash before that means
the broker redelivers, and deterministic event ids make the redelivery harmless.
"""


import collections
import socket
import struct
import threading
import time
from datetime import datetime

import csp
import paho.mqtt.client as mqtt
from csp import ts
from csp.impl.adaptermanager import AdapterManagerImpl
from csp.impl.pushadapter import PushBatch, PushGroup, PushInputAdapter
from csp.impl.wiring import py_push_adapter_def
from edgewatch.agent.config import Config, read_secret, subscriptions
from edgewatch.agent.ingest import paho_receive, paho_send
from edgewatch.agent.ops import metrics
from edgewatch.agent.encoding import json_dumps
from edgewatch.agent.records import RECORD_TYPES, BatchMark, DeadLetter
from edgewatch.agent.timeutil import isoformat, utcnow
from edgewatch.common import __version__
from edgewatch.common.logs import get
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

log = get("edgewatch.agent.ingest.mqtt")

MAX_BATCH = 5000  # messages per push at most: bounds one engine cycle's latency
SHED_WARN_EVERY = 60.0  # seconds between two warnings that QoS 0 input is being dropped
MAX_BATCHES_IN_FLIGHT = 2  # pushed but not yet durable: under load the next batch grows instead
_PUBACK = struct.Struct("!BBH")
PROTOCOL_REFUSED = {"Unsupported protocol version", "Unacceptable protocol version"}


def no_delay(client, userdata, sock) -> None:
    """paho's `on_socket_open`: turn off Nagle's algorithm, which paho leaves on.

    With Nagle, a small write (an event, a PUBACK) can wait for the TCP acknowledgement of the
    previous one; with it on at both ends, arrivals at the agent showed regular gaps of a delayed ACK.
    """
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # not a TCP socket (a Unix socket, a websocket wrapper)
        pass


def open_socket(client, userdata, sock) -> None:
    """The agent's `on_socket_open`: no Nagle, and paho reads through a `ReadAheadSocket`.

    paho calls this right after it stores the new connection's socket in `client._sock` (paho 2.x,
    pinned <3) and before it sends CONNECT; every later read, write and select goes through it.
    """
    no_delay(client, userdata, sock)
    client._sock = paho_receive.ReadAheadSocket(sock)


class Link:
    """The agent's one paho client; thread-safe publish and ack; received messages queue in `inbox`."""

    def __init__(self, cfg: Config):
        self.cfg = cfg.mqtt
        out = self.cfg.output_prefix
        self.status_topic = f"{out}/status"
        self.deadletter_topic = f"{out}/deadletter"
        self.agent_id = cfg.agent.id
        # the broker delivers a message of a shared subscription ($share/{group}/...) on its own topic
        self.topics = subscriptions(self.cfg)
        self.inbox: collections.deque = collections.deque()  # (received_at, MQTTMessage)
        self.wake = threading.Event()  # set after paho has read a burst of messages into the inbox
        self.connected = threading.Event()
        self.on_connect: list = []  # callables run (in paho's thread) after every successful connect
        self.on_published: list = []  # callables(mid) run (in paho's thread) on PUBACK
        self.protocol = ""
        self.client: mqtt.Client | None = None
        self._password = read_secret("mqtt.password_file", self.cfg.password_file)
        self._since = utcnow()
        self._connects = 0
        self._outcome: collections.deque = collections.deque()  # first-connection outcome, for protocol "auto"
        self._accepting = True
        self._switching = threading.Lock()  # a protocol fallback and close() do not interleave
        self._shed_since_warning, self._shed_warned = 0, -SHED_WARN_EVERY
        self._subscribing: dict[int, list[str]] = {}  # SUBSCRIBE mid -> its topic filters, until the SUBACK
        self.refused: dict[str, str] = {}  # topic filter -> the reason the broker refused it (an ACL, a quota)
        self.on_publish_refused: list = []  # hooks(mid, reason): a PUBACK said the broker did not take it
        paho_receive.install()  # paho's property tables built once, not per PUBLISH; no garbage cycle per message

    # -- connection -------------------------------------------------------------------------
    def start(self, decide_timeout: float = 3.0) -> None:
        """Connect in the background (paho retries with backoff until the broker is there).

        With protocol "auto" the broker's first answer decides, however late it comes: MQTT 5, or 3.1.1 when
        the broker refuses 5, drops the connection before CONNACK, or never answers it (amqtt). While no
        broker answers, paho retries MQTT 5 and a thread waits for the answer.
        """
        auto = self.cfg.protocol == "auto"
        self._start_client("5" if auto else self.cfg.protocol)
        if auto and not self._decide(decide_timeout, give_up=decide_timeout):  # the broker is unreachable
            threading.Thread(target=self._decide, args=(decide_timeout,), name="mqtt-protocol", daemon=True).start()

    def _decide(self, timeout: float, give_up: float | None = None) -> bool:
        """Wait for the broker's first answer to MQTT 5 (a socket open `timeout` seconds without one is the answer
        of a broker that ignores MQTT 5) and settle the protocol on it; False if no socket opened within
        `give_up` seconds (paho goes on retrying)."""
        wait, opened, began = threading.Event(), None, time.monotonic()
        while self._accepting and not self._outcome:
            now = time.monotonic()
            if self.client.socket() is None:
                opened = None
                if give_up is not None and now - began >= give_up:
                    return False
            elif opened is None:
                opened = now
            elif now - opened >= timeout:
                self._outcome.append("no CONNACK")
            wait.wait(0.01)
        self._settle()
        return True

    def _settle(self) -> None:
        """Keep MQTT 5 if the broker took it; else restart the client on 3.1.1 (before any first connection, so
        the old client holds nothing: no message received, none queued to publish)."""
        with self._switching:
            if not self._accepting or not self._outcome or self._outcome[0] == "connected":
                return
            log.info("mqtt_protocol_fallback", refused="5", using="3.1.1", why=self._outcome[0])
            self.client.disconnect()
            self.client.loop_stop()
            self._outcome.clear()
            self._start_client("3.1.1")

    def _start_client(self, protocol: str) -> None:
        v5 = protocol == "5"
        self.protocol = protocol
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.cfg.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else False,
            manual_ack=True,
        )
        c.max_inflight_messages_set(max(20, self.cfg.receive_maximum))
        c.reconnect_delay_set(self.cfg.reconnect_min_delay, self.cfg.reconnect_max_delay)
        if self.cfg.tls:
            c.tls_set(ca_certs=self.cfg.ca_file or None, certfile=self.cfg.cert_file or None,
                      keyfile=self.cfg.key_file or None)
        if self.cfg.username:
            c.username_pw_set(self.cfg.username, self._password)
        c.will_set(self.status_topic, self._status("offline"), qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_socket_open = open_socket
        paho_receive.read_bursts(c, self._burst_read)
        if not self.cfg.tls:  # events and PUBACKs leave from the thread that makes them (plain TCP only)
            paho_send.install(c)
        kwargs = {}
        if v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.cfg.session_expiry
            props.ReceiveMaximum = max(1, min(self.cfg.receive_maximum, 65535))
            kwargs = {"clean_start": False, "properties": props}
        self.client = c
        c.connect_async(self.cfg.host, self.cfg.port, self.cfg.keepalive, **kwargs)
        c.loop_start()

    def _status(self, state: str) -> bytes:
        """The retained status. `since` is when the state began: the last connect for `online`, the stop for a clean
        `offline`; the will's `offline`, which the broker sends later on the agent's behalf, carries its start."""
        return json_dumps({"state": state, "version": __version__, "since": isoformat(self._since),
                           "agent_id": self.agent_id}).encode()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            why = str(reason_code)
            self._outcome.append("refused" if why in PROTOCOL_REFUSED else why)
            log.warning("mqtt_connect_refused", reason=why, host=self.cfg.host, port=self.cfg.port)
            return
        self._connects += 1
        if self._connects > 1:
            metrics.MQTT_RECONNECTS.inc()
        self._since = utcnow()
        # MQTT 5: a retained message is delivered when the subscription is new, not again at every reconnect to a
        # session that has it (a retained reading or malformed message came back as a reading or dead letter each time)
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        _, mid = client.subscribe([(t, options if self.protocol == "5" else 1) for t in self.topics])
        self._subscribing[mid] = list(self.topics)
        client.publish(self.status_topic, self._status("online"), qos=1, retain=True)
        self.connected.set()
        metrics.MQTT_CONNECTED.set(1)
        self._outcome.append("connected")
        log.info("mqtt_connected", host=self.cfg.host, port=self.cfg.port, protocol=self.protocol,
                 session_present=bool(getattr(flags, "session_present", False)))
        for hook in self.on_connect:
            hook()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        metrics.MQTT_CONNECTED.set(0)
        if not was:
            self._outcome.append("dropped before CONNACK")
        if self._accepting:
            log.warning("mqtt_disconnected", reason=str(reason_code))

    def _on_message(self, client, userdata, msg) -> None:
        if not self._accepting:  # after close() began, leave messages unacknowledged: the broker redelivers
            return
        if msg.qos == 0 and len(self.inbox) >= self.cfg.max_qos0_backlog:
            self._shed()  # sent at most once, nothing to redeliver it: a publisher faster than the engine
            return        # would otherwise grow the inbox without bound (QoS 1 waits for our PUBACKs)
        self.inbox.append((utcnow(), msg))

    def _shed(self) -> None:
        metrics.MESSAGES_SHED.inc()
        self._shed_since_warning += 1
        now = time.monotonic()
        if now - self._shed_warned >= SHED_WARN_EVERY:
            log.warning("mqtt_qos0_shed", dropped=self._shed_since_warning, backlog=len(self.inbox),
                        hint="the engine is behind a QoS 0 publisher: publish at QoS 1 to be throttled instead, "
                             "or raise mqtt.max_qos0_backlog")
            self._shed_warned, self._shed_since_warning = now, 0

    def _burst_read(self) -> None:
        """paho's thread has parsed everything it had buffered: wake the pump if that queued messages."""
        if self.inbox and not self.wake.is_set():
            self.wake.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        """A SUBACK: a refused filter (code >= 0x80, e.g. an ACL) means readings that will never come."""
        for topic, code in zip(self._subscribing.pop(mid, ()), reason_codes):
            if code.is_failure:
                self.refused[topic] = str(code)
                log.error("mqtt_subscribe_refused", topic=topic, reason=str(code))
            else:
                self.refused.pop(topic, None)
        metrics.MQTT_SUBSCRIPTIONS_REFUSED.set(len(self.refused))

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if reason_code.is_failure:  # MQTT 5: the broker answered but did not take the message
            metrics.MQTT_PUBLISHES_REFUSED.inc()
            log.warning("mqtt_publish_refused", mid=mid, reason=str(reason_code))
            for hook in self.on_publish_refused:
                hook(mid, str(reason_code))
            return
        for hook in self.on_published:
            hook(mid)

    # -- traffic ----------------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> int:
        """Queue a message; returns its mid (paho resends unacknowledged QoS 1 messages on reconnect)."""
        return self.client.publish(topic, payload, qos=qos, retain=retain).mid

    def ack(self, mids: list[int]) -> None:
        """PUBACK each mid, in order, as ONE write: paho's `ack()` wakes its thread once per message.

        Uses paho 2.x's packet queue (pinned <3 in pyproject): a PUBACK is 4 bytes, `0x40 0x02 mid`.
        """
        if mids:
            self.client._packet_queue(mqtt.PUBACK, b"".join([_PUBACK.pack(0x40, 2, m) for m in mids]), 0, 0)

    def stop_accepting(self) -> None:
        """First step of a clean stop: new messages stay unacknowledged (redelivered next session)."""
        self._accepting = False
        self.wake.set()

    def close(self, timeout: float = 2.0) -> None:
        """Status offline (retained), clean disconnect (no will), stop paho's thread."""
        with self._switching:  # a protocol decision under way finishes first, or never starts
            self._accepting = False
        if self.client is None:
            return
        if self.connected.is_set():
            self._since = utcnow()
            try:
                self.client.publish(self.status_topic, self._status("offline"), qos=1,
                                    retain=True).wait_for_publish(timeout)
            except (RuntimeError, ValueError) as e:
                log.warning("mqtt_status_offline_failed", error=str(e))
        self.client.disconnect()
        self.client.loop_stop()
        metrics.MQTT_CONNECTED.set(0)


class MqttAdapterManager:
    """Graph-time side: `subscribe(kind)` -> ts[list[Record]]; `dead_letters()`; `marks()`."""

    def __init__(self, link: Link, validator, capture=None, ring=None):
        self.link = link
        self.validator = validator  # ingest.validate.Validator
        self.capture = capture  # ingest.capture.CaptureWriter or None
        self.ring = ring  # ingest.ring.ReadingRing for the status page, or None
        self._group = PushGroup()
        self._pending: collections.OrderedDict[int, tuple] = collections.OrderedDict()  # seq -> (count, mids, first)
        self._pending_count = 0  # messages in `_pending`
        self._lock = threading.Lock()
        self._durable = threading.Condition(self._lock)
        self.durable_seq = 0

    def subscribe(self, kind: str) -> ts[list]:
        return _input(self, list[RECORD_TYPES[kind]], kind, push_mode=csp.PushMode.NON_COLLAPSING,
                      push_group=self._group)

    def dead_letters(self) -> ts[list[DeadLetter]]:
        return _input(self, list[DeadLetter], "deadletter", push_mode=csp.PushMode.NON_COLLAPSING,
                      push_group=self._group)

    def marks(self) -> ts[BatchMark]:
        return _input(self, BatchMark, "mark", push_mode=csp.PushMode.NON_COLLAPSING, push_group=self._group)

    def durable(self, mark: BatchMark, submitted: float) -> None:
        """Writer callback: batch `mark` (and everything before it) is committed; ack in arrival order."""
        metrics.LOG_WRITE_SECONDS.observe(time.perf_counter() - submitted)
        with self._lock:
            ready, done = [], 0
            while self._pending and next(iter(self._pending)) <= mark.seq:
                count, mids, _ = self._pending.popitem(last=False)[1]
                ready += mids
                done += count
            self._pending_count -= done
            self.durable_seq = max(self.durable_seq, mark.seq)
            self._durable.notify_all()
        self.link.ack(ready)
        metrics.MESSAGES_DONE.inc(done)

    def wait_for_durable(self, seq: int, cancelled) -> None:
        """Back-pressure for the pump: while the log is behind, messages gather into a bigger next batch."""
        with self._durable:
            while self.durable_seq < seq and not cancelled():
                self._durable.wait(0.1)

    def _register(self, seq: int, count: int, mids: list[int], first: datetime) -> None:
        with self._lock:
            self._pending[seq] = (count, mids, first)
            self._pending_count += count

    def unacked(self, now: datetime) -> tuple[int, float]:
        """(messages received but not yet acknowledged, seconds the oldest of them has waited; 0 when none).

        A message waits in paho's inbox, then in a pushed batch until its events are committed. One that
        waits past `mqtt.ack_deadline` means the pipeline is stuck or far behind: /health says so.
        """
        inbox = self.link.inbox
        with self._lock:
            count = self._pending_count
            oldest = next(iter(self._pending.values()))[2] if self._pending else None
        if oldest is None and inbox:
            try:
                oldest = inbox[0][0]
            except IndexError:  # the pump took it meanwhile
                pass
        count += len(inbox)
        return count, (max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0)

    def _create(self, engine, memo):
        return _MqttAdapterManagerImpl(engine, self)


class _MqttAdapterManagerImpl(AdapterManagerImpl):
    def __init__(self, engine, rep: MqttAdapterManager):
        super().__init__(engine)
        self._rep = rep
        self._engine = engine
        self.inputs: dict[str, PushInputAdapter] = {}
        self._running = False
        self._thread: threading.Thread | None = None
        self._seq = 0

    def start(self, starttime, endtime):
        self._running = True
        self._thread = threading.Thread(target=self._pump, name="mqtt-pump", daemon=True)
        self._thread.start()

    def stop(self):
        """Called by the engine as it stops: no push may happen after this returns."""
        self._running = False
        self._rep.link.wake.set()
        with self._rep._durable:
            self._rep._durable.notify_all()
        if self._thread is not None:
            self._thread.join()

    def process_next_sim_timeslice(self, now):
        return None

    def _pump(self) -> None:
        link = self._rep.link
        while self._running:
            link.wake.wait(0.5)
            link.wake.clear()
            while self._running and link.inbox and link._accepting:
                self._push(link.inbox)
                self._rep.wait_for_durable(self._seq - MAX_BATCHES_IN_FLIGHT + 1, lambda: not self._running)

    def _push(self, inbox: collections.deque) -> None:
        """Validate up to MAX_BATCH queued messages and push them as one batch."""
        rep = self._rep
        parse = rep.validator.parse
        capture = rep.capture
        lists: dict[str, list] = {k: [] for k in RECORD_TYPES}
        dead: list[DeadLetter] = []
        mids: list[int] = []
        first = last = inbox[0][0]
        n = min(len(inbox), MAX_BATCH)
        for _ in range(n):
            received_at, msg = inbox.popleft()
            last = received_at
            try:
                topic = msg.topic
            except UnicodeDecodeError:
                topic = msg._topic.decode("utf-8", "backslashreplace")
            r = parse(topic, msg.payload, received_at)
            if type(r) is DeadLetter:
                dead.append(r)
                metrics.DEAD_LETTERS.labels(r.code).inc()
            else:
                lists[r.kind].append(r.record)
                if capture is not None:
                    capture.write(received_at, topic, r.text)
            if msg.qos:
                mids.append(msg.mid)
        if capture is not None:
            capture.flush()
        sensors = lists["sensor"]
        if sensors:
            sensor_ids = [r.sensor_id for r in sensors]  # a csp Struct field read costs: once per reading
            metrics.count_sensor_groups(sensor_ids)
            if rep.ring is not None:
                rep.ring.extend(sensor_ids, sensors)
        self._seq += 1
        rep._register(self._seq, n, mids, first)
        with PushBatch(self._engine) as batch:
            for kind, records in lists.items():
                if records:
                    metrics.MESSAGES_IN.labels(kind).inc(len(records))
                    adapter = self.inputs.get(kind)
                    if adapter is not None:
                        adapter.push_tick(records, batch)
            if dead:
                self.inputs["deadletter"].push_tick(dead, batch)
            self.inputs["mark"].push_tick(BatchMark(seq=self._seq, count=n, received_at=first, last=last), batch)


class _InputAdapter(PushInputAdapter):
    def __init__(self, mgr_impl: _MqttAdapterManagerImpl, typ, kind: str):
        mgr_impl.inputs[kind] = self


_input = py_push_adapter_def("MqttInput", _InputAdapter, ts["T"], MqttAdapterManager, typ="T", kind=str)
