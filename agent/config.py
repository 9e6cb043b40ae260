"""Configuration: one TOML file, one dataclass per section, environment overrides.

Every key has a default here and a line in the README. Unknown keys are errors
that name the key; `EDGEWATCH_<SECTION>_<KEY>` overrides any key; secrets are
read from files (`*_file` keys) so they never sit in the TOML itself.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import typing
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration problem; the message names the bad key or file."""


def _under_systemd() -> bool:
    return bool(os.environ.get("INVOCATION_ID") or os.environ.get("NOTIFY_SOCKET"))


@dataclasses.dataclass
class MqttConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    protocol: str = "auto"  # "5", "3.1.1" or "auto"
    client_id: str = dataclasses.field(default_factory=lambda: f"edgewatch-{socket.gethostname()}")
    username: str = ""
    password_file: str = ""
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    keepalive: int = 30
    session_expiry: int = 86400  # seconds the broker keeps our session while we are away
    receive_maximum: int = 1000  # QoS 1 messages in flight to us (MQTT 5)
    reconnect_min_delay: float = 0.5
    reconnect_max_delay: float = 30.0
    max_payload: int = 65536
    sensors_prefix: str = "sensors"
    market_prefix: str = "market"
    portfolio_prefix: str = "portfolio"
    news_prefix: str = "news"
    output_prefix: str = "edgewatch"


@dataclasses.dataclass
class StoreConfig:
    url: str = dataclasses.field(
        default_factory=lambda: "/var/lib/edgewatch/events.db" if _under_systemd() else "./edgewatch.db"
    )
    flush_interval: float = 0.02  # seconds the writer waits to fill a transaction
    batch_size: int = 5000  # rows per transaction at most
    retention_days: float = 30.0  # 0 = keep forever
    retention_rows: int = 10_000_000  # 0 = no row limit


@dataclasses.dataclass
class RecordConfig:
    path: str = ""  # directory for capture files; empty = no recording
    max_bytes: int = 64 * 1024 * 1024  # rotate a capture file past this size
    max_files: int = 20  # rotated files kept


@dataclasses.dataclass
class SidecarConfig:
    url: str = "http://127.0.0.1:8765"
    api_key_file: str = ""
    timeout: float = 2.0


@dataclasses.dataclass
class MetricsConfig:
    listen: str = "127.0.0.1:9108"


@dataclasses.dataclass
class LogConfig:
    level: str = "info"
    format: str = "auto"  # auto (JSON when not on a terminal), json, console


@dataclasses.dataclass
class AnomalyConfig:
    threshold: float = 0.9  # score at or above which a reading becomes an `anomaly` event


@dataclasses.dataclass
class HealthConfig:
    interval: float = 60.0  # seconds between periodic `health` events per sensor


@dataclasses.dataclass
class MaintenanceConfig:
    pass


@dataclasses.dataclass
class MarketConfig:
    bar_interval: float = 1.0  # seconds per VWAP bar
    price_alert_threshold: float = 0.02  # fractional move between consecutive trades


@dataclasses.dataclass
class RiskConfig:
    max_drawdown: float = 10000.0
    max_gross_exposure: float = 1_000_000.0
    check_interval: float = 0.1  # seconds between timer-driven risk checks


@dataclasses.dataclass
class NewsConfig:
    enabled: bool = True


@dataclasses.dataclass
class Config:
    mqtt: MqttConfig = dataclasses.field(default_factory=MqttConfig)
    store: StoreConfig = dataclasses.field(default_factory=StoreConfig)
    record: RecordConfig = dataclasses.field(default_factory=RecordConfig)
    sidecar: SidecarConfig = dataclasses.field(default_factory=SidecarConfig)
    metrics: MetricsConfig = dataclasses.field(default_factory=MetricsConfig)
    log: LogConfig = dataclasses.field(default_factory=LogConfig)
    anomaly: AnomalyConfig = dataclasses.field(default_factory=AnomalyConfig)
    health: HealthConfig = dataclasses.field(default_factory=HealthConfig)
    maintenance: MaintenanceConfig = dataclasses.field(default_factory=MaintenanceConfig)
    market: MarketConfig = dataclasses.field(default_factory=MarketConfig)
    risk: RiskConfig = dataclasses.field(default_factory=RiskConfig)
    news: NewsConfig = dataclasses.field(default_factory=NewsConfig)


_CHOICES = {
    ("mqtt", "protocol"): ("5", "3.1.1", "auto"),
    ("log", "level"): ("debug", "info", "warning", "error"),
    ("log", "format"): ("auto", "json", "console"),
}


def _coerce(where: str, value: object, typ: type) -> object:
    """Convert a TOML or environment value to the field's type, or name the key."""
    if isinstance(value, str) and typ is not str:
        text = value.strip()
        if typ is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        try:
            return typ(text)
        except ValueError:
            raise ConfigError(f"{where}: expected {typ.__name__}, got {value!r}") from None
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. protocol = 5
    if not isinstance(value, typ) or (typ is not bool and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {typ.__name__}, got {type(value).__name__} {value!r}")
    return value


def _section_types(section_cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls)}


def _apply(cfg: Config, data: dict, source: str) -> None:
    sections = _section_types(Config)
    for section, values in data.items():
        if section not in sections:
            raise ConfigError(f"{source}: unknown section [{section}]")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        target = getattr(cfg, section)
        fields = _section_types(type(target))
        for key, value in values.items():
            where = f"{source}: {section}.{key}"
            if key not in fields:
                raise ConfigError(f"{where}: unknown key")
            value = _coerce(where, value, fields[key])
            choices = _CHOICES.get((section, key))
            if choices and value not in choices:
                raise ConfigError(f"{where}: must be one of {', '.join(choices)}, got {value!r}")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise ConfigError(f"{where}: must not be negative, got {value!r}")
            setattr(target, key, value)


def _env_overrides(environ: typing.Mapping[str, str]) -> dict:
    """`EDGEWATCH_<SECTION>_<KEY>` -> {section: {key: text}}; unknown names are errors."""
    out: dict[str, dict[str, str]] = {}
    sections = _section_types(Config)
    for name, value in environ.items():
        if not name.startswith("EDGEWATCH_"):
            continue
        rest = name[len("EDGEWATCH_") :].lower()
        section = next((s for s in sections if rest.startswith(s + "_")), None)
        key = rest[len(section) + 1 :] if section else ""
        if section is None or key not in _section_types(sections[section]):
            raise ConfigError(f"environment: {name}: no such configuration key")
        out.setdefault(section, {})[key] = value
    return out


def load(path: str | os.PathLike | None = None, environ: typing.Mapping[str, str] | None = None) -> Config:
    """Read the TOML file (if any), then environment overrides; validate everything."""
    cfg = Config()
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such configuration file") from None
        except PermissionError:
            raise ConfigError(f"{path}: permission denied") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML: {e}") from None
        _apply(cfg, data, str(path))
    _apply(cfg, _env_overrides(os.environ if environ is None else environ), "environment")
    return cfg


def read_secret(cfg_key: str, path: str) -> str | None:
    """Contents of a secret file (stripped), None when no file is configured."""
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as e:
        raise ConfigError(f"{cfg_key}: cannot read {path}: {e.strerror}") from None


def defaults_as_toml() -> str:
    """Every key with its default, as TOML: the reference the README and example are checked against."""
    lines: list[str] = []
    cfg = Config()
    for section in _section_types(Config):
        lines.append(f"[{section}]")
        for f in dataclasses.fields(getattr(cfg, section)):
            value = getattr(getattr(cfg, section), f.name)
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, str):
                text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            else:
                text = repr(value)
            lines.append(f"{f.name} = {text}")
        lines.append("")
    return "\n".join(lines)
