"""`edge-agent check-config PATH`: validate a configuration file before a service is started with it.

`agent.config.load` checks keys, types, ranges and the rules between keys; this adds what needs the
machine: URLs that parse (and the database driver they name), secret and certificate files that can be
read, addresses that are addresses. `edge-agent run` applies the same checks before it starts.
"""

from __future__ import annotations

import os
import sys
from urllib.parse import urlsplit

from edgewatch.agent import config
from edgewatch.agent.analytics import advisor, drift, health, market
from edgewatch.agent.config import Config, ConfigError
from edgewatch.agent.eventlog.store import resolve_url


def _readable(key: str, path: str) -> None:
    if path and not os.access(path, os.R_OK):
        why = "no such file" if not os.path.exists(path) else "not readable"
        raise ConfigError(f"{key}: {path}: {why}")


def _host_port(key: str, text: str) -> None:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key}: expected host:port, got {text!r}")


def validate(cfg: Config) -> None:
    """Raise ConfigError naming the first key that cannot work, and where that key was set."""
    try:
        _validate(cfg)
    except ConfigError as e:
        raise config.located(cfg, e) from None


def _validate(cfg: Config) -> None:
    if not cfg.mqtt.client_id:
        raise ConfigError("mqtt.client_id: empty (the persistent session needs a fixed id)")
    config.read_secret("mqtt.password_file", cfg.mqtt.password_file)
    if cfg.mqtt.password_file and not cfg.mqtt.username:
        raise ConfigError("mqtt.password_file: set, but mqtt.username is empty")
    for key in ("ca_file", "cert_file", "key_file"):
        _readable(f"mqtt.{key}", getattr(cfg.mqtt, key))
    resolve_url(cfg.store.url)
    if cfg.record.path and os.path.exists(cfg.record.path) and not os.path.isdir(cfg.record.path):
        raise ConfigError(f"record.path: {cfg.record.path}: not a directory")
    sidecar = urlsplit(cfg.sidecar.url)
    if sidecar.scheme not in ("http", "https", "unix") or not (sidecar.netloc or sidecar.path):
        raise ConfigError(f"sidecar.url: expected http://host:port or unix:///path.sock, got {cfg.sidecar.url!r}")
    config.read_secret("sidecar.api_key_file", cfg.sidecar.api_key_file)
    if cfg.metrics.listen:
        _host_port("metrics.listen", cfg.metrics.listen)
    # the analytics' own consistency rules, the same ones the graphs apply when they are wired
    health.check(cfg.health, cfg.maintenance)
    drift.check(cfg.drift, cfg.health)
    market.check(cfg.market)
    advisor.check(cfg.advisor)


def check_config_command(args) -> int:
    """Print `ok: PATH` and the settings that matter most, or one error line (exit 2, via the CLI).

    Secret files that others can read are warned about on stderr (exit 0: the file works, but leaks).
    """
    cfg = config.load(args.path)
    validate(cfg)
    for key, path, exposure in config.exposed_secrets(cfg):
        print(f"edge-agent check-config: warning: {key}: {path} is {exposure}: {config.secret_fix(path)}",
              file=sys.stderr)
    m = cfg.mqtt
    print(f"ok: {args.path}")
    print(f"  agent    {cfg.agent.id} subscriptions={','.join(config.subscriptions(m))}")
    print(f"  mqtt     {m.host}:{m.port} protocol={m.protocol} client_id={m.client_id} tls={'on' if m.tls else 'off'}"
          f"{' user=' + m.username if m.username else ''}")
    store = cfg.store.url if "://" not in cfg.store.url else resolve_url(cfg.store.url).render_as_string(hide_password=True)
    print(f"  store    {store}"
          f" retention={cfg.store.retention_days:g}d/{cfg.store.retention_rows} rows"
          f"/{cfg.store.retention_dead_letters or cfg.store.retention_rows} dead letters")
    print(f"  record   {cfg.record.path or 'off'}")
    print(f"  sidecar  {cfg.sidecar.url}")
    print(f"  metrics  {cfg.metrics.listen or 'off'}")
    for section in config.GROUPED:
        for name, group in getattr(cfg, section).groups.items():
            print(f"  {section:<8} group {name}: {', '.join(group.sensors)}")
    for key, what in (("price_alert_multiples", "tick multiple"), ("price_alert_thresholds", "price-alert floor")):
        if own := market.per_symbol(getattr(cfg.market, key), key):
            print(f"  market   own {what}: {', '.join(f'{symbol}={value:g}' for symbol, value in own)}")
    return 0
