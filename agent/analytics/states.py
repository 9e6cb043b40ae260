"""Per-key analytic state with a bound: anyone who can publish can invent sensor ids and symbols.

Each analytic keeps one small object per sensor, (sensor, metric) or symbol. Without
a bound, 10,000 new ids a second grow the agent by hundreds of MB a minute. A
`RecentStates` holds at most `cap` keys in recency order (a `get` of a key marks it
recent); adding a key past the cap forgets the longest-silent one, counts it in
`edgewatch_state_evictions_total{state}` and logs a warning (at most once a minute,
with the count since the last warning), because an operator must know that
readings are now judged without their history.
"""

from __future__ import annotations

import collections
import time

from edgewatch.agent.ops import metrics
from edgewatch.common.logs import get

log = get("edgewatch.agent.analytics.states")

WARN_EVERY = 60.0  # seconds between two eviction warnings of one state


class RecentStates(collections.OrderedDict):
    """A dict of at most `cap` states, least recently used first; `state` names it in metrics and logs."""

    def __init__(self, cap: int, state: str):
        super().__init__()
        self.cap = max(1, cap)
        self.state = state
        self.evicted = 0  # since the last warning
        self._warned = -WARN_EVERY
        self._tracked = metrics.STATE_KEYS.labels(state)
        self._evictions = metrics.STATE_EVICTIONS.labels(state)

    def __reduce__(self):
        """Pickled as (cap, state) and the items in recency order: the metric children are re-created, not
        copied, and a restored state counts its keys in `edgewatch_state_keys` as it is rebuilt."""
        return type(self), (self.cap, self.state), None, None, iter(self.items())

    def get(self, key, default=None):
        """The state of `key` (marked most recent), or `default`."""
        try:
            self.move_to_end(key)
        except KeyError:
            return default
        return self[key]

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        if len(self) > self.cap:
            self.forgot(self.popitem(last=False)[1])
            self._evicted()
        self._tracked.set(self.tracked())

    def forgot(self, state) -> None:
        """Called with each state the cap evicts (a subclass frees what it refers to)."""

    def __delitem__(self, key) -> None:
        super().__delitem__(key)
        self._tracked.set(self.tracked())

    def tracked(self) -> int:
        """What `edgewatch_state_keys{state}` shows: the keys held."""
        return len(self)

    def _evicted(self, n: int = 1) -> None:
        self.evicted += n
        self._evictions.inc(n)
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY:
            log.warning("state_cap_reached", state=self.state, cap=self.cap, evicted=self.evicted,
                        hint="the longest-silent keys are forgotten; raise the cap if these are real")
            self._warned, self.evicted = now, 0


class SeriesStates(RecentStates):
    """A RecentStates whose states each hold several series (a sensor's metrics, by name), capped as well by the
    series all of them hold, `max_series`: whoever can publish can invent metric names as well as keys. Past it the
    longest-silent keys are forgotten whole (counted in the series they held); `room` tells the key asking for one
    more series when it is the one holding them all. A subclass says what a state holds (`held`)."""

    def __init__(self, cap: int, state: str, max_series: int):
        super().__init__(cap, state)
        self.max_series = max(1, max_series)
        self.series = 0

    def __reduce__(self):
        return type(self), (self.cap, self.state, self.max_series), None, None, iter(self.items())

    @staticmethod
    def held(state) -> int:
        """The series `state` holds."""
        raise NotImplementedError

    def __setitem__(self, key, value) -> None:
        self.series += self.held(value)  # a restored state comes with its series
        super().__setitem__(key, value)

    def __delitem__(self, key) -> None:
        self.forgot(self[key])
        super().__delitem__(key)

    def forgot(self, state) -> None:
        self.series -= self.held(state)

    def room(self, state) -> bool:
        """Count one more series of `state`, the most recent key, forgetting the longest-silent other keys to make
        room for it; False, counting nothing, when `state` is the only one left to forget."""
        while self.series >= self.max_series:
            key, oldest = next(iter(self.items()))
            if oldest is state:
                return False
            self._evicted(self.held(oldest))
            del self[key]
        self.series += 1
        self._tracked.set(self.tracked())
        return True
