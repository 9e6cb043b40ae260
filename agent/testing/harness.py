"""Run a whole Edgewatch setup on one machine: brokers, the agent as a subprocess, publish and wait helpers.

Used by `edge-agent demo`, by the pytest plugin's fixtures and by anyone's own
scripts; nothing here needs pytest. Brokers: `EmbeddedBroker` (in-process amqtt,
MQTT 3.1.1 only) and `Mosquitto` (a private `mosquitto` on a free port, with
persistence, that can be killed and restarted).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from edgewatch.common.ports import free_port


def _wait_listening(host: str, port: int, timeout: float, alive: Callable[[], bool] = lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"broker on {host}:{port} exited during start")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout} s")


@dataclass
class BrokerAddress:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


class EmbeddedBroker(BrokerAddress):
    """An amqtt broker (MQTT 3.1.1 only) on its own event loop thread, so sync code can use it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        super().__init__(host, port or free_port(host))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker = None

    def start(self, timeout: float = 10.0) -> EmbeddedBroker:
        from amqtt.broker import Broker

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}", "max_connections": 1000}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        self._loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        async def boot() -> None:
            try:
                self._broker = Broker(config, loop=self._loop)
                await self._broker.start()
            except BaseException as e:  # noqa: BLE001 - reported to the starting thread
                failure.append(e)
            started.set()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.create_task(boot())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name=f"amqtt-{self.port}", daemon=True)
        self._thread.start()
        if not started.wait(timeout) or failure:
            self.stop()
            raise RuntimeError(f"amqtt broker did not start on {self.host}:{self.port}: {failure[:1]}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is None:
            return
        if self._broker is not None and self._loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
            with contextlib.suppress(Exception):
                fut.result(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout)
        self._loop = self._broker = self._thread = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


MOSQUITTO_CONF = """\
listener {port} {host}
allow_anonymous true
persistence true
persistence_location {dir}/
autosave_interval 1
max_queued_messages 1000000
max_inflight_messages 1000
set_tcp_nodelay true
log_dest file {dir}/mosquitto.log
user {user}
"""


class Mosquitto(BrokerAddress):
    """A private `mosquitto` on a free port, persistence in its own directory; can be killed and restarted."""

    def __init__(self, workdir: str | os.PathLike, host: str = "127.0.0.1", port: int = 0, extra_conf: str = ""):
        super().__init__(host, port or free_port(host))
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "mosquitto.conf"
        conf = MOSQUITTO_CONF.format(port=self.port, host=self.host, dir=self.dir, user=getpass.getuser())
        self.conf.write_text(conf + extra_conf)  # `user`: as root, mosquitto would drop to a user that can't write here
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def binary() -> str | None:
        return shutil.which("mosquitto") or next(
            (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None
        )

    def start(self, timeout: float = 10.0) -> Mosquitto:
        exe = self.binary()
        if exe is None:
            raise FileNotFoundError("mosquitto binary not found")
        with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.2):
            raise RuntimeError(f"mosquitto did not start: port {self.port} is already in use")
        self.proc = subprocess.Popen([exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait_listening(self.host, self.port, timeout, alive=lambda: self.proc.poll() is None)
        except Exception:
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.poll() is not None else ""
            self.kill()
            raise RuntimeError(f"mosquitto did not start on port {self.port}: {err.strip()[-500:]}") from None
        return self

    restart = start

    def kill(self) -> None:
        """SIGKILL: the broker dies without saving (as in a power cut)."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM: a clean stop that saves the persistence file."""
        self._end(signal.SIGTERM)

    def _end(self, sig: int) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(json.dumps(str(x)) for x in v) + "]"
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


def _table(name: str, values: dict, lines: list[str]) -> None:
    """`[name]` with its plain keys, then each dict value as a table below it (`[anomaly.groups.NAME]`)."""
    lines.append(f"[{name}]")
    lines.extend(f"{k} = {_toml_value(v)}" for k, v in values.items() if not isinstance(v, dict))
    lines.append("")
    for k, v in values.items():
        if isinstance(v, dict):
            _table(f"{name}.{k}", v, lines)


def write_config(path: str | os.PathLike, settings: dict[str, dict[str, object]]) -> Path:
    """Write `{section: {key: value}}` as an agent TOML file (a dict value is a table below its section,
    e.g. `{"anomaly": {"groups": {"pumps": {...}}}}`); returns its path."""
    lines: list[str] = []
    for section, values in settings.items():
        _table(section, values, lines)
    path = Path(path)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


class AgentProcess:
    """`edge-agent run` as a subprocess against `broker`, with its log, capture and config under `workdir`.

    `settings` override the test defaults section by section. The real service
    path: signals, stop order and exit codes are what a deployment sees.
    """

    def __init__(self, broker: BrokerAddress, workdir: str | os.PathLike, settings: dict | None = None,
                 protocol: str = "auto"):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.db = str(self.dir / "events.db")
        self.capture_dir = self.dir / "capture"
        cfg = {
            "mqtt": {"host": broker.host, "port": broker.port, "protocol": protocol,
                     "client_id": f"edgewatch-test-{uuid.uuid4().hex[:8]}"},
            "store": {"url": self.db},
            "record": {"path": str(self.capture_dir)},
            "metrics": {"listen": ""},
            "log": {"format": "json"},
        }
        for section, values in (settings or {}).items():
            cfg.setdefault(section, {}).update(values)
        self.config = write_config(self.dir / "agent.toml", cfg)
        self.agent_id = cfg.get("agent", {}).get("id")  # None: the default, derived from the host and file name
        self.log_path = self.dir / "agent.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> AgentProcess:
        self._log = open(self.log_path, "ab+")
        if self._log.tell():  # a killed run's last line may lack its newline: this run starts on a line of its own
            self._log.seek(-1, os.SEEK_END)
            if self._log.read(1) != b"\n":
                self._log.write(b"\n")  # appended: "a" mode writes at the end wherever it read
                self._log.flush()
        self.proc = subprocess.Popen([sys.executable, "-m", "edgewatch.agent.cli", "run", "--config", str(self.config)],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, broker: BrokerAddress, timeout: float = 20.0) -> None:
        """Block until the agent announced itself `online` on the status topic (with its id, when it was given one)."""

        def online(p: bytes) -> bool:
            status = json.loads(p)
            return status.get("state") == "online" and self.agent_id in (None, status.get("agent_id"))

        with subscribe_collect(broker, "+/status") as status:
            wait_for(lambda: any(online(p) for _, p in list(status))
                     or (self.proc.poll() is not None and self._died()), timeout, what="agent online")

    def _died(self):
        raise RuntimeError(f"edge-agent run exited with {self.proc.returncode}: {self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code, self.proc = self.proc.returncode, None
        self._log.close()
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# -- helpers --------------------------------------------------------------------------------------------


def _client(broker: BrokerAddress, client_id: str = ""):
    import paho.mqtt.client as mqtt

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"test-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv311,
    )
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    return client


def _as_bytes(payload: bytes | str | dict) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode("utf-8", "surrogatepass")
    return json.dumps(payload).encode()


def publish_many(broker: BrokerAddress, messages: Iterable[tuple[str, bytes | str | dict]], qos: int = 1,
                 timeout: float = 30.0) -> int:
    """Publish (topic, payload) pairs in order over one connection; dict payloads become JSON. Returns the count.

    Publishes once the broker has accepted the connection and counts acknowledgements rather than trusting each
    publish call: if the connection drops midway, paho reconnects and re-sends what was not acknowledged.
    """
    connected, cond, acked = threading.Event(), threading.Condition(), [0]

    def on_publish(client, userdata, mid, reason_code, properties) -> None:
        with cond:
            acked[0] += 1
            cond.notify_all()

    client = _client(broker)
    client.on_connect = lambda c, u, f, rc, p: rc.is_failure or connected.set()
    client.on_publish = on_publish
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        if not connected.wait(timeout):
            raise TimeoutError(f"broker {broker.url} did not accept a connection in {timeout} s")
        count = 0
        for topic, payload in messages:
            client.publish(topic, _as_bytes(payload), qos=qos)
            count += 1
        with cond:
            if not cond.wait_for(lambda: acked[0] >= count, timeout):
                raise TimeoutError(f"broker {broker.url} acknowledged {acked[0]} of {count} messages in {timeout} s")
        return count
    finally:
        client.disconnect()
        client.loop_stop()


def publish(broker: BrokerAddress, topic: str, payload: bytes | str | dict, qos: int = 1) -> None:
    """Publish one message and wait until the broker has it."""
    publish_many(broker, [(topic, payload)], qos=qos)


class Collected(list):
    """Messages received by `subscribe_collect`: a list of (topic, payload bytes) that grows."""

    def __init__(self):
        super().__init__()
        self._cond = threading.Condition()

    def _add(self, topic: str, payload: bytes) -> None:
        with self._cond:
            self.append((topic, payload))
            self._cond.notify_all()

    def wait(self, count: int, timeout: float = 10.0) -> list[tuple[str, bytes]]:
        """Block until at least `count` messages arrived; raises TimeoutError with what did."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self) >= count, timeout):
                raise TimeoutError(f"{len(self)} of {count} messages after {timeout} s")
            return list(self)

    def json(self) -> list[dict]:
        return [json.loads(p) for _, p in list(self)]


@contextlib.contextmanager
def subscribe_collect(broker: BrokerAddress, topic: str, qos: int = 1, timeout: float = 10.0) -> Iterator[Collected]:
    """Subscribe to `topic` (wildcards allowed) for the block; yields the growing `Collected` list."""
    collected = Collected()
    subscribed = threading.Event()
    client = _client(broker)
    client.on_message = lambda c, u, msg: collected._add(msg.topic, msg.payload)
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        if not subscribed.wait(timeout):
            raise TimeoutError(f"could not subscribe to {topic!r} on {broker.url}")
        yield collected
    finally:
        client.disconnect()
        client.loop_stop()


def wait_for(condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.05, what: str = "") -> object:
    """Poll `condition` until it returns something truthy; returns it, or raises TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(interval)


def _reader(db):
    from edgewatch.agent.eventlog.store import Store

    if not isinstance(db, (str, os.PathLike)):
        return db
    try:
        return Store(str(db), readonly=True)
    except Exception:  # noqa: BLE001 - the agent may not have created the log yet
        return None


def wait_for_events(db, count: int = 1, *, predicate: Callable[[dict], bool] | None = None,
                    timeout: float = 10.0, **filters) -> list[dict]:
    """Wait until the event log `db` (URL, path or Store) holds `count` events matching `filters`
    (Store.events keywords: kinds, key, severity, ...) and `predicate`; returns them (event dicts, docs/reference/events.md)."""
    state = {"store": None, "last": []}

    def ready():
        state["store"] = state["store"] or _reader(db)
        if state["store"] is None:
            return None
        try:
            rows = state["store"].events(**filters)
        except Exception:  # noqa: BLE001 - tables not created yet
            return None
        rows = [r for r in rows if predicate is None or predicate(r)]
        state["last"] = rows
        return rows if len(rows) >= count else None

    try:
        return wait_for(ready, timeout, interval=0.1, what=f"{count} events matching {filters or predicate}")
    except TimeoutError:
        raise TimeoutError(f"{len(state['last'])} of {count} events matching {filters} after {timeout} s") from None


def wait_for_dead_letters(db, count: int = 1, *, timeout: float = 10.0) -> list[dict]:
    """Wait until the log `db` holds at least `count` dead letters; returns them."""
    import sqlalchemy as sa
    from edgewatch.agent.eventlog.schema import deadletters

    state = {"store": None}

    def ready():
        state["store"] = state["store"] or _reader(db)
        if state["store"] is None:
            return None
        try:  # a count, not the rows: cheap enough to poll while the agent writes thousands
            with state["store"].engine.connect() as conn:
                n = conn.execute(sa.select(sa.func.count()).select_from(deadletters)).scalar_one()
        except Exception:  # noqa: BLE001 - tables not created yet
            return None
        return n >= count

    wait_for(ready, timeout, interval=0.2, what=f"{count} dead letters")
    return state["store"].dead_letters()
