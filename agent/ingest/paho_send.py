"""paho's send path, taken by the thread that makes the packet: events and PUBACKs leave without a hand-off.

In paho's threaded mode (`loop_start`), `publish()` only queues the packet and
writes a byte to a socket pair; paho's own thread leaves select, waits for the
GIL and writes it. The agent's log writer publishes every event and
acknowledges every input batch right after its commit, so that hop sat on the
way out of everything and showed in the median and the tail of publish-to-event
latency (bench/README.md, Ingest).

`install(client)` lets a thread other than paho's write a QoS 1/2 PUBLISH or a
PUBACK straight to the socket when the client is connected and nothing is
queued ahead of it; otherwise, and for the rest of a short write, the packet
takes paho's queue as before. One lock orders these writes with paho's own
(`_packet_write`), so packets never interleave on the wire. Plain TCP only: an
SSL connection must not be written by one thread while another reads it.
Everything else (message ids, in-flight tracking, resends after a reconnect)
stays paho's, which builds the packet before it reaches this path.
"""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt


def _direct(command: int, qos: int) -> bool:
    """Packets that need nothing from paho's thread once written: PUBACK, and a PUBLISH paho tracks until acked."""
    return command == mqtt.PUBACK or (command & 0xF0 == mqtt.PUBLISH and qos > 0)


def install(client: mqtt.Client) -> None:
    """Route `client`'s PUBLISH (QoS ≥ 1) and PUBACK packets from other threads straight to its socket."""
    lock = threading.RLock()
    queue_packet, write_queued = client._packet_queue, client._packet_write

    def packet_write() -> mqtt.MQTTErrorCode:
        with lock:
            return write_queued()

    def packet_queue(command: int, packet: bytes, mid: int, qos: int, info=None) -> mqtt.MQTTErrorCode:
        if (_direct(command, qos) and threading.current_thread() is not client._thread
                and client.is_connected()):
            with lock:
                sock = client._sock
                if sock is None or client._out_packet:
                    return queue_packet(command, packet, mid, qos, info)
                try:
                    sent = sock.send(packet)
                except OSError:  # full (BlockingIOError) or broken: paho's thread deals with it
                    sent = 0
                if sent:
                    client._last_msg_out = time.monotonic()  # paho's keepalive clock (its time_func)
                if sent == len(packet):
                    return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
                return queue_packet(command, packet[sent:], mid, qos, info)  # the rest, before anyone else's
        return queue_packet(command, packet, mid, qos, info)

    client._packet_write = packet_write
    client._packet_queue = packet_queue
