"""`edge-agent demo`: the whole system on one machine with nothing installed but the package.

An embedded amqtt broker on a free port, the sidecar on the CPU when a model is
shipped, the real `edge-agent run` as a subprocess against them, and a simulated
fleet (sensors, market, portfolio, news, with injected faults and a few
malformed messages) publishing in real time. Sensors report many times a second
so that the detectors warm up and the faults show within a short demo, while
timestamps stay true to the wall clock (staleness checks see real gaps).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

from edgewatch.agent.config import ConfigError
from edgewatch.agent.records import EVENT_KINDS, SEVERITIES
from edgewatch.agent.testing.harness import (
    AgentProcess,
    BrokerAddress,
    EmbeddedBroker,
    free_port,
    wait_for,
)
from edgewatch.agent.testing.simulator import RANGES, SimConfig, Simulator
from edgewatch.agent.timeutil import parse_duration, utcnow
from edgewatch.model.format import meta as model_meta
from edgewatch.model.format import shipped_model_dir

FEED_SHARE = 0.75  # of the duration spent publishing; the rest lets the agent drain
DRAIN_SECONDS = 10.0  # after the duration, at most this long for the agent to catch up
BAD_EVERY = 150  # one malformed message per this many good ones, so dead letters show too
MALFORMED = (
    ("sensors/site0/sensor00000", b'{"temperature": "warm"}'),
    ("sensors/site0/sensor00001", b'{"temperature": NaN}'),
    ("sensors/site0/sensor00002", b'{"humidity": 40, "nested": {"x": 1}}'),
    ("sensors//broken", b'{"temperature": 20}'),
    ("market/AAPL/trade", b'{"price": -1, "size": 10}'),
    ("portfolio/pnl", b"not json at all"),
    ("news/wire", b'{"headline": ""}'),
)


READINGS = 420  # per sensor over the feed: 150 to warm up (SimConfig.warmup), then room for a 90-180 reading fault


def fleet(feed_seconds: float, seed: int = 7) -> Simulator:
    """The simulated fleet for a feed of `feed_seconds`, starting now."""
    return Simulator(SimConfig(
        sensors=10, symbols=3, rate=READINGS / feed_seconds, faults=True, fault_fraction=0.5, seed=seed,
        duration=feed_seconds, trade_rate=10.0, news_interval=max(0.5, feed_seconds / 10),
        position_interval=max(0.5, feed_seconds / 8), pnl_interval=0.25,
    ), start=utcnow())


class Feeder(threading.Thread):
    """Publishes the simulator's messages to the broker as their timestamps come due."""

    def __init__(self, broker: BrokerAddress, sim: Simulator, seed: int = 0):
        super().__init__(name="demo-feeder", daemon=True)
        self.broker, self.sim = broker, sim
        self.rnd = random.Random(seed)
        self.published = 0
        self.malformed = 0
        self.error: str | None = None
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def run(self) -> None:
        import paho.mqtt.client as mqtt

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edgewatch-demo-fleet-{self.rnd.random()}",
                             protocol=mqtt.MQTTv311)
        client.max_inflight_messages_set(1000)
        last = None  # the newest publish: QoS 1 messages go out in order
        try:
            client.connect(self.broker.host, self.broker.port)
            client.loop_start()
            t0 = time.monotonic()
            for m in self.sim.messages():
                if self._halt.is_set():
                    break
                due = (m.ts - self.sim.start).total_seconds()
                wait = due - (time.monotonic() - t0)
                if wait > 0.005 and self._halt.wait(wait):
                    break
                last = client.publish(m.topic, json.dumps(m.payload), qos=1)
                self.published += 1
                if self.published % BAD_EVERY == 0:
                    topic, payload = self.rnd.choice(MALFORMED)
                    last = client.publish(topic, payload, qos=1)
                    self.malformed += 1
        except Exception as e:  # noqa: BLE001 - shown in the summary; the demo still ends cleanly
            self.error = f"{type(e).__name__}: {e}"
        finally:
            if last is not None:  # what waits beyond the in-flight window would die with the connection
                with contextlib.suppress(Exception):  # raises when the broker went away: disconnect all the same
                    last.wait_for_publish(DRAIN_SECONDS)
            with contextlib.suppress(Exception):
                client.disconnect()
                client.loop_stop()


class SidecarChild:
    """`edge-sidecar serve` on the CPU with the shipped model, when there is one."""

    def __init__(self, workdir: Path, model_dir: Path | None = None):
        self.model_dir = model_dir  # None: the model shipped in the package
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "sidecar.log"
        self.proc: subprocess.Popen | None = None
        self.note = ""

    def available(self) -> str:
        """Why the sidecar cannot run here, or '' when it can."""
        model_dir = self.model_dir if self.model_dir is not None else shipped_model_dir()
        if not (model_dir / model_meta.META_FILE).is_file():
            return f"no model in {model_dir}" if self.model_dir else "no model is shipped in this package"
        if importlib.util.find_spec("onnxruntime") is None:
            return "onnxruntime is not installed (pip install 'edgewatch[cpu]')"
        return ""

    def start(self) -> None:
        self._log = open(self.log_path, "ab")
        model = ["--model", str(self.model_dir)] if self.model_dir else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgewatch.sidecar.cli", "serve", "--port", str(self.port), "--device", "cpu", *model],
            stdout=self._log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float) -> bool:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError("exited")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.url}/ready", timeout=1) as r:
                return r.status == 200
            return False

        try:
            wait_for(ready, timeout, interval=0.2, what="sidecar ready")
            return True
        except (TimeoutError, RuntimeError) as e:
            self.note = f"sidecar not ready ({e}); news analysis runs degraded; see {self.log_path}"
            self.stop()
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
            self._log.close()


class LogCounts:
    """Events by (kind, severity) and dead letters that this run added to the agent's log, read-only while
    it writes: rows already there when it was made (a kept log) are not counted."""

    def __init__(self, db: str):
        self.db = db
        self._store = None
        self.after = self._newest()  # the newest event and dead letter ids before this run

    def _newest(self) -> tuple[int, int]:
        import sqlalchemy as sa
        from edgewatch.agent.eventlog.schema import deadletters, events

        if not Path(self.db).exists():
            return 0, 0
        try:
            with self._connect() as conn:
                return tuple(conn.execute(sa.select(sa.func.coalesce(sa.func.max(t.c.id), 0))).scalar_one()
                             for t in (events, deadletters))
        except Exception:  # noqa: BLE001 - not a log: the agent's start says why
            return 0, 0

    def _connect(self):
        from edgewatch.agent.eventlog.store import Store

        self._store = self._store or Store(self.db, readonly=True)
        return self._store.engine.connect()

    def read(self) -> tuple[Counter, int]:
        import sqlalchemy as sa
        from edgewatch.agent.eventlog.schema import deadletters, events

        try:
            with self._connect() as conn:
                by = Counter({(k, s): n for k, s, n in conn.execute(
                    sa.select(events.c.kind, events.c.severity, sa.func.count()).where(events.c.id > self.after[0])
                    .group_by(events.c.kind, events.c.severity))})
                dead = conn.execute(sa.select(sa.func.count()).select_from(deadletters)
                                    .where(deadletters.c.id > self.after[1])).scalar_one()
            return by, dead
        except Exception:  # noqa: BLE001 - not created yet
            return Counter(), 0

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def scrape(url: str) -> dict[str, float]:
    """The agent's Prometheus counters of interest, summed over labels ({} while unreachable)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] += sample.value
    return out


class Progress:
    """A live view: redrawn in place on a terminal, a plain line every few seconds otherwise."""

    def __init__(self, out=None):
        self.out = out or sys.stdout
        self.tty = self.out.isatty()
        self.lines = 0
        self.last_plain = 0.0

    def show(self, elapsed: float, total: float, feeder: Feeder, seen: dict, by: Counter, dead: int) -> None:
        kinds = Counter()
        for (kind, _), n in by.items():
            kinds[kind] += n
        events = ", ".join(f"{k} {kinds[k]}" for k in EVENT_KINDS if kinds[k]) or "none yet"
        consumed = seen.get("edgewatch_messages_in_total")
        rows = [
            f"edgewatch demo  {elapsed:5.1f} / {total:.0f} s",
            f"  published  {feeder.published + feeder.malformed:>8}  ({feeder.malformed} malformed)",
            f"  agent in   {'-' if consumed is None else int(consumed):>8}   dead letters {dead}",
            f"  events     {sum(kinds.values()):>8}   {events}",
        ]
        if self.tty:
            if self.lines:
                self.out.write(f"\x1b[{self.lines}F")
            self.out.write("".join(f"\x1b[2K{r}\n" for r in rows))
            self.lines = len(rows)
        elif elapsed - self.last_plain >= 2.0 or elapsed >= total:
            self.last_plain = elapsed
            self.out.write(" | ".join(r.strip() for r in rows) + "\n")
        self.out.flush()


def summary(by: Counter, dead: int, feeder: Feeder, sim: Simulator, db: str, notes: list[str], out=None) -> None:
    out = out or sys.stdout
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p()
    p(f"published {feeder.published} simulated messages and {feeder.malformed} malformed ones "
      f"({len(sim.sensor_ids)} sensors, {len(sim.symbols)} symbols)")
    faults = Counter(f.kind for f in sim.faults + sim.jump_faults())
    if faults:
        p("injected faults: " + ", ".join(f"{k} x{n}" for k, n in sorted(faults.items())))
    p()
    width = max(len(k) for k in EVENT_KINDS)
    p(f"{'kind':<{width}}  " + "  ".join(f"{s:>8}" for s in SEVERITIES) + f"  {'total':>8}")
    p(f"{'-' * width}  " + "  ".join("-" * 8 for _ in SEVERITIES) + f"  {'-' * 8}")
    for kind in EVENT_KINDS:
        counts = [by[kind, s] for s in SEVERITIES]
        if any(counts):
            p(f"{kind:<{width}}  " + "  ".join(f"{n:>8}" for n in counts) + f"  {sum(counts):>8}")
    p(f"{'all':<{width}}  " + "  ".join(f"{sum(n for (k, s), n in by.items() if s == sev):>8}" for sev in SEVERITIES)
      + f"  {sum(by.values()):>8}")
    p(f"dead letters: {dead}")
    for note in notes:
        p(f"note: {note}")
    p()
    p("explore the log:")
    p(f"  edge-agent events --db {db}")
    p(f"  edge-agent events --db {db} --kind anomaly --severity critical --format json")
    p(f"  edge-agent deadletters --db {db}")


def start_afresh(db: Path) -> None:
    """Remove an earlier demo's log (with SQLite's -wal and -shm beside it); anything else is refused, not removed."""
    if not db.exists():
        return
    from edgewatch.agent.commands.logfile import open_log
    from edgewatch.agent.eventlog.store import StoreError

    try:
        open_log(str(db), readonly=True).close()
    except (ConfigError, StoreError) as e:
        raise ConfigError(f"--db: {db} is not an event log, not replacing it ({e})") from None
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        path.unlink(missing_ok=True)


def demo_command(args) -> int:
    """`edge-agent demo [--duration D] [--db PATH] [--keep-log]`."""
    try:
        duration = parse_duration(args.duration).total_seconds()
    except ValueError as e:
        raise ConfigError(f"--duration: {e}") from None
    if duration < 2:
        raise ConfigError(f"--duration: at least 2s, got {args.duration!r}")
    db = str(Path(args.db).expanduser().resolve())
    Path(db).parent.mkdir(parents=True, exist_ok=True)
    if not args.keep_log:
        start_afresh(Path(db))
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="edgewatch-demo-") as tmp:
        work = Path(tmp)
        broker = EmbeddedBroker().start()
        sidecar, agent, feeder, counts = None, None, None, LogCounts(db)
        try:
            sidecar = SidecarChild(work)
            why_not = sidecar.available()
            if why_not:
                notes.append(f"sidecar not started: {why_not}; news analysis runs degraded")
            else:
                sidecar.start()
            metrics_port = free_port()
            agent = AgentProcess(broker, work, protocol="3.1.1", settings={
                "mqtt": {"client_id": "edgewatch-demo"},
                "store": {"url": db},
                "record": {"path": ""},
                "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
                "sidecar": {"url": sidecar.url, "timeout": 1.0},
                "log": {"level": "warning"},
                "health": {"ranges": RANGES},  # the simulated fleet's units, as its operator would set them
            }).start()
            agent.wait_ready(broker, timeout=30)
            if sidecar.proc is not None and not sidecar.wait_ready(timeout=30):
                notes.append(sidecar.note)
            sim = fleet(duration * FEED_SHARE)
            feeder = Feeder(broker, sim)
            progress = Progress()
            t0 = time.monotonic()
            feeder.start()
            metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
            print(f"status page (open while the demo runs): http://127.0.0.1:{metrics_port}/status", flush=True)
            while (elapsed := time.monotonic() - t0) < duration:
                if agent.proc.poll() is not None:
                    raise RuntimeError(f"the agent exited with {agent.proc.returncode}:\n{agent.log_tail()}")
                progress.show(elapsed, duration, feeder, scrape(metrics_url), *counts.read())
                time.sleep(0.5 if progress.tty else 0.25)
            feeder.stop()

            def drained() -> bool:
                seen = scrape(metrics_url)
                taken = seen.get("edgewatch_messages_in_total", 0) + seen.get("edgewatch_dead_letters_total", 0)
                return taken >= feeder.published + feeder.malformed

            with contextlib.suppress(TimeoutError):  # let the agent take in what the broker still holds
                wait_for(drained, DRAIN_SECONDS, interval=0.2)
            progress.show(time.monotonic() - t0, duration, feeder, scrape(metrics_url), *counts.read())
            if feeder.error:
                notes.append(f"the simulated fleet stopped early: {feeder.error}")
            code = agent.stop()
            if code != 0:
                raise RuntimeError(f"the agent stopped with exit code {code}:\n{agent.log_tail()}")
        except RuntimeError as e:
            print(f"edge-agent demo: {e}", file=sys.stderr)
            return 1
        finally:
            if feeder is not None and feeder.is_alive():
                feeder.stop()
            if agent is not None:
                agent.stop()
            if sidecar is not None:
                sidecar.stop()
            broker.stop()
        by, dead = counts.read()
        counts.close()
        summary(by, dead, feeder, sim, db, notes)
    return 0
