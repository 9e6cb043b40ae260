"""Ingest benchmark: sensor readings through a private Mosquitto into (1) a bare paho subscriber,
(2) the agent end to end, (3) a naive agent; plus publish -> event-on-MQTT latency at a fixed rate.

Throughput is measured on a pre-loaded queue, so the publisher's speed cannot
limit it: each consumer first registers a persistent MQTT 5 session
(subscribed to `sensors/#`, QoS 1, receive maximum 5000), the N readings are
published once (QoS 1) and the broker queues them for every session; then each
consumer connects alone and drains its queue while nothing else runs. Rates
count from the first message handled to the last:

- bare: paho callback + `json.loads`, automatic PUBACK (the ceiling of any paho agent);
- bare-patched: the same with paho's receive path as the agent runs it (`agent/ingest/paho_receive.py`:
  socket reads served from one large `recv`, MQTT 5 property tables built once instead of per
  PUBLISH, no garbage cycle per message, a buffered burst parsed in one turn of paho's loop):
  the ceiling of a paho agent with those fixes, so `agent_vs_bare_patched` is the ratio they
  cannot flatter;
- agent: `edge-agent run` (validation, anomaly + health graph, event log in SQLite,
  outbox), messages counted when their batch is committed and acknowledged
  (`edgewatch_messages_done_total`, scraped from the agent's metrics endpoint);
  with 100 sensor ids, and with 100,000 (after a first reading of every id, which
  creates the per-sensor state and is reported apart); besides msgs/s, the agent
  process's CPU time per message over the same span (`process_cpu_seconds_total`,
  all threads), the per-message cost that other load on the machine moves least;
- naive: paho callback -> the project's validation and anomaly detector per
  message -> the verdict written with its own commit (`Store.write`) per message.

Two agents, one log (`--fleet-only` runs just this): the same N readings on two sensor subtrees
(`sensors/g0/...`, `sensors/g1/...`), drained once by one agent subscribed to both and once by two
agents, one per subtree (`mqtt.subscriptions`), writing one shared log (SQLite here; `--fleet-db URL`
for another, e.g. PostgreSQL). Both runs start from a pre-loaded queue; the pair's rate counts from
the first batch either agent commits to the moment both are done. `fleet_vs_one_agent` is the ratio:
two agents can scale at most with the free cores, and the broker and the log share those cores too.

Latency: the agent runs live while readings and trades are published at
`--rate` msgs/s; every trade moves the price 5% (a `price_alert` event) and
every 50th reading of a sensor is a spike (an `anomaly` event once warmed up). The 20 sensors
spike together (a burst of ~20 events in 22 ms every 1.11 s); `--staggered-spikes` spreads the
same spikes out, which says how much of the tail the bursts are.
Latency = time the event arrives on `edgewatch/events/#` - time its input was
published, matched by (key, event time). The floor, measured the same way in
the same run: an echo (one paho client that republishes those same inputs from
its callback) in place of the agent: the two broker hops and the paho clients
alone. Every client and the broker run with TCP_NODELAY (Nagle's algorithm
off, as the agent sets it; `set_tcp_nodelay` in the harness's Mosquitto).

Prints ONE JSON line. `python bench/ingest.py [--n 200000] [--naive-n 20000]`.
"""

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edgewatch.agent.commands.demo import scrape  # noqa: E402
from edgewatch.agent.ingest import paho_receive  # noqa: E402
from edgewatch.agent.ingest.mqtt import no_delay, open_socket  # noqa: E402
from edgewatch.agent.testing.harness import AgentProcess, Mosquitto, free_port  # noqa: E402

RECEIVE_MAXIMUM = 5000  # the agent's default; every consumer gets the same window
# With 100,000 ids a sensor's readings are 100,000 messages apart: tens of seconds on a slow machine.
# Left at their defaults, the periodic health event (one per sensor per 60 s of data time) would come
# with nearly every reading and the stale sweep (5 s) would report the fleet silent, so the 100k run
# would emit far more events per message than the 100-id run and measure those, not the per-reading
# cost of keyed state. Both throughput runs get the same long settings. The periodic buckets are aligned to
# the epoch, so an hour-long one made a run that crossed the hour emit one event per sensor (56,630 `health`
# events in one 100k run): 10^9 s puts the next boundary in 2033.
FLEET_TIMING = {"health": {"interval": 1e9, "stale_min": 3600.0}}
SPIKE = 95.0  # the latency run's spike reading: an anomaly event


def readings(n: int, sensors: int, seed: int = 7, groups: int = 0) -> list[tuple[str, bytes]]:
    """Small readings, round-robin over `sensors` ids; one reading in 1000 is a spike. With `groups`, the ids
    are spread over that many subtrees (`sensors/g{k}/dev{i}`), so that agents can split them.

    No `ts`: a live feed, stamped on receipt (old timestamps would make the whole fleet look stale).
    """
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        temp = 95.0 if rnd.random() < 0.001 else 20.0 + rnd.gauss(0, 0.5)
        sensor = i % sensors
        topic = f"sensors/g{sensor % groups}/dev{sensor}" if groups else f"sensors/dev{sensor}"
        out.append((topic, json.dumps({"temperature": round(temp, 3),
                                                              "humidity": round(45 + rnd.gauss(0, 2), 2)}).encode()))
    return out


def _client(client_id: str, session_expiry: int = 3600) -> tuple[mqtt.Client, dict]:
    """A bench client and its connect() arguments: a persistent session, or with expiry 0 a clean one."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(RECEIVE_MAXIMUM)
    c.max_queued_messages_set(0)
    c.on_socket_open = no_delay
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = session_expiry
    props.ReceiveMaximum = RECEIVE_MAXIMUM
    return c, {"clean_start": session_expiry == 0, "properties": props}


def register_session(broker, client_id: str) -> None:
    """Create the persistent session and its subscription, then leave: the broker queues for it."""
    c, kw = _client(client_id)
    subscribed = threading.Event()
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect(broker.host, broker.port, **kw)
    c.loop_start()
    c.subscribe("sensors/#", qos=1)
    subscribed.wait(10)
    c.disconnect()
    c.loop_stop()


def drop_session(broker, client_id: str) -> None:
    """End a drained consumer's persistent session (clean start, expiry 0): otherwise the broker keeps
    queueing every later reading for it, and the 100k run would measure a broker holding a million
    messages for benchmark sessions that are gone."""
    c, kw = _client(client_id, session_expiry=0)
    c.connect(broker.host, broker.port, **kw)
    c.loop_start()
    c.disconnect()
    c.loop_stop()


def publish_all(broker, messages: list[tuple[str, bytes]]) -> float:
    """QoS 1 as fast as the broker acknowledges; returns msgs/s."""
    c, kw = _client(f"bench-pub-{os.getpid()}")
    done = threading.Event()
    acked = [0]

    def on_publish(client, userdata, mid, rc, props):
        acked[0] += 1
        if acked[0] == len(messages):
            done.set()

    c.on_publish = on_publish
    c.connect(broker.host, broker.port, clean_start=True)
    c.loop_start()
    t0 = time.perf_counter()
    for i, (topic, payload) in enumerate(messages):
        while i - acked[0] > 20_000:  # paho numbers messages when queued: stay far below 65535 outstanding
            time.sleep(0.001)
        c.publish(topic, payload, qos=1)
    done.wait(600)
    rate = len(messages) / (time.perf_counter() - t0)
    c.disconnect()
    c.loop_stop()
    return rate


# -- consumers (run in their own process: `--role bare|bare-patched|naive|echo`) -------------------------------------


def drain(port: int, client_id: str, n: int, handle, patched: bool = False) -> float:
    """Connect to the queued session, run `handle(msg)` per message; msgs/s from first to last.
    `patched`: paho's receive path as the agent runs it (`agent/ingest/paho_receive.py`)."""
    if patched:
        paho_receive.install()  # before the client exists: its callback matcher comes from install()
    c, kw = _client(client_id)
    if patched:
        c.on_socket_open = open_socket
        paho_receive.read_bursts(c, lambda: None)
    done = threading.Event()
    state = {"count": 0, "first": 0.0, "last": 0.0}

    def on_message(client, userdata, msg):
        if state["count"] == 0:
            state["first"] = time.perf_counter()
        handle(msg)
        state["count"] += 1
        if state["count"] >= n:
            state["last"] = time.perf_counter()
            done.set()

    c.on_message = on_message
    c.connect("127.0.0.1", port, **kw)
    c.loop_start()
    if not done.wait(900):
        raise SystemExit(f"{client_id}: only {state['count']} of {n} messages")
    c.disconnect()
    c.loop_stop()
    return (n - 1) / (state["last"] - state["first"])


def echo(port: int) -> None:
    """The latency floor: republish every input the agent turns into an event, from paho's callback."""
    c, _ = _client("bench-echo")

    def on_message(client, userdata, msg):
        e = json.loads(msg.payload)
        if msg.topic.startswith("market/") or e.get("temperature") == SPIKE:
            key = msg.topic.split("/")[1]
            client.publish(f"edgewatch/events/echo/{key}", json.dumps({"key": key, "ts": e["ts"]}), qos=1)

    c.on_message = on_message
    c.on_subscribe = lambda *a: print("subscribed", flush=True)
    c.connect("127.0.0.1", port, clean_start=True)
    c.subscribe([("sensors/#", 1), ("market/#", 1)])
    c.loop_forever()


def bare_handler():
    return lambda msg: json.loads(msg.payload)


def naive_handler(db: str):
    from edgewatch.agent.analytics.anomaly import Detector
    from edgewatch.agent.config import Config
    from edgewatch.agent.eventlog.store import Store
    from edgewatch.agent.ingest.validate import Validator
    from edgewatch.agent.records import DeadLetter, make_event
    from edgewatch.agent.timeutil import utcnow

    cfg = Config()
    validator, detector, store = Validator(cfg), Detector(cfg.anomaly), Store(db)

    def handle(msg):
        r = validator.parse(msg.topic, msg.payload, utcnow())
        if type(r) is DeadLetter:
            store.write(dead_letters=[r])
            return
        for s in detector.score_readings([r.record]):
            severity = "warning" if s.score >= cfg.anomaly.threshold else "info"
            store.write(events=[make_event("anomaly", s.sensor_id, s.ts, severity, f"{s.metric} scored",
                                           {"metric": s.metric, "value": s.value, "score": s.score}, s.metric)])

    return handle


# -- the agent ---------------------------------------------------------------------------------------


def agent_process(broker, workdir: Path, client_id: str, extra: dict | None = None) -> tuple[AgentProcess, int]:
    mport = free_port()
    settings = {"mqtt": {"client_id": client_id, "receive_maximum": RECEIVE_MAXIMUM, "session_expiry": 3600},
                "metrics": {"listen": f"127.0.0.1:{mport}"}, "record": {"path": ""}, "log": {"level": "warning"},
                "news": {"enabled": False}}
    for k, v in (extra or {}).items():
        settings.setdefault(k, {}).update(v)
    return AgentProcess(broker, workdir, settings, protocol="5"), mport


def agent_session(broker, workdir: Path, client_id: str, extra: dict | None = None) -> None:
    """Run the agent once so that the broker holds its persistent session, then stop it."""
    agent = agent_process(broker, workdir, client_id, extra)[0].start()
    agent.wait_ready(broker)
    agent.stop()


def agent_drain(broker, workdir: Path, client_id: str, n: int, warm: int = 0) -> dict:
    """Start the agent on its queued session and measure from its first committed batch to the last.

    `rate`: msgs/s after the first `warm` messages; `cpu_us`: the agent process's CPU time (all its
    threads, `process_cpu_seconds_total`) per message over the same span, the cost that the machine's
    other load moves least; `warm_rate` / `warm_cpu_us`: the same over the first `warm` messages.
    """
    return agents_drain([agent_process(broker, workdir, client_id, FLEET_TIMING)], n, warm)


def agents_drain(agents: list[tuple[AgentProcess, int]], n: int, warm: int = 0) -> dict:
    """`agent_drain` for agents (process, metrics port) that share the N queued messages between them:
    started together, counted together (messages done and CPU time summed over the agents)."""
    for agent, _ in agents:
        agent.start()
    points = []
    deadline = time.monotonic() + 900
    try:
        while time.monotonic() < deadline:
            scraped = [scrape(f"http://127.0.0.1:{mport}/metrics") for _, mport in agents]  # {} until one is up
            now = time.perf_counter()
            if not all(scraped):  # counting starts once every agent answers: no start-up CPU inside the span
                time.sleep(0.05)
                continue
            if done := sum(m.get("edgewatch_messages_done_total", 0) for m in scraped):
                points.append((now, done, sum(m.get("process_cpu_seconds_total", 0) for m in scraped),
                               sum(m.get("edgewatch_log_write_seconds_count", 0) for m in scraped)))
                if done >= n:
                    break
            time.sleep(0.05)  # each scrape costs the agent CPU too: 20 a second, not 50
    finally:
        for agent, _ in agents:
            agent.stop()
    if not points or points[-1][1] < n:
        raise SystemExit(f"agent: only {points[-1][1] if points else 0:.0f} of {n} messages")

    def span(a, b) -> tuple[float, float, float]:
        (t0, c0, cpu0, b0), (t1, c1, cpu1, b1) = a, b
        if c1 <= c0:  # every message was done before the first or the warm-up scrape: nothing left to time
            raise SystemExit(f"agent: all {n} messages done within one scrape (warm-up {warm}): raise --n")
        return (c1 - c0) / (t1 - t0), (cpu1 - cpu0) / (c1 - c0) * 1e6, (c1 - c0) / max(b1 - b0, 1)

    start = next(p for p in points if p[1] >= warm) if warm else points[0]
    rate, cpu_us, batch = span(start, points[-1])
    out = {"rate": rate, "cpu_us": cpu_us, "msgs_per_batch": batch}
    if warm:
        out["warm_rate"], out["warm_cpu_us"], _ = span(points[0], start)
    return out


def live_agent(broker, workdir: Path):
    """`edge-agent run`, ready; returns its stop."""
    agent, _ = agent_process(broker, workdir, "bench-latency", {"anomaly": {"warmup": 20, "refractory": 1}})
    agent.start()
    agent.wait_ready(broker)
    return agent.stop


def live_echo(broker):
    """The echo subprocess, subscribed; returns its stop."""
    proc = subprocess.Popen([sys.executable, __file__, "--role", "echo", "--port", str(broker.port)],
                            stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()  # "subscribed"
    return lambda: (proc.kill(), proc.wait())


def latency(broker, stop_target, rate: float, seconds: float, staggered: bool = False) -> dict:
    """Publish at `rate` msgs/s to a started target (`stop_target` ends it); publish -> event-on-MQTT
    latency of every event matched to its input."""
    sent: dict[tuple[str, str], float] = {}
    lat: list[float] = []
    sub, kw = _client("bench-latency-sub")

    def on_message(client, userdata, msg):
        now = time.perf_counter()
        e = json.loads(msg.payload)
        t = sent.get((e["key"], e["ts"]))
        if t is not None:
            lat.append((t, now - t))

    sub.on_message = on_message
    sub.connect(broker.host, broker.port, clean_start=True)
    sub.subscribe("edgewatch/events/#", qos=1)
    sub.loop_start()
    pub, _ = _client("bench-latency-pub")
    pub.connect(broker.host, broker.port, clean_start=True)
    pub.loop_start()
    time.sleep(0.5)
    n = int(rate * seconds)
    gc.disable()  # the bench's own collector pausing the publisher would count against the agent
    t0 = time.perf_counter()
    # readings stamped with the time they are sent, as a live sensor stamps them: stamps seconds in the past
    # made every sensor look silent to the health sweep, whose `stale` events then filled the tail
    now0 = datetime.now(timezone.utc).replace(tzinfo=None)
    for i in range(n):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        ts = (now0 + timedelta(seconds=time.perf_counter() - t0)).isoformat() + "Z"
        if i % 10 == 0:  # a trade that moves the price 5%: a price_alert event
            key, topic = "ACME", "market/ACME/trade"
            payload = {"ts": ts, "price": 100.0 if (i // 10) % 2 else 105.0, "size": 1}
        else:
            k = i // 10 * 9 + i % 10 - 1
            key, topic = f"lat{k % 20}", f"sensors/lat{k % 20}"
            phase = 2 * (k % 20) if staggered else 0  # the sensor's own offset, or all in step
            payload = {"ts": ts, "temperature": SPIKE if (k // 20 + phase) % 50 == 49 else 20.0 + 0.01 * (k % 7)}
        sent[(key, ts)] = time.perf_counter()
        pub.publish(topic, json.dumps(payload), qos=1)
    time.sleep(2.0)
    gc.enable()
    for c in (pub, sub):
        c.disconnect()
        c.loop_stop()
    stop_target()
    if not lat:
        return {"events": 0}

    def q(xs: list[float], p: float) -> float:
        return round(1000 * xs[min(len(xs) - 1, int(p * len(xs)))], 3)

    every = sorted(d for _, d in lat)
    steady = sorted(d for t, d in lat if t >= t0 + 1.0)  # without the first second: first events of each kind
    return {"rate": rate, "events": len(every), "p50_ms": q(every, 0.5), "p99_ms": q(every, 0.99),
            "max_ms": q(every, 1.0), "p99_after_1s_ms": q(steady, 0.99)}


def latencies(broker, tmp: Path, rate: float, seconds: float, staggered: bool = False) -> dict:
    """The agent's latency, the echo floor's, and the ratio of their p99s."""
    agent = latency(broker, live_agent(broker, tmp / "latency"), rate, seconds, staggered)
    floor = latency(broker, live_echo(broker), rate, seconds, staggered)
    return {"spikes": "staggered" if staggered else "together", "latency": agent, "latency_echo": floor,
            "latency_p99_vs_echo": round(agent["p99_ms"] / floor["p99_ms"], 2) if floor.get("p99_ms") else None}


def fleet(broker, tmp: Path, n: int, db: str | None) -> dict:
    """Readings/s of two agents with split subscriptions into one log, against one agent taking both subtrees."""
    subtrees = ["sensors/g0/#", "sensors/g1/#"]
    runs = {"one": [("bench-fleet-one", subtrees)],
            "two": [("bench-fleet-a", subtrees[:1]), ("bench-fleet-b", subtrees[1:])]}
    out = {}
    for name, members in runs.items():
        url = db or str(tmp / f"fleet-{name}.db")  # each run a log of its own (the same one with --fleet-db)

        def settings(cid: str, subs: list[str]) -> dict:
            return {"agent": {"id": cid}, "mqtt": {"subscriptions": subs}, "store": {"url": url}, **FLEET_TIMING}

        for cid, subs in members:
            agent_session(broker, tmp / cid, cid, settings(cid, subs))
        time.sleep(1.0)
        publish_all(broker, readings(n, 100, seed=9, groups=2))
        drained = agents_drain([agent_process(broker, tmp / cid, cid, settings(cid, subs)) for cid, subs in members], n)
        for cid, _ in members:
            drop_session(broker, cid)
        out[name] = drained
    return {"fleet_log": db.split("://")[0] if db and "://" in db else "sqlite", "one_agent_msgs_per_s": round(out["one"]["rate"]),
            "two_agents_msgs_per_s": round(out["two"]["rate"]),
            "two_agents_cpu_us_per_msg": round(out["two"]["cpu_us"], 1),
            "one_agent_cpu_us_per_msg": round(out["one"]["cpu_us"], 1),
            "fleet_vs_one_agent": round(out["two"]["rate"] / out["one"]["rate"], 3), "cpus": os.cpu_count()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--naive-n", type=int, default=20_000, help="the naive agent is slow: fewer messages")
    ap.add_argument("--rate", type=float, default=1000.0, help="msgs/s of the latency run")
    ap.add_argument("--latency-seconds", type=float, default=10.0)
    ap.add_argument("--latency-only", action="store_true", help="skip the throughput runs")
    ap.add_argument("--staggered-spikes", action="store_true", help="latency run: sensors spike at their own times")
    ap.add_argument("--fleet-only", action="store_true", help="only the two-agents-one-log run")
    ap.add_argument("--fleet-db", metavar="URL", help="the two-agent run's shared log (default: a SQLite file)")
    ap.add_argument("--role", choices=("bare", "bare-patched", "naive", "echo"), help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--db", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "echo":
        echo(args.port)
        return
    if args.role:  # a consumer subprocess: print its rate
        handler = naive_handler(args.db) if args.role == "naive" else bare_handler()
        print(drain(args.port, f"bench-{args.role}", args.n, handler, patched=args.role == "bare-patched"))
        return

    me = [sys.executable, __file__]
    with tempfile.TemporaryDirectory(prefix="edgewatch-bench-") as tmp:
        tmp = Path(tmp)
        # sessions stay in memory: snapshots of hundreds of thousands of queued messages would stall the broker
        broker = Mosquitto(tmp / "mosquitto", extra_conf="autosave_interval 0\n").start()
        try:
            result = {"n": args.n, "naive_n": args.naive_n, "receive_maximum": RECEIVE_MAXIMUM}

            def consumer(role: str, n: int) -> float:
                out = subprocess.run(me + ["--role", role, "--port", str(broker.port), "--n", str(n),
                                           "--db", str(tmp / f"{role}.db")], capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(out.stderr[-2000:])
                return float(out.stdout.strip().splitlines()[-1])

            if args.latency_only:
                print(json.dumps(latencies(broker, tmp, args.rate, args.latency_seconds, args.staggered_spikes)))
                return
            if args.fleet_only:
                print(json.dumps({"n": args.n, **fleet(broker, tmp, args.n, args.fleet_db)}))
                return
            # 100 sensor ids: every consumer drains the same N (naive: the first naive_n)
            for cid in ("bench-bare", "bench-bare-patched", "bench-naive", "bench-agent-100"):
                if cid == "bench-agent-100":
                    agent_session(broker, tmp / "agent-100", cid)
                else:
                    register_session(broker, cid)
            time.sleep(1.0)
            result["publish_msgs_per_s"] = round(publish_all(broker, readings(args.n, 100)))
            result["bare_msgs_per_s"] = round(consumer("bare", args.n))
            result["bare_patched_msgs_per_s"] = round(consumer("bare-patched", args.n))
            agent_100 = agent_drain(broker, tmp / "agent-100", "bench-agent-100", args.n)
            result["agent_msgs_per_s"] = round(agent_100["rate"])
            result["agent_cpu_us_per_msg"] = round(agent_100["cpu_us"], 1)
            result["agent_msgs_per_batch"] = round(agent_100["msgs_per_batch"], 1)
            result["naive_msgs_per_s"] = round(consumer("naive", args.naive_n))
            for cid in ("bench-bare", "bench-bare-patched", "bench-naive", "bench-agent-100"):
                drop_session(broker, cid)
            # 100,000 sensor ids: the agent's per-message cost must not grow with the fleet. The first 100k
            # readings (one per id) create the per-sensor state; the rate is measured over the N after them.
            agent_session(broker, tmp / "agent-100k", "bench-agent-100k")
            time.sleep(1.0)
            publish_all(broker, readings(args.n + 100_000, 100_000, seed=8))
            agent_100k = agent_drain(broker, tmp / "agent-100k", "bench-agent-100k", args.n + 100_000, 100_000)
            result["agent_100k_ids_msgs_per_s"] = round(agent_100k["rate"])
            result["agent_100k_ids_cpu_us_per_msg"] = round(agent_100k["cpu_us"], 1)
            result["agent_100k_ids_msgs_per_batch"] = round(agent_100k["msgs_per_batch"], 1)
            result["agent_100k_ids_first_reading_msgs_per_s"] = round(agent_100k["warm_rate"])
            result["agent_100k_ids_first_reading_cpu_us_per_msg"] = round(agent_100k["warm_cpu_us"], 1)
            result.update(latencies(broker, tmp, args.rate, args.latency_seconds, args.staggered_spikes))
            result.update(fleet(broker, tmp, args.n, args.fleet_db))
        finally:
            broker.stop()
    result["agent_vs_bare"] = round(result["agent_msgs_per_s"] / result["bare_msgs_per_s"], 3)
    result["agent_vs_bare_patched"] = round(result["agent_msgs_per_s"] / result["bare_patched_msgs_per_s"], 3)
    result["agent_vs_naive"] = round(result["agent_msgs_per_s"] / result["naive_msgs_per_s"], 2)
    result["cost_100k_vs_100_ids"] = round(result["agent_msgs_per_s"] / result["agent_100k_ids_msgs_per_s"], 3)
    result["cpu_cost_100k_vs_100_ids"] = round(
        result["agent_100k_ids_cpu_us_per_msg"] / result["agent_cpu_us_per_msg"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
