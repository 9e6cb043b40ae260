"""Restarts: how warm the analytics resume from a state snapshot, and how long a start with a large one takes.

(a) Readings until the first anomaly can be scored after a restart, cold vs warm. `--sensors-a` sensors
learn `--history` readings each in the real sensor graph (csp, historical mode) with a `StateBook`; the
book is pickled and restored into a second run (warm) or not (cold), in which sensor j reads a spike j
readings after the restart. The figure is the smallest j whose spike raises an `anomaly` event: cold it is
the detector's warm-up (`anomaly.warmup`), warm it should be 0.

(b) A snapshot of `--sensors` sensors (two metrics each, so twice as many anomaly series), built by the
same graph over `--readings` readings a sensor: the engine's cost of taking it (`StateBook.dumps`, median
of 3; what the snapshot node does in the engine), its size compressed, and then the time from starting
`edge-agent run` (a subprocess, private Mosquitto, SQLite log) to its `agent_ready` log line with that
snapshot in the log, against a start with no snapshot in the same run; `restore_seconds` is the agent's own
figure for reading and unpickling the snapshot (`state_restored`).

`python bench/restart.py [--sensors 10000] [--readings 12] [--sensors-a 150] [--history 150]`
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
import zlib
from datetime import datetime, timedelta
from pathlib import Path

import csp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edgewatch.agent.analytics import snapshot  # noqa: E402
from edgewatch.agent.analytics.snapshot import StateBook  # noqa: E402
from edgewatch.agent.analytics.topology import sensor_graph  # noqa: E402
from edgewatch.agent.commands.run import snapshot_identity  # noqa: E402
from edgewatch.agent.config import Config  # noqa: E402
from edgewatch.agent.eventlog.snapshots import SnapshotWriter  # noqa: E402
from edgewatch.agent.eventlog.store import Store  # noqa: E402
from edgewatch.agent.records import SensorReading  # noqa: E402
from edgewatch.agent.testing.harness import AgentProcess, Mosquitto, wait_for  # noqa: E402
from edgewatch.common import logs  # noqa: E402

T0 = datetime(2026, 12, 6)
CLIENT = "bench-restart"


def _batches(sensors: int, first: int, n: int, spike_at: dict[int, int] | None = None) -> list:
    """One batch a second of every sensor's reading (two metrics, small repeating steps); sensor j's
    temperature spikes at reading `spike_at[j]`."""
    out = []
    for k in range(first, first + n):
        t = T0 + timedelta(seconds=k)
        batch = []
        for j in range(sensors):
            temp = 20.0 + 0.5 * ((k * 7 + j) % 11) / 11.0
            if spike_at is not None and spike_at.get(j) == k:
                temp = 80.0
            batch.append(SensorReading(sensor_id=f"s{j}", ts=t, metrics={"temperature": temp,
                                                                        "humidity": 40.0 + ((k + j) % 5) / 5.0},
                                       attrs={}))
        out.append((t, batch))
    return out


@csp.graph(memoize=False)
def _graph(batches: object, cfg: Config, book: object):
    csp.add_graph_output("events", sensor_graph(csp.curve(list[SensorReading], batches), cfg, book))


def _run(batches: list, book: StateBook) -> list:
    cfg = Config()
    out = csp.run(_graph, batches, cfg, book, starttime=batches[0][0], endtime=batches[-1][0])
    return [e for _, evs in out["events"] for e in evs]


def readings_until_scored(sensors: int, history: int) -> dict:
    """(a): the smallest number of readings after a restart at which a spike is judged, cold and warm."""
    book = StateBook()
    _run(_batches(sensors, 0, history), book)
    blob = book.dumps()
    spikes = {j: history + j for j in range(sensors)}
    after = _batches(sensors, history, sensors + 1, spikes)
    out = {}
    for name, b in (("cold", StateBook()), ("warm", StateBook(snapshot.loads(blob)))):
        hit = sorted(int(e.key[1:]) for e in _run(after, b) if e.kind == "anomaly")
        out[name] = hit[0] if hit else None
    return out


def _ready_seconds(broker: Mosquitto, workdir: Path) -> tuple[float, dict]:
    """Seconds from starting `edge-agent run` to its `agent_ready` line, and its `state_restored` entry."""
    agent = AgentProcess(broker, workdir, {"agent": {"id": CLIENT}, "store": {"url": str(workdir / "events.db")},
                                           "record": {"path": ""}})
    t0 = time.monotonic()
    agent.start()
    try:
        wait_for(lambda: '"agent_ready"' in agent.log_tail(100_000) or agent.proc.poll() is not None, 60,
                 interval=0.01, what="agent ready")
        took = time.monotonic() - t0
        entries = [json.loads(line) for line in agent.log_tail(1_000_000).splitlines() if line.startswith("{")]
        restored = next((e for e in entries if e["event"] == "state_restored"), {})
        return took, restored
    finally:
        agent.stop()


def start_with_snapshot(sensors: int, readings: int) -> dict:
    """(b): engine cost and size of a snapshot of `sensors` sensors, and start-to-ready with it vs without."""
    book = StateBook()
    _run(_batches(sensors, 0, readings), book)
    book.water = T0 + timedelta(seconds=readings)
    costs = []
    for _ in range(3):
        t0 = time.perf_counter()
        blob = book.dumps()
        costs.append(time.perf_counter() - t0)
    packed = len(zlib.compress(blob, 1))
    with tempfile.TemporaryDirectory(prefix="bench-restart-") as tmp:
        tmp = Path(tmp)
        cfg = Config()
        store = Store(str(tmp / "warm" / "events.db"))
        SnapshotWriter(store, snapshot_identity(cfg, CLIENT), keep=1).save(book)
        store.close()
        broker = Mosquitto(tmp / "broker").start()
        try:
            cold, _ = _ready_seconds(broker, tmp / "cold")
            warm, restored = _ready_seconds(broker, tmp / "warm")
        finally:
            broker.stop()
    return {"sensors": sensors, "series": book.keys()["anomaly"], "snapshot_ms": round(1000 * statistics.median(costs), 1),
            "snapshot_bytes": packed, "pickled_bytes": len(blob), "ready_s": round(warm, 2),
            "ready_no_snapshot_s": round(cold, 2), "restore_s": restored.get("seconds"),
            "restored_keys": restored.get("keys")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sensors", type=int, default=10_000, help="sensors in the snapshot of (b)")
    p.add_argument("--readings", type=int, default=12, help="readings per sensor before the snapshot of (b)")
    p.add_argument("--sensors-a", type=int, default=150, help="sensors of (a): one spike offset each")
    p.add_argument("--history", type=int, default=150, help="readings per sensor before the restart of (a)")
    args = p.parse_args()
    logs.setup("warning", stream="stderr")
    warnings.filterwarnings("ignore", message="Not memoizing")  # csp.curve of readings (dicts): nothing to reuse
    a = readings_until_scored(args.sensors_a, args.history)
    b = start_with_snapshot(args.sensors, args.readings)
    print(json.dumps({"readings_until_scored_cold": a["cold"], "readings_until_scored_warm": a["warm"],
                      "warmup": Config().anomaly.warmup, **b}))


if __name__ == "__main__":
    main()
