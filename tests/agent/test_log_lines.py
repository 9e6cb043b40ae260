"""The services' JSON log: one record per line, also when threads log at once (a service logs from the engine,
the MQTT loop, the store writer and the outbox)."""

from __future__ import annotations

import json
import sys
import threading

from edgewatch.common import logs


def test_records_logged_from_many_threads_never_share_a_line(tmp_path, monkeypatch):
    path = tmp_path / "agent.log"
    with open(path, "w", encoding="utf-8") as out:
        monkeypatch.setattr(sys, "stdout", out)
        switch = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # threads change as often as they can: a line written in two parts shows
        logs.setup("info", fmt="json", stream="stdout")
        log = logs.get("edgewatch.test")

        def burst(n: int) -> None:
            for i in range(2000):
                log.info("tick", thread=n, i=i)

        threads = [threading.Thread(target=burst, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sys.setswitchinterval(switch)
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 12_000 and {(r["thread"], r["i"]) for r in records} == {(n, i) for n in range(6)
                                                                                    for i in range(2000)}
