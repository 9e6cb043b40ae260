"""The graph's one exit to the event log: each engine cycle's events, bars and dead letters, one submit.

The sink never blocks the engine: `StoreWriter.submit` only queues. When the
cycle consumed a push batch from MQTT, its `BatchMark` rides along, and the
writer's `on_durable` acknowledges that batch's messages after the commit.
"""


import functools
import time

import csp
from csp import ts
from edgewatch.agent.ops import metrics
from edgewatch.agent.records import Bar, BatchMark, DeadLetter, Event


@csp.node
def sink(
    events: ts[list[Event]],
    bars: ts[list[Bar]],
    dead_letters: ts[list[DeadLetter]],
    marks: ts[BatchMark],
    writer: object,
    on_durable: object,
):
    """Submit the cycle's rows to `writer`; `on_durable(mark, submitted)` runs once committed."""
    ev = events if csp.ticked(events) else ()
    br = bars if csp.ticked(bars) else ()
    dl = dead_letters if csp.ticked(dead_letters) else ()
    done = None
    if csp.ticked(marks):
        metrics.ENGINE_LAG.set(max(0.0, (csp.now() - marks.received_at).total_seconds()))
        done = functools.partial(on_durable, marks, time.perf_counter())
    if ev or br or dl or done is not None:
        writer.submit(events=ev, dead_letters=dl, bars=br, on_durable=done)
