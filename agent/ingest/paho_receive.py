"""paho's receive path, made cheaper where it costs the agent most: socket reads, MQTT 5 properties and
a reference cycle per message.

paho's thread shares the GIL with validation, the csp engine and the log writer, so
every microsecond it spends per message is one they wait for.

Reads: paho reads a packet as 1 byte (its type), 1-4 bytes (its length), then
the rest: three `recv` calls, each releasing and re-acquiring the GIL, and it
selects again before every packet. `ReadAheadSocket` serves those reads from one
large `recv` and reports what it holds through `pending()`, which paho's loop
already asks of SSL sockets, so buffered packets are read without waiting.

Properties: paho 2.x decodes every PUBLISH of an MQTT 5 session into a new `Properties`:
its constructor rebuilds two 27-entry tables (property names, their types and
packet kinds) through a validating `__setattr__`, and `unpack` first "clears"
the fresh object by testing all 27 names. For a small sensor reading that is
about a third of what paho's thread spends on it, on the GIL that validation
and the csp engine need. The tables are constants that paho only reads, so
`SharedTablesProperties` shares one copy and clears only what is set; decoding
is otherwise paho's own. The agent's own `Properties` (CONNECT, PUBLISH) are paho's, untouched.

Garbage: for every message paho looks up per-topic callbacks (`message_callback_add`)
with `MQTTMatcher.iter_match`, which builds a recursive closure, a function and
cell that reference each other, even when no callback is registered (the agent
registers none). Only the cyclic collector frees those, so a drain of many readings
runs young-generation collections it would not need, and memory that refcounting
would reuse at once stays dirty until then (docs/experiments.md). `EmptyFastMatcher`
answers "nothing" without building it while no filter is registered.

`install()` puts both in place: paho's PUBLISH decoder uses `SharedTablesProperties`,
and every client created afterwards gets an `EmptyFastMatcher`.

Bursts: `read_bursts(client, after)` makes paho parse everything buffered in one turn of its loop
and then call `after`, where the agent wakes its pump: one wake-up per burst.
"""

from __future__ import annotations

from collections.abc import Callable

from paho.mqtt import _packet
from paho.mqtt import client as _client
from paho.mqtt.matcher import MQTTMatcher
from paho.mqtt.properties import Properties

_TABLES = ("types", "names", "properties")
_STATE = {"packetType", *_TABLES}  # what a paho `Properties` holds besides the properties set on it
READ_AHEAD = 65536  # bytes per socket read: a burst of ~1,000 small readings
MAX_BURST = 1000  # loop_read calls per burst at most: paho's loop still sends and pings between bursts


class SharedTablesProperties(Properties):
    """paho's `Properties`, with the lookup tables shared by every instance."""

    _tables: dict = {}  # table name -> the one copy, set by install()

    def __init__(self, packetType: int):
        self.__dict__.update(self._tables, packetType=packetType)

    def clear(self) -> None:
        """Drop every property set (paho stores them as attributes; the tables and packet type stay)."""
        for name in [n for n in self.__dict__ if n not in _STATE]:
            del self.__dict__[name]


class EmptyFastMatcher(MQTTMatcher):
    """paho's topic matcher for per-topic callbacks, without the per-message garbage while it is empty."""

    def iter_match(self, topic: str):
        return super().iter_match(topic) if self._root._children else iter(())


def install() -> bool:
    """Decode received PUBLISH properties with `SharedTablesProperties` and give clients created from now on an
    `EmptyFastMatcher`; False where this paho is laid out differently (no `_packet.Properties` or
    `client.MQTTMatcher`, or other instance state), and then nothing is changed."""
    current = getattr(_packet, "Properties", None)
    if current is SharedTablesProperties:
        return True
    if current is not Properties or getattr(_client, "MQTTMatcher", None) is not MQTTMatcher:
        return False
    probe = Properties(0)
    if set(vars(probe)) != _STATE:
        return False
    SharedTablesProperties._tables = {name: vars(probe)[name] for name in _TABLES}
    _packet.Properties = SharedTablesProperties
    _client.MQTTMatcher = EmptyFastMatcher  # what `Client.__init__` builds its callback matcher from
    return True


class ReadAheadSocket:
    """A connected socket whose reads are served from one large `recv`; everything else is the socket's own."""

    def __init__(self, sock):
        self._sock = sock
        self._inner_pending = getattr(sock, "pending", None)  # TLS: decrypted bytes not yet read
        self._buf = b""
        self._pos = 0

    def recv(self, bufsize: int) -> bytes:
        """Up to `bufsize` bytes: from the buffer, or from the socket (which may raise BlockingIOError as usual)."""
        if self._pos >= len(self._buf):
            data = self._sock.recv(max(bufsize, READ_AHEAD))
            if len(data) <= bufsize:
                return data
            self._buf, self._pos = data, 0
        chunk = self._buf[self._pos:self._pos + bufsize]
        self._pos += len(chunk)
        if self._pos >= len(self._buf):
            self._buf, self._pos = b"", 0
        return chunk

    def pending(self) -> int:
        """Bytes readable without waiting: paho's loop skips select()'s wait while this is above 0."""
        inner = self._inner_pending() if self._inner_pending is not None else 0
        return len(self._buf) - self._pos + inner

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


def read_bursts(client: _client.Client, after: Callable[[], None]) -> None:
    """Make one of `client`'s `loop_read` calls take every packet its `ReadAheadSocket` holds, then run `after()`.

    paho reads one packet per turn of its loop, with a `select()` and its housekeeping before each:
    a system call per message even when the next one is already buffered. Reading the whole burst
    first also tells the consumer when a burst ends, so `after` can wake it once per burst instead of
    at the burst's first message, while paho still has the rest to parse on the same GIL.
    """
    loop_read = client.loop_read

    def read_buffered(max_packets: int = 1) -> _client.MQTTErrorCode:
        rc = loop_read(max_packets)
        for _ in range(MAX_BURST):
            sock = client._sock
            if rc or sock is None or getattr(sock, "pending", None) is None or sock.pending() <= 0:
                break
            rc = loop_read(max_packets)
        after()
        return rc

    client.loop_read = read_buffered
