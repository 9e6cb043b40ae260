"""Event log throughput: batched transactions vs one commit per row, measured in the same run.

    python bench/store.py [--rows 200000] [--db URL|PATH]

Prints one JSON line: rows/s of `Store.write` in batches, of the background `StoreWriter` fed the way the
csp graph feeds it (many small submits), of one transaction per row (the naive baseline), the ratios,
and the latency of a lone event from `submit` to durable (the writer's share of publish→event p99).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgewatch.agent.eventlog.store import Store  # noqa: E402
from edgewatch.agent.eventlog.writer import StoreWriter  # noqa: E402
from edgewatch.agent.records import make_event  # noqa: E402


def make_events(n: int, offset: int) -> list:
    t0 = datetime(2026, 1, 1)
    return [
        make_event("anomaly", f"sensor-{i % 1000}", t0 + timedelta(milliseconds=i), "warning",
                   "temperature 31.2 is 4.1 sigma above its level",
                   {"metric": "temperature", "value": 31.2, "score": 0.97, "level": 21.0}, offset + i)
        for i in range(n)
    ]


class Clock:
    """Wall and CPU seconds of this process (all threads): on a shared, loaded machine CPU time is the fair one."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def rates(self, n: int) -> dict:
        return {"rows_per_s": round(n / self.wall), "rows_per_cpu_s": round(n / max(self.cpu, 1e-9))}


def bench_batched(store: Store, events: list, batch: int) -> dict:
    with Clock() as c:
        for i in range(0, len(events), batch):
            store.write(events[i : i + batch])
    return c.rates(len(events))


def bench_writer(store: Store, events: list, per_submit: int, batch: int) -> tuple[dict, float]:
    writer = StoreWriter(store, batch_size=batch)
    writer.start()
    costs = []
    with Clock() as c:
        for i in range(0, len(events), per_submit):
            s = time.perf_counter()
            writer.submit(events=events[i : i + per_submit])
            costs.append(time.perf_counter() - s)
        writer.flush(600)
    writer.close()
    return c.rates(len(events)), statistics.quantiles(costs, n=100)[98] * 1e6


def bench_per_row(store: Store, events: list) -> dict:
    with Clock() as c:
        for e in events:
            store.write([e])
    return c.rates(len(events))


def bench_latency(store: Store, events: list) -> list[float]:
    """A lone event, as at 1k msgs/s with rare anomalies: submit -> committed (on_durable)."""
    writer = StoreWriter(store, batch_size=5000)
    writer.start()
    done = threading.Event()
    out = []
    for e in events:
        done.clear()
        t = time.perf_counter()
        writer.submit(events=[e], on_durable=done.set)
        done.wait(10)
        out.append((time.perf_counter() - t) * 1e3)
        time.sleep(0.001)
    writer.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--per-row", type=int, default=5_000, help="rows for the one-commit-per-row baseline")
    p.add_argument("--batch", type=int, default=5_000)
    p.add_argument("--db", help="SQLAlchemy URL (default: fresh SQLite files in a temp dir); tables must be empty")
    args = p.parse_args()
    events = make_events(args.rows * 2 + args.per_row + 500, 0)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(args.db or os.path.join(tmp, "events.db"))
        batched = bench_batched(store, events[: args.rows], args.batch)
        writer, submit_p99_us = bench_writer(store, events[args.rows : 2 * args.rows], 10, args.batch)
        naive = bench_per_row(store, events[2 * args.rows : 2 * args.rows + args.per_row])
        lat = bench_latency(store, events[2 * args.rows + args.per_row :])
        store.close()
    q = statistics.quantiles(lat, n=100)
    print(json.dumps({
        "db": store.dialect,
        "rows": args.rows,
        "batch": args.batch,
        "batched": batched,
        "writer": writer,
        "per_row_commit": naive,
        "batched_vs_per_row": round(batched["rows_per_cpu_s"] / naive["rows_per_cpu_s"], 1),
        "writer_vs_per_row": round(writer["rows_per_cpu_s"] / naive["rows_per_cpu_s"], 1),
        "batched_vs_per_row_wall": round(batched["rows_per_s"] / naive["rows_per_s"], 1),
        "writer_submit_p99_us": round(submit_p99_us, 1),
        "lone_event_durable_ms": {"p50": round(q[49], 3), "p99": round(q[98], 3)},
        "cpus": os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0],
    }))


if __name__ == "__main__":
    main()
