"""Analytics state that survives a restart: the `StateBook` each stateful node keeps its state in, and the
in-engine node that takes snapshots of it.

A stateful node hands its state container to the book when the engine starts (`keep`): a book loaded from
a snapshot gives back the saved container instead, so the node resumes where the last run left it. The
snapshot node takes the book's state inside the engine, between cycles, so it is consistent without a
lock; it runs after every analytic in its cycle (it reads their merged output), and it records the
`received_at` of the newest input the state includes (the watermark): a start replays the captured
messages after it. Taking a snapshot pickles the state in the engine; compressing and writing it are
the `sink`'s job, off the engine thread.

A snapshot is used only by the same code: `version()` changes when the layout of a persisted class
(`@persisted`: its slots, and the row widths of the arrays it holds, `COLUMNS`) or the format changes. Each
state in it is used only with the settings it was built under: `config_hashes` hashes them per section and per
sensor group (the keys that can change at run time do not count: a running graph keeps its state across them),
and `stale_states` names the states whose settings changed, which start fresh while the others resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import operator
import pickle
import time
from datetime import datetime, timedelta

import csp
from csp import ts
from edgewatch.agent.records import BatchMark, Event

FORMAT = 2  # bump when the meaning of persisted state changes without a change of its classes' layout
# state name (before any ":GROUP") -> the sections whose settings shape it; for a group's state ("anomaly:pumps")
# the first section's hash is that group's
SHAPED_BY: dict[str, tuple[str, ...]] = {
    "anomaly": ("anomaly",),
    "counters": ("anomaly",),
    "health": ("health", "drift", "maintenance"),
    "drift_peers": ("health", "drift", "maintenance"),
    "price_alerts": ("market", "risk", "advisor"),
    "market": ("market", "risk", "advisor"),
    "risk": ("market", "risk", "advisor"),
    "advisor": ("market", "risk", "advisor"),
}
SECTIONS = tuple(dict.fromkeys(s for sections in SHAPED_BY.values() for s in sections))
MARKET_FEEDS = ("trade", "quote", "position", "pnl", "news")
# state name (before any ":GROUP") -> the input feeds it learns from: warming some states up needs only theirs
LEARNS_FROM: dict[str, tuple[str, ...]] = {"anomaly": ("sensor",), "counters": ("sensor",), "health": ("sensor",),
                                           "drift_peers": ("sensor",)}
_LAYOUT: dict[str, tuple[str, ...]] = {}


class _Unset:
    """The value of a slot never set (pickled by name, so it stays the one instance)."""

    def __reduce__(self) -> str:
        return "UNSET"


UNSET = _Unset()


def persisted(cls: type) -> type:
    """Class decorator for a `__slots__` class whose instances are saved in snapshots: its slots, and the
    class attribute `COLUMNS` if it has one (the row widths of the arrays it holds: a column added to a table
    changes no slot), are part of `version()`; it is pickled as a plain tuple of its slot values (a dict of
    slot names per object would double the size of a snapshot and the time the engine spends taking it)."""
    slots = tuple(cls.__slots__)
    _LAYOUT[f"{cls.__module__}.{cls.__qualname__}"] = slots + tuple(getattr(cls, "COLUMNS", ()))
    values = operator.attrgetter(*slots)

    def __getstate__(self) -> tuple:
        try:
            return values(self) if len(slots) > 1 else (values(self),)
        except AttributeError:  # a slot not set yet (e.g. a symbol's open bar before its first trade)
            return tuple([getattr(self, a, UNSET) for a in slots])

    def __setstate__(self, state: tuple) -> None:
        for a, v in zip(slots, state):
            if v is not UNSET:
                setattr(self, a, v)

    cls.__getstate__, cls.__setstate__ = __getstate__, __setstate__
    return cls


def state_name(base: str, group: str = "") -> str:
    """The name a state is kept under: `base` ("anomaly"), or `base:GROUP` for a sensor group's own node. The
    settings' hashes are keyed the same way (`config_hashes`)."""
    return f"{base}:{group}" if group else base


def _split(name: str) -> tuple[str, str]:
    """`state_name`'s inverse: (base, group or "")."""
    base, _, group = name.partition(":")
    return base, group


def settings_table(key: str) -> str:
    """The configuration table a `config_hashes` key stands for: "[anomaly]", "[anomaly.groups.pumps]"."""
    section, group = _split(key)
    return f"[{section}.groups.{group}]" if group else f"[{section}]"


def version() -> str:
    """The snapshot format and the layout of every persisted class (the analytics modules must be imported)."""
    digest = hashlib.blake2b(repr(sorted(_LAYOUT.items())).encode(), digest_size=6).hexdigest()
    return f"{FORMAT}.{digest}"


def config_hashes(cfg, live: dict) -> dict[str, str]:
    """Section, and section:GROUP for each sensor group -> hash of the keys that shape its state (`live`: section
    -> keys that change at run time, or "*"). Which group a sensor belongs to is part of every hash of its
    section: moving a sensor between groups makes them all stale; a group's own settings only its own."""
    out = {}
    for section in SECTIONS:
        skip = live.get(section, ())
        values = dataclasses.asdict(getattr(cfg, section))
        groups = values.pop("groups", {})
        members = [[name, g["sensors"]] for name, g in groups.items()]
        out[section] = _hash([_shaping(values, skip), members])
        for name, g in groups.items():
            out[state_name(section, name)] = _hash([_shaping(g["settings"], skip), members])
    return out


def _shaping(values: dict, skip: object) -> dict:
    """A section's values without its live keys (a group's settings have no groups of their own)."""
    return {k: v for k, v in values.items() if skip != "*" and k not in skip and k != "groups"}


def _hash(values: object) -> str:
    return hashlib.blake2b(json.dumps(values, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


def shaped_by(state: str) -> list[str]:
    """The `config_hashes` keys a state depends on ("health:pumps" -> health:pumps, drift, maintenance)."""
    base, group = _split(state)
    first, *rest = SHAPED_BY.get(base, SECTIONS)
    return [state_name(first, group), *rest]


def feeds_of(states: list[str]) -> set[str]:
    """The input feeds that `states` learn from."""
    return {feed for name in states for feed in LEARNS_FROM.get(_split(name)[0], MARKET_FEEDS)}


def stale_states(states: list[str], saved: dict, current: dict) -> dict[str, list[str]]:
    """State -> what changed in the settings it was saved under (sections or section:GROUP), for the `states`
    of a snapshot that the current settings cannot resume."""
    out = {}
    for name in states:
        changed = [k for k in shaped_by(name) if saved.get(k) != current.get(k)]
        if changed:
            out[name] = changed
    return out


class StateBook:
    """The analytics' state containers by name: what a snapshot holds and what a start restores.

    `water` is the `received_at` of the newest input the state includes (None before any); `stale` names the
    snapshot's states left out because their settings changed (-> what changed)."""

    def __init__(self, restored: dict | None = None, water: datetime | None = None,
                 stale: dict[str, list[str]] | None = None):
        self._restored = dict(restored or {})
        self._kept: dict[str, object] = {}
        self.water = water
        self.stale = stale or {}
        self.restored = sorted(self._restored)  # the names a snapshot provided

    def fill(self, warmed: StateBook) -> list[str]:
        """Take the states this book cannot resume from `warmed` (a run over the captures before `water`);
        returns their names."""
        names = sorted(set(warmed._kept) - set(self._restored) - set(self._kept))
        for name in names:
            self._restored[name] = warmed._kept[name]
        return names

    def keep(self, name: str, fresh: object) -> object:
        """The container `name` resumes from: the restored one when the snapshot has it, else `fresh`."""
        if name in self._kept:
            raise ValueError(f"state {name!r} kept twice")
        obj = self._restored.pop(name, fresh)
        self._kept[name] = obj
        return obj

    def dumps(self) -> bytes:
        """The kept state, pickled (call it between engine cycles, or with the engine stopped)."""
        return pickle.dumps(self._kept, protocol=pickle.HIGHEST_PROTOCOL)

    def keys(self) -> dict[str, int]:
        """Name -> keys (sensors, series, symbols) it holds (its `len`)."""
        return {name: len(obj) for name, obj in self._kept.items()}


def loads(blob: bytes) -> dict:
    """The state dict of `StateBook.dumps` (trusted input: the agent's own log)."""
    return pickle.loads(blob)


def keep(book: StateBook | None, name: str, fresh: object) -> object:
    """`book.keep(name, fresh)`, or `fresh` when the graph runs without a book (replay, score, tests)."""
    return fresh if book is None else book.keep(name, fresh)


@csp.node(memoize=False)
def snapshots(after: ts[list[Event]], marks: ts[BatchMark], past: ts[dict], book: object, every: timedelta,
              live_from: datetime, sink: object):
    """Every `every` of engine time from `live_from` on, hand `sink.offer(blob, water, keys, seconds)` the
    book's state, unless no input arrived since the last one. `after` (passive) is the analytics' merged
    output: reading it ranks this node after every analytic, so a snapshot includes its cycle's inputs.
    `marks` are the live batches (their last `received_at`), `past` the captured batches a start replays
    (engine time = their `received_at`)."""
    with csp.alarms():
        a_take = csp.alarm(bool)
    with csp.state():
        s_taken = book.water  # the watermark of the last snapshot
    with csp.start():
        csp.make_passive(after)
        now = csp.now()
        csp.schedule_alarm(a_take, (live_from if live_from > now else now) + every, True)
    if csp.ticked(past):
        book.water = csp.now()
    if csp.ticked(marks):
        book.water = marks.last
    if csp.ticked(a_take):
        csp.schedule_alarm(a_take, every, True)
        if book.water is not None and book.water != s_taken:
            t0 = time.perf_counter()
            blob = book.dumps()
            sink.offer(blob, book.water, book.keys(), time.perf_counter() - t0)
            s_taken = book.water
