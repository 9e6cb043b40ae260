"""The MQTT 5 properties of a received PUBLISH, decoded without rebuilding paho's lookup tables each time.

paho 2.x decodes every PUBLISH of an MQTT 5 session into a new `Properties`:
its constructor rebuilds two 27-entry tables (property names, their types and
packet kinds) through a validating `__setattr__`, and `unpack` first "clears"
the fresh object by testing all 27 names. For a small sensor reading that is
about a third of what paho's thread spends on it, on the GIL that validation
and the csp engine need. The tables are constants that paho only reads, so
`SharedTablesProperties` shares one copy and clears only what is set; decoding
is otherwise paho's own. `install()` makes paho's PUBLISH decoder use it; the
agent's own `Properties` (CONNECT, PUBLISH) are paho's, untouched.
"""

from __future__ import annotations

from paho.mqtt import _packet
from paho.mqtt.properties import Properties

_TABLES = ("types", "names", "properties")


class SharedTablesProperties(Properties):
    """paho's `Properties`, with the lookup tables shared by every instance."""

    _tables: dict = {}  # table name -> the one copy, set by install()

    def __init__(self, packetType: int):
        self.__dict__.update(self._tables, packetType=packetType)

    def clear(self) -> None:
        """Drop every property set (paho stores them as attributes; the tables and packet type stay)."""
        for name in [n for n in self.__dict__ if n != "packetType" and n not in _TABLES]:
            del self.__dict__[name]


def install() -> bool:
    """Decode received PUBLISH properties with `SharedTablesProperties`; False where this paho is laid out
    differently (no `_packet.Properties`, or other instance state), and then nothing is changed."""
    current = getattr(_packet, "Properties", None)
    if current is SharedTablesProperties:
        return True
    if current is not Properties:
        return False
    probe = Properties(0)
    if set(vars(probe)) != {"packetType", *_TABLES}:
        return False
    SharedTablesProperties._tables = {name: vars(probe)[name] for name in _TABLES}
    _packet.Properties = SharedTablesProperties
    return True
