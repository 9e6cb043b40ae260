"""The services' JSON log: one record per line, also when threads log at once (a service logs from the engine,
the MQTT loop, the store writer and the outbox)."""

from __future__ import annotations

import json
import sys
import threading
import time

from edgewatch.common import logs


class YieldingStream:
    """A stream that lets the other threads run before each write takes effect, as a write that blocks on a
    full pipe or a slow disk does: a record written in two parts then has another record between them."""

    def __init__(self):
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        time.sleep(0)
        self.parts.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_records_logged_from_many_threads_never_share_a_line(monkeypatch):
    out = YieldingStream()
    monkeypatch.setattr(sys, "stdout", out)
    logs.setup("info", fmt="json", stream="stdout")
    log = logs.get("edgewatch.test")

    def burst(n: int) -> None:
        for i in range(500):
            log.info("tick", thread=n, i=i)

    threads = [threading.Thread(target=burst, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = [json.loads(line) for line in "".join(out.parts).splitlines()]
    assert len(records) == 3000 and {(r["thread"], r["i"]) for r in records} == {(n, i) for n in range(6)
                                                                                  for i in range(500)}
