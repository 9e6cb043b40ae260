"""Soak: `edge-agent run` for a long time at a steady rate, with a stream of sensor ids never seen before.

Anyone who can publish under `sensors/` can invent ids; the agent must hold its memory, descriptors and
log writer steady anyway (the state caps forget the longest-silent sensors). A private Mosquitto
(MQTT 5, persistence saved every second) and the agent run as subprocesses (the harness's
`Mosquitto` and `AgentProcess`); a QoS 1 publisher sends `--rate` readings a second, `--new-ids` of
them from ids never used before, the rest from a fixed fleet of 100 sensors.

Every `--every` seconds one JSON line: elapsed seconds, the agent's RSS (MB) and open descriptors
(from /proc), readings published and acknowledged by the broker, readings the agent has handled
(`edgewatch_messages_done_total`: committed and acknowledged), the writer backlog, sensors tracked
and evicted, and `behind` (acknowledged by the broker, not yet handled; briefly negative when the
broker delivers to the agent before its acknowledgements reach the publisher). At the end the publisher
stops, the agent gets up to 60 s to catch up, is stopped with SIGTERM, and a summary line follows:
`lost` = readings the broker acknowledged that the agent never handled, RSS at the first and last
sample and its peak, the stop time and exit code.

`python bench/soak.py [--duration 1800] [--rate 1000] [--new-ids 100] [--max-sensors 20000]`
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.request import urlopen

import paho.mqtt.client as mqtt
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edgewatch.agent.commands.demo import scrape  # noqa: E402
from edgewatch.agent.testing.harness import AgentProcess, Mosquitto, wait_for  # noqa: E402
from edgewatch.common.ports import free_port  # noqa: E402

FLEET = 100  # sensors that report all the time


class Publisher:
    """QoS 1 readings at `rate`/s, `new_ids`/s of them from fresh sensor ids; counts broker acknowledgements."""

    def __init__(self, broker: Mosquitto, rate: float, new_ids: float):
        self.rate, self.new_ids = rate, new_ids
        self.published = 0
        self.acked = 0
        self._stop = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"soak-{uuid.uuid4().hex[:8]}",
                                   protocol=mqtt.MQTTv311)
        self._client.max_inflight_messages_set(1000)
        self._client.max_queued_messages_set(0)
        self._client.on_publish = self._on_publish
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._run, name="soak-publisher", daemon=True)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self.acked += 1

    def start(self) -> Publisher:
        self._thread.start()
        return self

    def _run(self) -> None:
        t0 = time.monotonic()
        fresh_every = self.rate / self.new_ids if self.new_ids > 0 else float("inf")
        i = 0
        while not self._stop.is_set():
            delay = t0 + i / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if i % fresh_every < 1:
                sensor = f"soak/new-{i}"
            else:
                sensor = f"soak/fleet-{i % FLEET}"
            payload = json.dumps({"temperature": 20.0 + (i % 17) * 0.1, "humidity": 45.0})
            self._client.publish(f"sensors/{sensor}", payload, qos=1)
            self.published += 1
            i += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        wait_for(lambda: self.acked >= self.published, 60, what="every reading acknowledged by the broker")
        self._client.disconnect()
        self._client.loop_stop()


def proc_stats(pid: int) -> tuple[float, int]:
    """(RSS in MB, open descriptors) of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return rss_kb / 1024.0, len(os.listdir(f"/proc/{pid}/fd"))


def health_sensors(url: str) -> int:
    """The agent's `edgewatch_state_keys{state="health"}`: sensors tracked by health."""
    with urlopen(url, timeout=2) as r:
        for family in text_string_to_metric_families(r.read().decode()):
            for s in family.samples:
                if s.name == "edgewatch_state_keys" and s.labels.get("state") == "health":
                    return int(s.value)
    return 0


def sample(t0: float, agent: AgentProcess, pub: Publisher, url: str) -> dict:
    rss, fds = proc_stats(agent.proc.pid)
    m = scrape(url)
    done = int(m.get("edgewatch_messages_done_total", 0))
    return {
        "t": round(time.monotonic() - t0, 1), "rss_mb": round(rss, 1), "fds": fds,
        "published": pub.published, "acked": pub.acked, "handled": done, "behind": pub.acked - done,
        "writer_backlog": int(m.get("edgewatch_writer_backlog_rows", 0)),
        "sensors_tracked": health_sensors(url),
        "evicted": int(m.get("edgewatch_state_evictions_total", 0)),  # every state: health, anomaly, ...
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=120.0, help="seconds of publishing")
    ap.add_argument("--rate", type=float, default=500.0, help="readings per second")
    ap.add_argument("--new-ids", type=float, default=50.0, help="readings per second from never-seen sensor ids")
    ap.add_argument("--max-sensors", type=int, default=2000,
                    help="health.max_sensors for the agent (anomaly.max_series is twice it: two metrics each)")
    ap.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="edgewatch-soak-") as tmp:
        broker = Mosquitto(Path(tmp) / "mosquitto").start()
        port = free_port()
        settings = {"metrics": {"listen": f"127.0.0.1:{port}"}, "record": {"path": ""},
                    "health": {"max_sensors": args.max_sensors}, "anomaly": {"max_series": 2 * args.max_sensors}}
        agent = AgentProcess(broker, Path(tmp) / "agent", settings, protocol="5").start()
        url = f"http://127.0.0.1:{port}/metrics"
        try:
            agent.wait_ready(broker, timeout=60)
            pub = Publisher(broker, args.rate, args.new_ids).start()
            t0 = time.monotonic()
            samples = []
            while time.monotonic() - t0 < args.duration:
                time.sleep(min(args.every, max(0.0, t0 + args.duration - time.monotonic())))
                samples.append(sample(t0, agent, pub, url))
                print(json.dumps(samples[-1]), flush=True)
            pub.stop()
            try:
                wait_for(lambda: scrape(url).get("edgewatch_messages_done_total", 0) >= pub.acked, 60,
                         what="the agent caught up")
            except TimeoutError:
                pass
            last = sample(t0, agent, pub, url)
            t_stop = time.monotonic()
            code = agent.stop(timeout=30)
            summary = {
                "summary": True, "duration_s": args.duration, "rate": args.rate, "new_ids_per_s": args.new_ids,
                "max_sensors": args.max_sensors, "published": pub.published, "acked": pub.acked,
                "handled": last["handled"], "lost": pub.acked - last["handled"],
                "rss_first_mb": samples[0]["rss_mb"] if samples else None, "rss_last_mb": last["rss_mb"],
                "rss_peak_mb": max(s["rss_mb"] for s in samples + [last]),
                "fds_first": samples[0]["fds"] if samples else None, "fds_last": last["fds"],
                "sensors_tracked": last["sensors_tracked"], "evicted": last["evicted"],
                "stop_s": round(time.monotonic() - t_stop, 2), "exit_code": code,
            }
            print(json.dumps(summary), flush=True)
        finally:
            agent.kill()
            broker.stop()


if __name__ == "__main__":
    main()
