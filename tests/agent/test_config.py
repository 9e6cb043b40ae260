"""Configuration loading (`agent.config`) and `edge-agent check-config`."""

from __future__ import annotations

import dataclasses
import os

import pytest
from edgewatch.agent import config
from edgewatch.agent.cli import main
from edgewatch.agent.config import ConfigError


def defaults_as_toml() -> str:
    """Every key with its default, as TOML."""
    lines: list[str] = []
    cfg = config.Config()
    for section in (f.name for f in dataclasses.fields(cfg)):
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


def write(tmp_path, text: str, name: str = "agent.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_match_the_spec():
    cfg = config.load(environ={})
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.protocol) == ("127.0.0.1", 1883, "auto")
    assert cfg.mqtt.client_id.startswith("edgewatch-")
    assert cfg.record.path == "" and cfg.sidecar.url == "http://127.0.0.1:8765"
    assert cfg.metrics.listen == "127.0.0.1:9108"
    assert (cfg.risk.max_drawdown, cfg.risk.max_gross_exposure) == (10000, 1_000_000)


def test_store_url_default_depends_on_systemd(monkeypatch):
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert config.load(environ={}).store.url == "./edgewatch.db"
    monkeypatch.setenv("INVOCATION_ID", "abc")
    assert config.load(environ={}).store.url == "/var/lib/edgewatch/events.db"


def test_file_values_and_types(tmp_path):
    path = write(tmp_path, '[mqtt]\nhost = "broker"\nport = 8883\ntls = true\nprotocol = 5\n'
                           '[store]\nretention_days = 7\nbatch_size = 100\n')
    cfg = config.load(path, environ={})
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.tls, cfg.mqtt.protocol) == ("broker", 8883, True, "5")
    assert cfg.store.retention_days == 7.0 and isinstance(cfg.store.retention_days, float)
    assert cfg.store.batch_size == 100


def test_defaults_as_toml_loads_back_unchanged(tmp_path):
    path = write(tmp_path, defaults_as_toml())
    assert config.load(path, environ={}) == config.load(environ={})


@pytest.mark.parametrize(
    "text, named",
    [
        ("[mqtt]\nbogus = 1\n", "mqtt.bogus: unknown key"),
        ("[nope]\nx = 1\n", "unknown section [nope]"),
        ("mqtt = 3\n", "[mqtt] must be a table"),
        ('[mqtt]\nport = "many"\n', "mqtt.port: expected int"),
        ("[mqtt]\nport = 18.5\n", "mqtt.port: expected int"),
        ("[mqtt]\nhost = true\n", "mqtt.host: expected str"),
        ("[mqtt]\ntls = 1\n", "mqtt.tls: expected bool"),
        ('[mqtt]\nprotocol = "4"\n', "mqtt.protocol: must be one of 5, 3.1.1, auto"),
        ('[log]\nlevel = "loud"\n', "log.level: must be one of"),
        ("[store]\nretention_days = -1\n", "store.retention_days: must not be negative"),
        ("[risk]\nmax_drawdown = nan\n", "risk.max_drawdown: must be a finite number"),
        ("[store]\nretention_days = inf\n", "store.retention_days: must be a finite number"),
        ("[store\n", "invalid TOML"),
    ],
)
def test_bad_files_name_the_key(tmp_path, text, named):
    with pytest.raises(ConfigError, match=None) as e:
        config.load(write(tmp_path, text), environ={})
    assert named in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such configuration file"):
        config.load(tmp_path / "absent.toml", environ={})


def test_environment_overrides_the_file(tmp_path):
    path = write(tmp_path, '[mqtt]\nhost = "from-file"\nport = 1884\n')
    env = {
        "EDGEWATCH_MQTT_HOST": "from-env",
        "EDGEWATCH_MQTT_TLS": "yes",
        "EDGEWATCH_STORE_RETENTION_DAYS": "1.5",
        "EDGEWATCH_STORE_URL": "postgresql+psycopg://u@h/db",
        "EDGEWATCH_RECORD_MAX_FILES": "3",
        "PATH": "/usr/bin",  # not ours: ignored
    }
    cfg = config.load(path, environ=env)
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.tls) == ("from-env", 1884, True)
    assert cfg.store.retention_days == 1.5 and cfg.store.url == "postgresql+psycopg://u@h/db"
    assert cfg.record.max_files == 3


def test_environment_read_from_os_environ(monkeypatch):
    monkeypatch.setenv("EDGEWATCH_MQTT_PORT", "2883")
    assert config.load().mqtt.port == 2883


@pytest.mark.parametrize(
    "name, value, named",
    [
        ("EDGEWATCH_MQTT_PORT", "x", "environment: mqtt.port: expected int"),
        ("EDGEWATCH_MQTT_TLS", "maybe", "environment: mqtt.tls: expected true or false"),
        ("EDGEWATCH_MQTT_NOPE", "1", "EDGEWATCH_MQTT_NOPE: no such configuration key"),
        ("EDGEWATCH_NOPE_X", "1", "EDGEWATCH_NOPE_X: no such configuration key"),
        ("EDGEWATCH_LOG_FORMAT", "xml", "environment: log.format: must be one of"),
        ("EDGEWATCH_RISK_MAX_DRAWDOWN", "nan", "environment: risk.max_drawdown: must be a finite number"),
    ],
)
def test_bad_environment_names_the_variable(name, value, named):
    with pytest.raises(ConfigError) as e:
        config.load(environ={name: value})
    assert named in str(e.value)


def test_secrets_come_from_files(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    cfg = config.load(write(tmp_path, f'[mqtt]\nusername = "agent"\npassword_file = "{secret}"\n'), environ={})
    assert config.read_secret("mqtt.password_file", cfg.mqtt.password_file) == "s3cret"
    assert config.read_secret("mqtt.password_file", "") is None
    with pytest.raises(ConfigError, match="mqtt.password_file: cannot read"):
        config.read_secret("mqtt.password_file", str(tmp_path / "absent"))


# -- edge-agent check-config ---------------------------------------------------------------------------------


def check(capsys, path: str) -> tuple[int, str, str]:
    rc = main(["check-config", path])
    out, err = capsys.readouterr()
    return rc, out, err


def test_check_config_ok_prints_a_summary(capsys, tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("pw")
    path = write(tmp_path, f'[mqtt]\nhost = "broker.lan"\nusername = "agent"\npassword_file = "{secret}"\n'
                           '[store]\nurl = "postgresql+psycopg://agent:hunter2@db/edgewatch"\n')
    rc, out, err = check(capsys, path)
    assert rc == 0 and err == ""
    assert out.splitlines()[0] == f"ok: {path}"
    assert "broker.lan:1883" in out and "user=agent" in out
    assert "postgresql+psycopg://agent:***@db/edgewatch" in out and "hunter2" not in out


def test_check_config_of_the_defaults(capsys, tmp_path):
    rc, out, _ = check(capsys, write(tmp_path, defaults_as_toml()))
    assert rc == 0 and out.startswith("ok: ")


@pytest.mark.parametrize(
    "text, named",
    [
        ("[mqtt]\nbogus = 1\n", "mqtt.bogus: unknown key"),
        ('[mqtt]\npassword_file = "/nonexistent/pw"\nusername = "u"\n', "mqtt.password_file: cannot read"),
        ('[mqtt]\npassword_file = "{pw}"\n', "mqtt.password_file: set, but mqtt.username is empty"),
        ('[mqtt]\nca_file = "/nonexistent/ca.pem"\n', "mqtt.ca_file: /nonexistent/ca.pem: no such file"),
        ("[mqtt]\nport = 70000\n", "mqtt.port: must be 1..65535"),
        ('[store]\nurl = "mysql://u@h/db"\n', "store.url: unsupported database"),
        ('[store]\nurl = "postgresql://[::1"\n', "store.url: not an SQLAlchemy URL"),
        ('[store]\nurl = ""\n', "store.url: empty"),
        ('[store]\nurl = "sqlite://"\n', "store.url: 'sqlite://' is an in-memory database"),
        ("[store]\nbatch_size = 0\n", "store.batch_size: must be at least 1"),
        ('[record]\npath = "{pw}"\n', "record.path"),
        ('[sidecar]\nurl = "ftp://x"\n', "sidecar.url: expected http://host:port or unix:///path.sock"),
        ('[sidecar]\napi_key_file = "/nonexistent/key"\n', "sidecar.api_key_file: cannot read"),
        ('[metrics]\nlisten = "9108"\n', "metrics.listen: expected host:port"),
        ("[market]\nprice_alert_min_move = 0.05\n", "market.price_alert_min_move: must be below"),
        ("[market]\nprice_alert_multiple = 0\n", "market.price_alert_multiple: must be positive"),
        ("[market]\nprice_alert_span = 0\n", "market.price_alert_span: must be at least 1"),
        ("[drift]\nclip = 0.5\n", "drift.clip: must be above drift.allowance"),
        ("[drift]\nclip = 5.0\n", "drift.clip: 2 x (clip - allowance) must stay below drift.threshold"),
        ("[drift]\nthreshold = 0\n", "drift.threshold: must be positive"),
        ("[drift]\nwarmup = 1\n", "drift.warmup: must be at least 2"),
        ("[drift]\nscale_span = 0\n", "drift.scale_span: must be at least 1"),
    ],
)
def test_check_config_errors_exit_2_naming_the_key(capsys, tmp_path, text, named):
    pw = tmp_path / "pw"
    pw.write_text("pw")
    rc, out, err = check(capsys, write(tmp_path, text.replace("{pw}", str(pw))))
    assert (rc, out) == (2, "")
    assert named in err and len(err.strip().splitlines()) == 1


def test_check_config_missing_and_unreadable_files(capsys, tmp_path):
    rc, _, err = check(capsys, str(tmp_path / "absent.toml"))
    assert rc == 2 and "no such configuration file" in err
    if os.geteuid() != 0:  # root reads anything
        path = write(tmp_path, "")
        os.chmod(path, 0)
        rc, _, err = check(capsys, path)
        assert rc == 2 and "permission denied" in err


def test_unix_sidecar_url_is_accepted(capsys, tmp_path):
    rc, _, err = check(capsys, write(tmp_path, '[sidecar]\nurl = "unix:///run/edgewatch/sidecar.sock"\n'))
    assert rc == 0, err


def test_check_config_applies_the_analytics_rules(tmp_path, capsys):
    """A key the loader accepts but the health graph cannot work with is caught before `run`."""
    path = tmp_path / "agent.toml"
    path.write_text("[health]\nfast_span = 0\n")
    assert main(["check-config", str(path)]) == 2
    assert "health.fast_span" in capsys.readouterr().err
