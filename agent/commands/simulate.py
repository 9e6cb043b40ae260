"""`edge-agent simulate`: publish the simulator's feeds to a broker in real time (paho, QoS 1).

The simulated clock starts now, so every payload's `ts` is a real time and the
agent on the other side sees a live feed. With `--faults`, the ground-truth
fault schedule is printed as JSON lines on stdout when it starts, so a user can
check what the agent should report.
"""

from __future__ import annotations

import json
import math
import sys
import time

import paho.mqtt.client as mqtt
from edgewatch.agent.config import ConfigError
from edgewatch.agent.testing.simulator import FAULT_GAP, FAULT_READINGS, SimConfig, Simulator
from edgewatch.agent.timeutil import isoformat, parse_duration, utcnow


def parse_broker(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--broker: expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def simulate_command(args) -> int:
    host, port = parse_broker(args.broker)
    try:
        duration = parse_duration(args.duration).total_seconds()
    except ValueError as e:
        raise ConfigError(f"--duration: {e}") from None
    if args.rate <= 0 or args.sensors < 0 or args.symbols < 0:
        raise ConfigError("--rate must be positive, --sensors and --symbols not negative")
    start = utcnow()
    sim = Simulator(SimConfig(sensors=args.sensors, symbols=args.symbols, rate=args.rate, faults=args.faults,
                              duration=duration), start)
    for f in sim.faults:
        print(json.dumps({"fault": f.kind, "key": f.key, "reason": f.reason, "metric": f.metric or None,
                          "start": isoformat(f.start), "end": isoformat(f.end)}), flush=True)
    needed = (sim.cfg.warmup + FAULT_READINGS[1] + FAULT_GAP) / args.rate  # seconds before every fault fits
    if args.faults and args.sensors and duration < needed:
        print(f"edge-agent simulate: --faults: a fault starts after {sim.cfg.warmup} readings (the detectors' "
              f"warm-up) and takes up to {FAULT_READINGS[1] + FAULT_GAP}, so {args.duration} leaves room for "
              f"{len(sim.faults)}; give --duration {math.ceil(needed / 60)}m or more", file=sys.stderr)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edgewatch-simulate-{start.timestamp():.0f}",
                         protocol=mqtt.MQTTv311)
    client.max_queued_messages_set(100_000)
    try:
        client.connect(host, port, keepalive=30)
    except OSError as e:
        print(f"edge-agent simulate: cannot reach broker {host}:{port}: {e}", file=sys.stderr)
        return 1
    client.loop_start()
    sent = dropped = 0
    last = None
    t0 = time.monotonic()
    try:
        for m in sim.messages():
            delay = (m.ts - start).total_seconds() - (time.monotonic() - t0)
            if delay > 0:
                time.sleep(delay)
            info = client.publish(m.topic, json.dumps(m.payload), qos=1)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                sent += 1
                last = info
            else:  # the client's queue is full (broker too slow or gone): count it, keep the clock
                dropped += 1
        if last is not None:
            last.wait_for_publish(timeout=10.0)
    except KeyboardInterrupt:
        pass
    finally:
        client.loop_stop()
        client.disconnect()
    print(f"published {sent} messages ({len(sim.faults)} faults) to {host}:{port}"
          + (f"; {dropped} dropped (client queue full)" if dropped else ""), file=sys.stderr)
    return 0 if sent or not dropped else 1
