"""`edge-agent doctor`: first aid for an operator — what is wrong with this setup and how to fix it.

Each check prints ✓ or ✗ with one line of evidence and, when it fails, what to
do. It probes the real things the service needs, the way the service uses them
(paho with the configured protocol, TLS and credentials; the event log's
directory or database; the sidecar's /ready), so a green doctor means
`systemctl start edgewatch-agent` will get to READY. Exit 0 only when every
check passes, 1 otherwise, 2 when the configuration itself is unusable.
"""

from __future__ import annotations

import dataclasses
import grp
import json
import os
import pwd
import shutil
import stat
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import timezone
from pathlib import Path

import paho.mqtt.client as mqtt
from edgewatch.agent import config
from edgewatch.agent.commands.check_config import validate
from edgewatch.agent.config import Config, ConfigError
from edgewatch.agent.ingest.mqtt import PROTOCOL_REFUSED
from edgewatch.agent.timeutil import parse_timestamp
from paho.mqtt.enums import CallbackAPIVersion

CONNECT_TIMEOUT = 5.0  # seconds for TCP + CONNACK
LISTEN_SECONDS = 3.0  # how long to sample incoming messages for clock skew
LISTEN_ENOUGH = 50  # ... or until this many timestamped ones arrived
MIN_FREE_BYTES = 256 * 1024 * 1024  # below this the event log is about to stop
MAX_SKEW = 60.0  # seconds between a message's `ts` and our clock before event times mislead
MAX_FUTURE = 300.0  # messages further in the future are dead-lettered (docs/reference/topics.md)
SERVICE_USER = "edgewatch"  # the systemd units' User=; root's doctor checks access on its behalf


@dataclasses.dataclass
class Result:
    name: str
    ok: bool | None  # None: not applicable / skipped
    detail: str
    fix: str = ""


def check_broker(cfg: Config) -> tuple[Result, mqtt.Client | None]:
    """Connect like the agent (protocol, TLS, credentials) under a separate client id; returns the client."""
    m = cfg.mqtt
    where = f"{m.host}:{m.port}"
    choices = {"5": ["5"], "3.1.1": ["3.1.1"], "auto": ["5", "3.1.1"]}[m.protocol]
    password = config.read_secret("mqtt.password_file", m.password_file)
    outcome = ""
    for protocol in choices:
        client, outcome = _connect(cfg, protocol, password)
        if client is not None:
            return Result("broker", True, f"{where} MQTT {protocol}" + (f" as {m.username}" if m.username else "")), client
        if not _version_refused(outcome):
            break
    if outcome in ("Not authorized", "Bad user name or password"):
        fix = "check mqtt.username and the password in mqtt.password_file against the broker's password file / ACL"
    elif _version_refused(outcome):
        fix = 'the broker does not speak the configured MQTT version: set mqtt.protocol = "auto" or "3.1.1"'
    elif "certificate" in outcome.lower() or "ssl" in outcome.lower():
        fix = "check mqtt.tls, mqtt.ca_file (the CA that signed the broker's certificate), mqtt.cert_file/key_file"
    else:
        fix = (f"is the broker running and listening on {where}? (systemctl status mosquitto; "
               "ss -ltn) — or fix mqtt.host / mqtt.port")
    return Result("broker", False, f"{where}: {outcome}", fix), None


def _version_refused(outcome: str) -> bool:
    """The answers of a broker that does not speak the MQTT version asked for (amqtt drops or ignores a v5 CONNECT)."""
    return outcome in PROTOCOL_REFUSED or outcome in ("dropped before CONNACK", "no CONNACK")


def _connect(cfg: Config, protocol: str, password: str | None) -> tuple[mqtt.Client | None, str]:
    m = cfg.mqtt
    v5 = protocol == "5"
    # never the service's own client id: that would take over (and clean) the agent's persistent session
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{m.client_id}-doctor-{uuid.uuid4().hex[:6]}",
                         protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, clean_session=None if v5 else True)
    client.connect_timeout = CONNECT_TIMEOUT
    if m.tls:
        client.tls_set(ca_certs=m.ca_file or None, certfile=m.cert_file or None, keyfile=m.key_file or None)
    if m.username:
        client.username_pw_set(m.username, password)
    answered = threading.Event()
    outcome: list[str] = []

    def on_connect(c, userdata, flags, reason_code, properties):
        outcome.append("connected" if not reason_code.is_failure else str(reason_code))
        answered.set()

    def on_disconnect(c, userdata, flags, reason_code, properties):
        if not answered.is_set():
            outcome.append("dropped before CONNACK")
            answered.set()

    client.on_connect, client.on_disconnect = on_connect, on_disconnect
    try:
        client.connect(m.host, m.port, keepalive=max(5, m.keepalive))
    except (OSError, ValueError) as e:
        return None, getattr(e, "strerror", None) or str(e) or type(e).__name__
    client.loop_start()
    if not answered.wait(CONNECT_TIMEOUT):
        outcome.append("no CONNACK")
    if outcome[0] == "connected":
        return client, "connected"
    client.disconnect()
    client.loop_stop()
    return None, outcome[0]


def check_subscribe(cfg: Config, client: mqtt.Client) -> Result:
    """Subscribe to the agent's input filters as its user: an ACL that refuses one starves the agent silently.
    A shared one is probed without its `$share/{group}/`: joining the group would take messages from the agents."""
    m = cfg.mqtt
    topics = [config.unshared(t) for t in config.subscriptions(m)]
    answered = threading.Event()
    codes: list = []

    def on_subscribe(c, userdata, mid, reason_codes, properties):
        codes.extend(reason_codes)
        answered.set()

    client.on_subscribe = on_subscribe
    _, mid = client.subscribe([(t, 1) for t in topics])
    if not answered.wait(CONNECT_TIMEOUT):
        return Result("subscribe", False, f"no SUBACK in {CONNECT_TIMEOUT:g} s", "check the broker's log")
    client.unsubscribe(topics)
    refused = [f"{t} ({code})" for t, code in zip(topics, codes) if code.is_failure]
    if refused:
        who = m.username or "the anonymous user"
        return Result("subscribe", False, "refused: " + ", ".join(refused),
                      f"grant {who} read access to these topics in the broker's ACL")
    return Result("subscribe", True, f"{len(topics)} input filters granted")


def check_skew(cfg: Config, client: mqtt.Client) -> Result:
    """Sample live input messages and compare their `ts` with this machine's clock."""
    m = cfg.mqtt
    skews: list[float] = []
    seen = [0]
    enough = threading.Event()

    def on_message(c, userdata, msg):
        if msg.retain:
            return  # a retained message is old by design
        seen[0] += 1
        received = time.time()
        try:
            ts = json.loads(msg.payload).get("ts")
            if ts is None:
                return
            when = parse_timestamp(ts)
        except Exception:  # noqa: BLE001 - malformed input is the dead-letter path's business, not ours
            return
        skews.append(received - when.replace(tzinfo=timezone.utc).timestamp())  # naive UTC, the agent's convention
        if len(skews) >= LISTEN_ENOUGH:
            enough.set()

    client.on_message = on_message
    client.subscribe([(f"{p}/#", 0) for p in (m.sensors_prefix, m.market_prefix, m.portfolio_prefix, m.news_prefix)])
    enough.wait(LISTEN_SECONDS)
    client.on_message = None
    if not skews:
        return Result("clock skew", None, f"no timestamped input in {LISTEN_SECONDS:g} s ({seen[0]} messages); not checked")
    median = statistics.median(skews)
    future = -min(skews)
    detail = f"median {median:+.1f} s over {len(skews)} messages (positive: messages arrive late)"
    if future > MAX_FUTURE:
        return Result("clock skew", False, f"{detail}; one is {future:.0f} s in the future: such messages are dead-lettered",
                      "the publishers' clocks run ahead of this one: sync both with NTP (timedatectl status)")
    if abs(median) > MAX_SKEW:
        return Result("clock skew", False, detail,
                      "sync this machine's and the publishers' clocks with NTP (timedatectl status; chronyc tracking)")
    return Result("clock skew", True, detail)


def check_log(cfg: Config) -> Result:
    """The event log can be written: a SQLite file's directory (write + free space) or the database itself."""
    from edgewatch.agent.eventlog.store import resolve_url  # noqa: PLC0415

    url = resolve_url(cfg.store.url)
    if url.get_backend_name() == "sqlite":
        return _check_sqlite(Path(url.database))
    return _check_database(url)


def _check_sqlite(path: Path) -> Result:
    directory = path.parent
    fix_dir = (f"create it writable by the service: install -d -o edgewatch -g edgewatch -m 0750 {directory} "
               "(under systemd only /var/lib/edgewatch is writable; or change store.url)")
    if not directory.is_dir():
        return Result("event log", False, f"{directory}: no such directory", fix_dir)
    # a real probe: permissions, read-only mounts (ProtectSystem=strict) and full disks all show here
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".doctor-"):
            pass
        if path.exists():
            with open(path, "r+b"):
                pass
    except OSError as e:
        target = path if path.exists() and os.access(directory, os.W_OK) else directory
        return Result("event log", False, f"{target}: not writable ({e.strerror})",
                      f"give the service user write access (chown edgewatch:edgewatch {target}) or change store.url")
    if os.geteuid() == 0:  # root writes anywhere: what matters is whether the service user can
        denied = _denied_to_service_user(path if path.exists() else directory)
        if denied:
            return Result("event log", False, denied,
                          f"chown {SERVICE_USER}:{SERVICE_USER} {directory} {path if path.exists() else ''}".rstrip()
                          + " (or run the doctor as the service: sudo -u edgewatch edge-agent doctor …)")
    free = shutil.disk_usage(directory).free
    detail = f"{path} writable, {free / 2**30:.1f} GiB free"
    if free < MIN_FREE_BYTES:
        return Result("event log", False, detail,
                      "free disk space, or lower store.retention_days / store.retention_rows")
    return Result("event log", True, detail)


def _denied_to_service_user(target: Path) -> str | None:
    """Why the service user could not write `target` (by owner/group/other bits), None if it can or does not exist."""
    try:
        user = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None  # not installed as a service here: the probe above is the whole answer
    gids = {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if SERVICE_USER in g.gr_mem}
    st = target.stat()
    if st.st_uid == user.pw_uid:
        ok = st.st_mode & stat.S_IWUSR
    elif st.st_gid in gids:
        ok = st.st_mode & stat.S_IWGRP
    else:
        ok = st.st_mode & stat.S_IWOTH
    return None if ok else f"{target}: writable by root, not by the service user {SERVICE_USER}"


def _check_database(url) -> Result:
    import sqlalchemy as sa  # noqa: PLC0415

    shown = url.render_as_string(hide_password=True)
    engine = sa.create_engine(url, connect_args={"connect_timeout": int(CONNECT_TIMEOUT)})
    try:
        with engine.connect() as conn:
            if sa.inspect(conn).has_table("events"):
                ok = conn.exec_driver_sql("select has_table_privilege(current_user, 'events', 'INSERT')").scalar()
                what, grant = "INSERT on table events", "GRANT INSERT ON events TO"
            else:
                ok = conn.exec_driver_sql("select has_schema_privilege(current_user, current_schema(), 'CREATE')").scalar()
                schema = conn.exec_driver_sql("select current_schema()").scalar()  # None: no usable one on the path
                what = f"CREATE in schema {schema}" if schema else "usable schema on the search_path"
                grant = f"GRANT USAGE, CREATE ON SCHEMA {schema or '<schema>'} TO"
    except Exception as e:  # noqa: BLE001 - any failure to reach the database is the finding
        return Result("event log", False, f"{shown}: {str(e).splitlines()[0]}",
                      "is the database server up and store.url right (host, user, database, password)?")
    finally:
        engine.dispose()
    if not ok:
        return Result("event log", False, f"{shown}: no {what}", f"as the database owner: {grant} {url.username or '<agent user>'}")
    return Result("event log", True, f"{shown}: connected, {what} granted")


def check_sidecar(cfg: Config) -> Result:
    """The model sidecar answers /ready; names the model and the execution provider it uses."""
    if not cfg.news.enabled:
        return Result("sidecar", None, "news analysis off (news.enabled = false); not checked")
    from edgewatch.sidecar.client import SidecarClient, SidecarError  # noqa: PLC0415

    api_key = config.read_secret("sidecar.api_key_file", cfg.sidecar.api_key_file)
    try:
        with SidecarClient(cfg.sidecar.url, api_key=api_key, timeout=min(cfg.sidecar.timeout, CONNECT_TIMEOUT),
                           retries=0) as client:
            body = client.ready()
    except SidecarError as e:
        if e.status == 503:
            return Result("sidecar", False, f"not ready yet ({e})",
                          "the model is still loading: wait, then journalctl -u edgewatch-sidecar")
        if e.status == 401:
            return Result("sidecar", False, str(e),
                          "sidecar.api_key_file must hold the key the sidecar was started with (--api-key-file)")
        return Result("sidecar", False, str(e),
                      "start it: systemctl start edgewatch-sidecar (journalctl -u edgewatch-sidecar), or fix "
                      "sidecar.url; the agent runs without it, with news events marked degraded")
    model = body.get("model", "?") if isinstance(body, dict) else "?"
    provider = body.get("provider", "?") if isinstance(body, dict) else "?"
    return Result("sidecar", True, f"{cfg.sidecar.url}: ready, model {model}, provider {provider}")


def run_checks(cfg: Config) -> list[Result]:
    results = []
    broker, client = check_broker(cfg)
    results.append(broker)
    try:
        results.append(check_log(cfg))
        results.append(check_sidecar(cfg))
        if client is not None:
            results.append(check_subscribe(cfg, client))
            results.append(check_skew(cfg, client))
        else:
            results.append(Result("subscribe", None, "needs the broker; not checked"))
            results.append(Result("clock skew", None, "needs the broker; not checked"))
    finally:
        if client is not None:
            client.disconnect()
            client.loop_stop()
    return results


def _print(result: Result, out) -> None:
    mark = {True: "✓", False: "✗", None: "–"}[result.ok]
    print(f"{mark} {result.name:<11} {result.detail}", file=out)
    if result.fix and result.ok is False:
        print(f"  {'':<11} fix: {result.fix}", file=out)


def doctor_command(args) -> int:
    """`edge-agent doctor [--config PATH]`."""
    out = sys.stdout
    where = args.config or "defaults (no --config)"
    try:
        cfg = config.load(args.config)
        validate(cfg)
    except ConfigError as e:
        _print(Result("config", False, str(e), f"edit {args.config or 'the configuration'}, then: "
                      f"edge-agent check-config {args.config or 'PATH'}"), out)
        return 2
    _print(Result("config", True, where), out)
    results = run_checks(cfg)
    for r in results:
        _print(r, out)
    failed = [r.name for r in results if r.ok is False]
    print(f"\n{'all checks passed' if not failed else 'failed: ' + ', '.join(failed)}", file=out)
    return 1 if failed else 0
