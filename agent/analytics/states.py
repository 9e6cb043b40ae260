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
        self._tracked.set(len(self))

    def forgot(self, state) -> None:
        """Called with each state the cap evicts (a subclass frees what it refers to)."""

    def __delitem__(self, key) -> None:
        super().__delitem__(key)
        self._tracked.set(len(self))

    def _evicted(self, n: int = 1) -> None:
        self.evicted += n
        self._evictions.inc(n)
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY:
            log.warning("state_cap_reached", state=self.state, cap=self.cap, evicted=self.evicted,
                        hint="the longest-silent keys are forgotten; raise the cap if these are real")
            self._warned, self.evicted = now, 0
