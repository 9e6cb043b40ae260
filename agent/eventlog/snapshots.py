"""The analytics' state in the event log: saving snapshots off the engine thread, and restoring one at start.

The engine only pickles its state (agent/analytics/snapshot.py); compressing and writing happen on the
`SnapshotWriter`'s thread, so a slow or locked database never stalls the graph. Only the newest offer waits
there: a snapshot that could not be written before the next one was taken is replaced by it. At a clean stop
the service saves one last snapshot with the engine stopped. A start resumes from the newest snapshot of
this agent that the code can use; a state whose settings changed since (`anomaly`, or one sensor group's,
`anomaly:pumps`) starts fresh while the others resume, and the log says which and why.
"""

from __future__ import annotations

import threading
import time
import zlib
from datetime import datetime

from edgewatch.agent.analytics.snapshot import StateBook, loads, settings_table, stale_states
from edgewatch.agent.eventlog.store import Store
from edgewatch.agent.ops import metrics
from edgewatch.agent.timeutil import isoformat, utcnow
from edgewatch.common.logs import get

log = get("edgewatch.agent.eventlog.snapshots")

LEVEL = 1  # zlib level: the state is mostly zeros and repeats, level 1 already shrinks it 30-60x, fast


class Identity:
    """Who takes a snapshot and what it must match to be restored: the agent, the code, the configuration."""

    def __init__(self, agent: str, version: str, config: dict[str, str]):
        self.agent, self.version, self.config = agent, version, config

    def stale(self, row: dict) -> dict[str, list[str]]:
        """The states of snapshot `row` that start fresh under this configuration -> what changed for each."""
        return stale_states(list(row["keys"]), row["config"], self.config)

    def refusal(self, row: dict) -> str | None:
        """Why snapshot `row` cannot be restored by this agent, or None when at least one of its states can."""
        if row["version"] != self.version:
            return f"taken by another version of the analytics ({row['version']}, this one is {self.version})"
        stale = self.stale(row)
        if stale and len(stale) == len(row["keys"]):
            return "the settings that shape every state in it changed: " + fresh_reason(stale)
        return None


def fresh_reason(stale: dict[str, list[str]]) -> str:
    """'anomaly:pumps, health (settings changed in [anomaly.groups.pumps], [health])'."""
    changed = sorted({k for keys in stale.values() for k in keys})
    tables = ", ".join(map(settings_table, changed))
    return f"{', '.join(sorted(stale))} (settings changed in {tables})"


class SnapshotWriter:
    """Compresses and saves the snapshots the engine offers, on its own thread; the newest offer wins."""

    def __init__(self, store: Store, ident: Identity, keep: int):
        self.store, self.ident, self.keep = store, ident, keep
        self._lock = threading.Condition()
        self._offer: tuple | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="state-snapshots", daemon=True)
        self.saved = 0

    def start(self) -> None:
        self._thread.start()

    def offer(self, blob: bytes, water: datetime, keys: dict, seconds: float) -> None:
        """Engine thread: queue a pickled state (replacing one not yet written). Never blocks on the database."""
        metrics.STATE_SNAPSHOT_SECONDS.set(seconds)
        with self._lock:
            self._offer = (blob, water, keys)
            self._lock.notify()

    def save(self, book: StateBook) -> None:
        """Pickle and save `book` now, on the caller's thread (the engine must be stopped)."""
        if book.water is None:
            return
        t0 = time.perf_counter()
        blob = book.dumps()
        metrics.STATE_SNAPSHOT_SECONDS.set(time.perf_counter() - t0)
        self._write(blob, book.water, book.keys())

    def close(self, timeout: float) -> None:
        """Write what is queued (for at most `timeout` seconds), then stop the thread."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._lock:
                while self._offer is None and not self._closed:
                    self._lock.wait()
                offer, self._offer = self._offer, None
            if offer is not None:
                self._write(*offer)
            elif self._closed:
                return

    def _write(self, blob: bytes, water: datetime, keys: dict) -> None:
        t0 = time.perf_counter()
        try:
            packed = zlib.compress(blob, LEVEL)
            sid = self.store.save_snapshot(self.ident.agent, water, self.ident.version, self.ident.config, keys,
                                           len(packed), packed, self.keep)
        except Exception as e:  # noqa: BLE001 - a failed snapshot costs a warmer restart, never the agent
            log.warning("state_snapshot_failed", error=str(e).splitlines()[0] if str(e) else repr(e),
                        hint="the next snapshot is tried at the next interval; a restart meanwhile resumes from an "
                             "older one or from the captures")
            return
        self.saved += 1
        metrics.STATE_SNAPSHOT_BYTES.set(len(packed))
        metrics.STATE_SNAPSHOT_SAVED.set(time.time())
        log.debug("state_snapshot_saved", snapshot=sid, taken_at=isoformat(water), bytes=len(packed), keys=keys,
                  seconds=round(time.perf_counter() - t0, 3))


def restore(store: Store, ident: Identity) -> tuple[StateBook, dict | None]:
    """A book holding the newest snapshot of `ident.agent` that this code and configuration can use (marked
    restored in the log), and its row; an empty book and None when there is none, with the reason logged."""
    reasons = []
    for row in store.snapshots(ident.agent):
        why = ident.refusal(row)
        if why is None:
            t0 = time.perf_counter()
            try:
                state = loads(zlib.decompress(store.snapshot_state(row["id"]) or b""))
            except Exception as e:  # noqa: BLE001 - a damaged snapshot is skipped like an incompatible one
                why = f"unreadable ({type(e).__name__}: {e})"
            else:
                now = utcnow()
                store.mark_restored(row["id"], now)
                stale = ident.stale(row)
                for name in stale:
                    state.pop(name, None)
                log.info("state_restored", snapshot=row["id"], taken_at=isoformat(row["taken_at"]),
                         age_seconds=round((now - row["taken_at"]).total_seconds(), 1), keys=row["keys"],
                         seconds=round(time.perf_counter() - t0, 3),
                         **({"fresh": fresh_reason(stale)} if stale else {}))
                return StateBook(state, water=row["taken_at"], stale=stale), row
        reasons.append(f"snapshot {row['id']}: {why}")
    log.info("state_not_restored", reason="; ".join(reasons) if reasons else "no snapshot of this agent in the log",
             agent=ident.agent)
    return StateBook(), None
