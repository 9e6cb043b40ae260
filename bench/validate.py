"""Validation and capture cost per message, against bare `json.loads`, measured in the same run.

    python bench/validate.py [--n 200000]

Prints one JSON line: µs/message of `edgewatch.agent.ingest.validate.Validator.parse` per input kind and for
rejected messages, the `json.loads` floor it is compared with (ratio = parse /
json.loads), and `CaptureWriter.write` + per-batch `flush` per message.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgewatch.agent.config import Config, RecordConfig  # noqa: E402
from edgewatch.agent.ingest.capture import CaptureWriter  # noqa: E402
from edgewatch.agent.ingest.validate import Validator  # noqa: E402
from edgewatch.agent.timeutil import utcnow  # noqa: E402

MESSAGES = {
    "sensor": ("sensors/site1/dev-17", b'{"ts": 1767323045.5, "temperature": 21.5, "humidity": 40.2, "battery": 3.1}'),
    "sensor_iso_ts": ("sensors/site1/dev-17", b'{"ts": "2026-01-02T03:04:05.5Z", "temperature": 21.5, "status": "ok"}'),
    "trade": ("market/AAPL/trade", b'{"ts": 1767323045.5, "price": 190.25, "size": 100}'),
    "quote": ("market/AAPL/quote", b'{"bid": 190.2, "ask": 190.3, "bid_size": 5, "ask_size": 7}'),
    "news": ("news/wire", b'{"headline": "Apple beats estimates", "symbols": ["AAPL"], "id": "n1"}'),
    "rejected": ("sensors/site1/dev-17", b'{"temperature": "hot"}'),
}


def per_message(fns: list, n: int, repeat: int = 7) -> list[float]:
    """µs per call of each fn, best of `repeat` runs taken in turn (the machine is shared: interleaving
    exposes every fn to the same load, and the minimum is the signal)."""
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return [b / n * 1e6 for b in best]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    n = ap.parse_args().n
    cfg, now = Config(), utcnow()
    validator = Validator(cfg)  # what the agent's MQTT thread calls, once per message
    out: dict = {"n": n, "us_per_message": {}, "json_loads_us": {}, "ratio_vs_json_loads": {}}
    for kind, (topic, payload) in MESSAGES.items():
        parse_us, floor_us = per_message([lambda: validator.parse(topic, payload, now), lambda: json.loads(payload)], n)
        out["us_per_message"][kind] = round(parse_us, 3)
        out["json_loads_us"][kind] = round(floor_us, 3)
        out["ratio_vs_json_loads"][kind] = round(parse_us / floor_us, 2)
    out["sensor_messages_per_second_one_core"] = round(1e6 / out["us_per_message"]["sensor"])
    with tempfile.TemporaryDirectory() as tmp:
        w = CaptureWriter(RecordConfig(path=tmp))
        text = MESSAGES["sensor"][1].decode()
        t0 = time.perf_counter()
        for i in range(n):
            w.write(now, "sensors/site1/dev-17", text)
            if i % 100 == 99:
                w.flush()  # the agent flushes once per push batch
        w.close()
        out["capture_write_us"] = round((time.perf_counter() - t0) / n * 1e6, 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
