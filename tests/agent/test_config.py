"""Configuration loading (`agent.config`) and `edge-agent check-config`."""

from __future__ import annotations

import dataclasses
import os
import sys

import pytest
from edgewatch.agent import config
from edgewatch.agent.cli import main
from edgewatch.agent.config import ConfigError

from ..conftest import REPO


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
        ("EDGEWATCH_MQTT_PORT", "1_883", "environment: mqtt.port: expected int"),  # int() would take these two
        ("EDGEWATCH_MQTT_PORT", "\u0661\u0668\u0668\u0663", "environment: mqtt.port: expected int"),
        ("EDGEWATCH_MQTT_TLS", "maybe", "environment: mqtt.tls: expected true or false"),
        ("EDGEWATCH_MQTT_NOPE", "1", "EDGEWATCH_MQTT_NOPE: no such configuration key"),
        ("EDGEWATCH_NOPE_X", "1", "EDGEWATCH_NOPE_X: no such configuration key"),
        ("EDGEWATCH_LOG_FORMAT", "xml", "environment: log.format: must be one of"),
        ("EDGEWATCH_RISK_MAX_DRAWDOWN", "nan", "environment: risk.max_drawdown: must be a finite number"),
        ("EDGEWATCH_ANOMALY_GROUPS", "x", "EDGEWATCH_ANOMALY_GROUPS: anomaly.groups is set in the file"),
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
    secret.chmod(0o600)
    path = write(tmp_path, f'[mqtt]\nhost = "broker.lan"\nusername = "agent"\npassword_file = "{secret}"\n'
                           '[store]\nurl = "postgresql+psycopg://agent:hunter2@db/edgewatch"\n')
    rc, out, err = check(capsys, path)
    assert rc == 0 and err == ""
    assert out.splitlines()[0] == f"ok: {path}"
    assert "broker.lan:1883" in out and "user=agent" in out
    assert "postgresql+psycopg://agent:***@db/edgewatch" in out and "hunter2" not in out


def test_check_config_shows_the_symbols_with_price_alert_settings_of_their_own(capsys, tmp_path):
    path = write(tmp_path, '[market]\nprice_alert_multiples = "AAPL=12, SMALL-*=15"\n'
                           'price_alert_thresholds = "SMALL-*=0.05"\n')
    rc, out, _ = check(capsys, path)
    assert rc == 0
    assert "market   own tick multiple: AAPL=12, SMALL-*=15" in out
    assert "market   own price-alert floor: SMALL-*=0.05" in out
    rc, out, _ = check(capsys, write(tmp_path, "[market]\n"))
    assert rc == 0 and " own " not in out


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
        ("[mqtt]\nport = 70000\n", "mqtt.port: must be in [1, 65535]"),
        ('[mqtt]\nhost = "broker\\u0000x"\n', "mqtt.host: 'broker\\x00x' is no host name or address"),
        ('[mqtt]\nhost = ""\n', "mqtt.host: '' is no host name or address"),
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
        ("[market]\nprice_alert_horizon = 0.000001\n", "market.price_alert_horizon: must be 0 (off) or at least 1 second"),
        ("[market]\nprice_alert_span = 0\n", "market.price_alert_span: must be at least 1"),
        ("[drift]\nclip = 0.5\n", "drift.clip: must be above drift.allowance"),
        ("[drift]\nclip = 5.0\n", "drift.clip: 2 x (clip - allowance) must stay below drift.threshold"),
        ("[drift]\nthreshold = 0\n", "drift.threshold: must be positive"),
        ("[drift]\nwarmup = 1\n", "drift.warmup: must be at least 2"),
        ("[drift]\nscale_span = 0\n", "drift.scale_span: must be at least 1"),
        ("[drift]\nreference = \"group\"\n", "drift.reference: must be 'own', 'peers' or 'daily'"),
        ("[drift]\nreference = \"daily\"\nblock = 420\n", "drift.block: with a reference 'daily' it must divide a day"),
        ("[drift]\npeer_min = 0\n", "drift.peer_min: must be at least 1"),
        ("[anomaly]\nchange_window = 45\n", "anomaly.change_window: must be 0 (off) or a multiple of 30"),
        ("[anomaly]\nchange_span = 5000\n", "anomaly.change_span: must be below anomaly.change_norm_span"),
        ("[anomaly]\nchange_z = 0\n", "anomaly.change_z: must be in [0.1, 30], got 0.0"),
        ("[anomaly.groups.pumps]\nchange_hold = 0\n", "anomaly.groups.pumps.sensors: required"),
        ('[anomaly.groups.pumps]\nsensors = ["a/#/b"]\n', "anomaly.groups.pumps.sensors: 'a/#/b' is not a topic filter"),
        ('[anomaly.groups.pumps]\nsensors = ["a/#"]\nthreshold = 2\n', "anomaly.groups.pumps.threshold: must be in (0, 1]"),
        ('[anomaly.groups.pumps]\nsensors = ["a/#"]\nbogus = 1\n', "anomaly.groups.pumps.bogus: unknown key"),
        ('[anomaly.groups.pumps]\nsensors = ["a/#"]\nchange_window = 45\n',
         "anomaly.groups.pumps.change_window: must be 0 (off) or a multiple of 30"),
        ('[anomaly]\nthreshold = 0.9\n[anomaly.groups.pumps]\nsensors = ["a/#"]\ncritical = 0.85\n',
         "anomaly.groups.pumps.threshold: must be at most anomaly.groups.pumps.critical"),
        ('[anomaly.groups.pumps]\nsensors = ["a/#"]\n[anomaly.groups.pumps.groups.x]\nsensors = ["a/b"]\n',
         "anomaly.groups.pumps.groups: groups do not nest"),
        ('[anomaly.groups."a b"]\nsensors = ["a/#"]\n', "anomaly.groups.a b: a group name is letters"),
        ("[anomaly]\ngroups = 3\n", "anomaly.groups: each group is a table [anomaly.groups.NAME]"),
        ('[health.groups.bar]\nsensors = ["a/#"]\nranges = "pressure=10:0"\n', "health.groups.bar.ranges: pressure: low"),
        ('[health.groups.bar]\nsensors = ["a/#"]\nfast_span = 5000\n',
         "health.groups.bar.fast_span: must be below health.groups.bar.baseline_span"),
        ('[health.groups.bar]\nranges = "pressure=0:10"\n', "health.groups.bar.sensors: required"),
        ('[health.groups.bar]\nsensors = ["a/#"]\nchange_z = 3\n', "health.groups.bar.change_z: unknown key"),
        ('[health.groups.rooms]\nsensors = ["a/#"]\ndrift_reference = "weekly"\n',
         "health.groups.rooms.drift_reference: must be one of"),
        ('[drift]\nblock = 420\n[health.groups.rooms]\nsensors = ["a/#"]\ndrift_reference = "daily"\n',
         "drift.block: with a reference 'daily' it must divide a day"),
    ],
)
def test_check_config_errors_exit_2_naming_the_key(capsys, tmp_path, text, named):
    pw = tmp_path / "pw"
    pw.write_text("pw")
    rc, out, err = check(capsys, write(tmp_path, text.replace("{pw}", str(pw))))
    assert (rc, out) == (2, "")
    assert named in err and len(err.strip().splitlines()) == 1


def test_a_rule_between_keys_names_where_its_key_was_set(capsys, tmp_path, monkeypatch):
    """A key's own error names the file or the environment before the key; a rule checked once every key is set
    does the same."""
    path = write(tmp_path, '[mqtt]\nsensors_prefix = "a/#"\n')
    rc, _, err = check(capsys, path)
    assert rc == 2 and f"{path}: mqtt.sensors_prefix: 'a/#' contains an MQTT wildcard" in err
    monkeypatch.setenv("EDGEWATCH_MQTT_SENSORS_PREFIX", "b/+")
    rc, _, err = check(capsys, path)
    assert rc == 2 and "environment: mqtt.sensors_prefix: 'b/+' contains an MQTT wildcard" in err


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


def test_check_config_applies_the_analytics_rules(tmp_path, capsys, monkeypatch):
    """A key the loader accepts but the health graph cannot work with is caught before `run`, named with where
    it was set, as the loader's own errors are."""
    path = tmp_path / "agent.toml"
    path.write_text("[health]\nfast_span = 0\n")
    assert main(["check-config", str(path)]) == 2
    assert f"configuration error: {path}: health.fast_span: must be at least 1" in capsys.readouterr().err
    path.write_text("")
    monkeypatch.setenv("EDGEWATCH_ADVISOR_ENTER", "0")
    assert main(["check-config", str(path)]) == 2
    assert "configuration error: environment: advisor.enter: must be in (0, 1]" in capsys.readouterr().err
    monkeypatch.delenv("EDGEWATCH_ADVISOR_ENTER")
    path.write_text('[metrics]\nlisten = "nowhere"\n')  # a check of check-config's own, not the analytics'
    assert main(["check-config", str(path)]) == 2
    assert f"configuration error: {path}: metrics.listen:" in capsys.readouterr().err


# -- settings that load but cannot work: check-config (and run, which applies the same checks) names them -----


@pytest.mark.parametrize(
    "text, named",
    [
        ('[mqtt]\nsensors_prefix = ""\n', "mqtt.sensors_prefix: empty"),
        ('[mqtt]\nsensors_prefix = "sensors/#"\n', "mqtt.sensors_prefix: 'sensors/#' contains an MQTT wildcard"),
        ('[mqtt]\nmarket_prefix = "market/+/x"\n', "mqtt.market_prefix: 'market/+/x' contains an MQTT wildcard"),
        ('[mqtt]\nnews_prefix = "/news"\n', "mqtt.news_prefix: '/news' starts or ends with '/'"),
        ('[mqtt]\noutput_prefix = "edgewatch/"\n', "mqtt.output_prefix: 'edgewatch/' starts or ends with '/'"),
        ('[mqtt]\nportfolio_prefix = "$SYS"\n', "mqtt.portfolio_prefix: '$SYS' starts with '$'"),
        ('[mqtt]\noutput_prefix = "sensors"\n', "mqtt.output_prefix: 'sensors' overlaps mqtt.sensors_prefix"),
        ('[mqtt]\nnews_prefix = "sensors/news"\n', "mqtt.news_prefix: 'sensors/news' overlaps mqtt.sensors_prefix"),
        ('[mqtt]\nsensors_prefix = "plant"\nmarket_prefix = "plant/market"\n',
         "mqtt.market_prefix: 'plant/market' overlaps mqtt.sensors_prefix"),
    ],
)
def test_topic_prefixes_that_cannot_work_are_refused(capsys, tmp_path, text, named):
    rc, out, err = check(capsys, write(tmp_path, text))
    assert (rc, out) == (2, "") and named in err and len(err.strip().splitlines()) == 1


def test_prefixes_that_only_share_a_beginning_are_fine(capsys, tmp_path):
    rc, _, err = check(capsys, write(tmp_path, '[mqtt]\nsensors_prefix = "plant/sensors"\n'
                                               'market_prefix = "plant/sensors2"\noutput_prefix = "a/b/c"\n'))
    assert rc == 0, err


@pytest.mark.parametrize(
    "text, named",
    [
        ("[mqtt]\nmax_payload = 0\n", "mqtt.max_payload: must be in [1, 268435455], got 0"),
        ("[mqtt]\nreceive_maximum = 0\n", "mqtt.receive_maximum: must be in [1, 65535], got 0"),
        ("[mqtt]\nreceive_maximum = 70000\n", "mqtt.receive_maximum: must be in [1, 65535]"),
        ("[mqtt]\nkeepalive = 0\n", "mqtt.keepalive: must be in [1, 65535], got 0"),
        ("[mqtt]\nsession_expiry = 0\n", "mqtt.session_expiry: must be in [1, 4294967295], got 0"),
        ("[mqtt]\nreconnect_min_delay = 0\n", "mqtt.reconnect_min_delay: must be in [0.01, 1000000000]"),
        ("[store]\nbatch_size = -5\n", "store.batch_size: must be at least 1"),
        ("[store]\nretention_interval = 0\n", "store.retention_interval: must be in [0.01, 1000000000]"),
        ("[sidecar]\ntimeout = 0\n", "sidecar.timeout: must be in (0, 1000000000]"),
        ("[health]\nsweep_interval = 0\n", "health.sweep_interval: must be in [0.01, 1000000000]"),
        ("[maintenance]\nclear_readings = 0\n", "maintenance.clear_readings: must be at least 1"),
        ("[market]\nbar_interval = 0\n", "market.bar_interval: must be in [0.001, 1000000000]"),
        ("[market]\nprice_alert_horizon_multiple = 0\n", "market.price_alert_horizon_multiple: must be positive"),
        ("[market]\nprice_alert_horizon = -60\n", "market.price_alert_horizon: must not be negative"),
        ("[risk]\ncheck_interval = 0\n", "risk.check_interval: must be in [0.01, 1000000000]"),
        ("[risk]\nmax_drawdown = 0\n", "risk.max_drawdown: must be positive"),
        ("[news]\nbatch_size = 0\n", "news.batch_size: must be at least 1"),
        ("[news]\ntimeout = 0\n", "news.timeout: must be in (0, 1000000000]"),
    ],
)
def test_zero_or_negative_limits_are_refused(capsys, tmp_path, text, named):
    rc, out, err = check(capsys, write(tmp_path, text))
    assert (rc, out) == (2, "") and named in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "text, named",
    [
        # anomaly scores run from 0 to 1: a threshold of 5 would turn detection off without a word
        ("[anomaly]\nthreshold = 5.0\n", "anomaly.threshold: must be in (0, 1], got 5.0"),
        ("[anomaly]\nthreshold = 0\n", "anomaly.threshold: must be in (0, 1]"),
        ("[anomaly]\ncritical = 1.5\n", "anomaly.critical: must be in (0, 1]"),
        ("[anomaly]\nthreshold = 0.9\ncritical = 0.5\n", "anomaly.threshold: must be at most anomaly.critical (0.5)"),
        ("[anomaly]\ntail_floor = 1.0\n", "anomaly.tail_floor: must be in (0, 1)"),
        # a profile is 9 bytes a bucket and series: a typo of a few zeros must not allocate gigabytes at start
        ("[anomaly]\nseason_buckets = 1000000\n", "anomaly.season_buckets: must be in [1, 10080]"),
        ("[anomaly]\nseason_days = 30\n", "anomaly.season_days: must be in [1, 7]"),
        ("[anomaly]\ntimezone = \"Europe/Nowhere\"\n", "anomaly.timezone: no time zone 'Europe/Nowhere' in this system"),
        ("[anomaly]\ntimezone = \"../etc/passwd\"\n", "anomaly.timezone: no time zone '../etc/passwd'"),
        ("[anomaly]\nshort_span = 3000\n", "anomaly.short_span: must be below anomaly.long_span (2000)"),
        ("[health]\nanomaly_score = 2\n", "health.anomaly_score: must be in (0, 1]"),
        ("[health]\nlow_battery = 150\n", "health.low_battery: must be in [0, 100]"),
        ("[health]\nfast_span = 3000\n", "health.fast_span: must be below health.baseline_span (2000)"),
        ("[maintenance]\nout_of_range_rate = 3\n", "maintenance.out_of_range_rate: must be in (0, 1]"),
        ("[risk]\nmax_concentration = 7\n", "risk.max_concentration: must be in (0, 1], got 7.0"),
        ("[risk]\nmax_concentration = 0\n", "risk.max_concentration: must be in (0, 1]"),
        ("[risk]\nrearm_fraction = 1\n", "risk.rearm_fraction: must be in [0, 1)"),
        ("[market]\nfast_span = 40\n", "market.fast_span: must be below market.slow_span (30), got 40"),
        ("[market]\nfast_span = 30\n", "market.fast_span: must be below market.slow_span (30), got 30"),
        ("[market]\nvol_span = 500\n", "market.vol_span: must be below market.vol_long_span (300)"),
        ("[market]\ncalm_ratio = 2\n", "market.calm_ratio: must be below market.volatile_ratio (1.5)"),
        ("[market]\nnews_min_score = 1.5\n", "market.news_min_score: must be in [0, 1]"),
        ("[mqtt]\nreconnect_min_delay = 60\n", "mqtt.reconnect_min_delay: must be at most mqtt.reconnect_max_delay"),
    ],
)
def test_senseless_analytics_settings_are_refused(capsys, tmp_path, text, named):
    rc, out, err = check(capsys, write(tmp_path, text))
    assert (rc, out) == (2, "") and named in err and len(err.strip().splitlines()) == 1


def test_ranges_apply_to_environment_overrides_too():
    with pytest.raises(ConfigError, match="environment: anomaly.threshold: must be in"):
        config.load(environ={"EDGEWATCH_ANOMALY_THRESHOLD": "5"})
    with pytest.raises(ConfigError, match="mqtt.output_prefix: 'sensors' overlaps"):
        config.load(environ={"EDGEWATCH_MQTT_OUTPUT_PREFIX": "sensors"})


def test_the_shipped_example_configuration_passes(capsys):
    rc, _, err = check(capsys, str(REPO / "deploy" / "agent.toml"))
    assert rc == 0, err


@pytest.mark.parametrize(
    "content, named",
    [
        (b"\xff\xfe[mqtt]\n", "not UTF-8 text (invalid byte at offset 0)"),
        (b"[mqtt]\nhost = \"caf\xe9\"\n", "not UTF-8 text (invalid byte at offset 18)"),
        (b"#" * (2 * 1024 * 1024), "larger than 1024 KiB"),
    ],
)
def test_check_config_of_a_file_that_is_not_toml_text(capsys, tmp_path, content, named):
    path = tmp_path / "agent.toml"
    path.write_bytes(content)
    rc, out, err = check(capsys, str(path))
    assert (rc, out) == (2, "") and f"{path}: {named}" in err and len(err.strip().splitlines()) == 1


def test_check_config_of_a_directory(capsys, tmp_path):
    rc, out, err = check(capsys, str(tmp_path))
    assert (rc, out) == (2, "") and f"{tmp_path}: is a directory" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "url, advice",
    [
        ("postgresql+psycopg2://agent@db/edgewatch",
         "the psycopg2 database driver is not installed: pip install 'edgewatch[postgres]' and name its driver"),
        ("postgresql+pg8000://agent@db/edgewatch", "the pg8000 database driver is not installed"),
    ],
)
def test_a_postgresql_url_without_its_driver_names_the_extra(capsys, tmp_path, url, advice):
    rc, out, err = check(capsys, write(tmp_path, f'[store]\nurl = "{url}"\n'))
    assert (rc, out) == (2, "") and f"store.url: {advice}" in err and len(err.strip().splitlines()) == 1


def test_without_the_postgres_extra_every_command_says_what_to_install(capsys, tmp_path, monkeypatch):
    """psycopg (what the postgres extra installs) absent: exit 2 and the pip line, from every command."""
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` now fails as if it were not installed
    url = "postgresql+psycopg://agent@127.0.0.1/edgewatch"
    path = write(tmp_path, f'[store]\nurl = "{url}"\n')
    expected = "store.url: the psycopg database driver is not installed: pip install 'edgewatch[postgres]'"
    for argv in (["check-config", path], ["events", "--db", url], ["deadletters", "--config", path],
                 ["replay", str(tmp_path), "--db", url], ["run", "--config", path]):
        rc = main(argv)
        out, err = capsys.readouterr()
        assert rc == 2 and err.strip().endswith(expected) and len(err.strip().splitlines()) == 1, (argv, err)
    assert main(["doctor", "--config", path]) == 2
    assert expected in capsys.readouterr().out


# -- secret files that others can read -------------------------------------------------------------------------


def _secret_config(tmp_path, mode: int, gid: int | None = None) -> tuple[str, str]:
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret\n")
    if gid is not None:
        os.chown(secret, -1, gid)
    secret.chmod(mode)
    return write(tmp_path, f'[mqtt]\nusername = "agent"\npassword_file = "{secret}"\n'), str(secret)


@pytest.mark.parametrize("mode", [0o644, 0o604])
def test_a_world_readable_password_file_gets_a_warning(capsys, tmp_path, mode):
    path, secret = _secret_config(tmp_path, mode)
    rc, out, err = check(capsys, path)
    assert rc == 0 and out.startswith("ok: ")
    assert err.strip() == (f"edge-agent check-config: warning: mqtt.password_file: {secret} is readable by everyone "
                           f"(mode {mode:04o}): chmod 0600 {secret} (or 0640 with group edgewatch)")


def test_a_private_password_file_gets_no_warning(capsys, tmp_path):
    for mode, gid in ((0o600, None), (0o640, os.getegid())):  # the service's own group may read it
        rc, _, err = check(capsys, _secret_config(tmp_path, mode, gid)[0])
        assert (rc, err) == (0, "")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file to another group")
def test_a_password_file_readable_by_another_group_gets_a_warning(capsys, tmp_path):
    other = next(g for g in (65534, 1, 2, 3) if g != os.getegid())
    path, secret = _secret_config(tmp_path, 0o640, other)
    rc, _, err = check(capsys, path)
    assert rc == 0 and f"mqtt.password_file: {secret} is readable by group " in err and "(mode 0640)" in err


def test_key_files_are_checked_too(capsys, tmp_path):
    key = tmp_path / "client.key"
    key.write_text("key")
    key.chmod(0o644)
    api = tmp_path / "api-key"
    api.write_text("k")
    api.chmod(0o666)
    rc, _, err = check(capsys, write(tmp_path, f'[mqtt]\nkey_file = "{key}"\n[sidecar]\napi_key_file = "{api}"\n'))
    lines = err.strip().splitlines()
    assert rc == 0 and len(lines) == 2
    assert f"mqtt.key_file: {key} is readable by everyone" in lines[0]
    assert f"sidecar.api_key_file: {api} is readable by everyone" in lines[1]


# -- what check-config accepts, run can use: one line naming the key, exit 2, from both -------------------------


def check_and_run(capsys, path: str, monkeypatch) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) of `check-config PATH` and of `run --config PATH` (refused before it starts)."""
    from edgewatch.agent.commands import run as run_command

    def started(*_args, **_kwargs):
        raise AssertionError(f"edge-agent run started an agent with {path}")

    monkeypatch.setattr(run_command, "Service", started)
    results = []
    for argv in (["check-config", path], ["run", "--config", path]):
        rc = main(argv)
        results.append((rc, *capsys.readouterr()))
    return results


@pytest.mark.parametrize("url", [":memory:", "sqlite://", "sqlite:///", "sqlite:///:memory:",
                                 "sqlite+pysqlite:///:memory:", "sqlite:///file::memory:?uri=true",
                                 "sqlite:///file:events?mode=memory&cache=shared&uri=true"])
def test_an_in_memory_event_log_is_refused(capsys, tmp_path, monkeypatch, url):
    """Each connection to it would be a fresh, empty database without tables: every event would be lost."""
    path = write(tmp_path, f'[store]\nurl = "{url}"\n')
    for rc, out, err in check_and_run(capsys, path, monkeypatch):
        assert (rc, out) == (2, "") and f"store.url: {url!r} is an in-memory database" in err, err
        assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "text, named",
    [
        # MQTT's own field sizes: a Session Expiry Interval of four bytes, a Keep Alive of two, strings of 65535 bytes
        ("[mqtt]\nsession_expiry = 4294967296\n", "mqtt.session_expiry: must be in [1, 4294967295], got 4294967296"),
        ("[mqtt]\nkeepalive = 65536\n", "mqtt.keepalive: must be in [1, 65535], got 65536"),
        ('[mqtt]\nclient_id = "' + "é" * 32768 + '"\n', "mqtt.client_id: 65536 bytes of UTF-8, at most 65535"),
        ('[mqtt]\nclient_id = "agent\\u0000x"\n', "mqtt.client_id: holds NUL"),
        # spans of time that overflow datetime or csp arithmetic, or are too short to mean anything
        ("[drift]\nblock = 1e12\n", "drift.block: must be 0 (off) or in [1, 1000000000], got 1000000000000.0"),
        ("[drift]\nblock = 1e-300\n", "drift.block: must be 0 (off) or in [1, 1000000000]"),
        ("[drift]\nwarmup = 4611686018427387904\n", "drift.warmup: must be in [0, 10000]"),
        ("[market]\nsession_gap = 1e12\n", "market.session_gap: must be in [0.001, 1000000000]"),
        ("[market]\nbar_interval = 1e-300\n", "market.bar_interval: must be in [0.001, 1000000000]"),
        ("[market]\nbar_interval = 1e12\n", "market.bar_interval: must be in [0.001, 1000000000]"),
        ("[market]\nsignal_cooldown = 1e300\n", "market.signal_cooldown: must be in [0, 1000000000]"),
        ("[health]\ninterval = 1e12\n", "health.interval: must be in (0, 1000000000]"),
        ("[health]\nstale_min = 1e300\n", "health.stale_min: must be in (0, 1000000000]"),
        ("[store]\nretention_days = 1e6\n", "store.retention_days: must be in [0, 36500]"),
        ("[record]\nwarm_start = 1e12\n", "record.warm_start: must be in [0, 1000000000]"),
        ("[news]\ntimeout = 1e12\n", "news.timeout: must be in (0, 1000000000]"),
        # timers: at 1e-6 s the engine spins at 100 % CPU and a stop waits behind its alarms
        ("[risk]\ncheck_interval = 1e-6\n", "risk.check_interval: must be in [0.01, 1000000000], got 1e-06"),
        ("[health]\nsweep_interval = 1e-6\n", "health.sweep_interval: must be in [0.01, 1000000000]"),
        ("[state]\nsnapshot_interval = 1e-6\n", "state.snapshot_interval: must be 0 (off) or in [1, 1000000000]"),
        ("[mqtt]\nreconnect_max_delay = 1e-6\n", "mqtt.reconnect_max_delay: must be in [0.01, 1000000000]"),
        # the change channel: log(erfc(change_z / sqrt 2)) must be finite and not 0; its ring is allocated up front
        ("[anomaly]\nchange_z = 40\n", "anomaly.change_z: must be in [0.1, 30], got 40.0"),
        ("[anomaly]\nchange_z = 1e-300\n", "anomaly.change_z: must be in [0.1, 30]"),
        ("[anomaly]\nchange_window = 3000000000\n", "anomaly.change_window: must be in [0, 86400]"),
        ("[anomaly]\nchange_hold = 1e200\n", "anomaly.change_hold: must be in [0, 1000]"),
        ('[anomaly.groups.pumps]\nsensors = ["a/#"]\nchange_z = 40\n',
         "anomaly.groups.pumps.change_z: must be in [0.1, 30]"),
        # TOML's integers are 64-bit: a larger one is no count the engine can hold
        ("[anomaly]\nwarmup = 9223372036854775808\n", "anomaly.warmup: must be at most 9223372036854775807"),
    ],
)
def test_values_run_cannot_use_are_refused_by_check_config_and_run(capsys, tmp_path, monkeypatch, text, named):
    path = write(tmp_path, text)
    for rc, out, err in check_and_run(capsys, path, monkeypatch):
        assert (rc, out) == (2, "") and f"{path}: {named}" in err and len(err.strip().splitlines()) == 1, err


def test_the_ends_of_the_new_ranges_are_accepted(capsys, tmp_path):
    path = write(tmp_path, "[mqtt]\nsession_expiry = 4294967295\nkeepalive = 65535\nreconnect_min_delay = 0.01\n"
                           '[state]\nsnapshot_interval = 0\n[drift]\nblock = 0\n'
                           "[anomaly]\nchange_window = 86400\nchange_z = 30\nchange_hold = 0\n"
                           "[health]\ninterval = 1e9\n[market]\nbar_interval = 0.001\n[risk]\ncheck_interval = 0.01\n")
    rc, out, err = check(capsys, path)
    assert rc == 0 and out.startswith("ok: "), err


@pytest.mark.parametrize(
    "text, named",
    [
        ("a = " + "[" * 2000 + "]" * 2000 + "\n", "invalid TOML: nested too deeply"),
        ("a = " + "{b = " * 2000 + "1" + "}" * 2000 + "\n", "invalid TOML: nested too deeply"),
        ("[mqtt]\nport = " + "1" * 5000 + "\n", "invalid TOML: a value too large to read"),
    ],
)
def test_a_file_python_cannot_parse_is_one_line_naming_it(capsys, tmp_path, monkeypatch, text, named):
    """Not a traceback of thousands of lines (RecursionError) and exit 1: exit 2 and the file's name."""
    path = write(tmp_path, text)
    for rc, out, err in check_and_run(capsys, path, monkeypatch):
        assert (rc, out) == (2, "") and f"{path}: {named}" in err and len(err.strip().splitlines()) == 1, err


def test_a_fifo_is_refused_without_blocking(capsys, tmp_path):
    fifo = tmp_path / "agent.toml"
    os.mkfifo(fifo)
    rc, _, err = check(capsys, str(fifo))
    assert rc == 2 and f"{fifo}: not a regular file" in err


def test_a_byte_order_mark_before_the_toml_is_skipped(capsys, tmp_path):
    path = tmp_path / "agent.toml"
    path.write_bytes(b"\xef\xbb\xbf[mqtt]\nport = 1884\n")
    assert config.load(path, environ={}).mqtt.port == 1884
    rc, out, _ = check(capsys, str(path))
    assert rc == 0 and out.startswith("ok: ")


# -- SIGHUP: the checks of a start, before anything applies -----------------------------------------------------


class _Log:
    def __init__(self):
        self.lines: list[tuple[str, dict]] = []

    def _add(self, event: str, **fields) -> None:
        self.lines.append((event, fields))

    error = warning = info = _add


def _running(path: str, monkeypatch) -> tuple[object, _Log]:
    """A Service as far as its reload goes (its config, its file, a notifier without systemd), logging to a list."""
    from edgewatch.agent.commands import run as run_command
    from edgewatch.common.notify import Notifier

    recorded = _Log()
    monkeypatch.setattr(run_command, "log", recorded)
    monkeypatch.setattr(run_command.logs, "setup", lambda *args: None)
    service = run_command.Service.__new__(run_command.Service)
    service.cfg, service.config_path, service.notifier = config.load(path, environ={}), path, Notifier(environ={})
    return service, recorded


@pytest.mark.parametrize(
    "text, named",
    [
        # the advisor's weights and gates are live keys: what check-config refuses must not become live either
        ("[advisor]\nsignal_weight = 0\nnews_weight = 0\n", "advisor.signal_weight: signal_weight + news_weight"),
        ("[advisor]\nenter = 5\n", "advisor.enter: must be in (0, 1]"),
        ("[advisor]\nmin_headroom = 3\n", "advisor.min_headroom: must be in [0, 1)"),
        ("[market]\nprice_alert_min_move = 0.05\n", "market.price_alert_min_move: must be below"),
        ('[store]\nurl = ":memory:"\n', "store.url: ':memory:' is an in-memory database"),
        ("[anomaly]\nchange_z = 40\n", "anomaly.change_z: must be in [0.1, 30]"),
        ("a = " + "[" * 2000 + "]" * 2000 + "\n", "invalid TOML: nested too deeply"),
        ("[nonsense]\nx = 1\n", "unknown section [nonsense]"),
    ],
)
def test_a_reload_rejects_what_a_start_would_refuse_and_changes_nothing(tmp_path, monkeypatch, text, named):
    path = write(tmp_path, "[advisor]\nenter = 0.5\n")
    service, recorded = _running(path, monkeypatch)
    before = dataclasses.replace(service.cfg, advisor=dataclasses.replace(service.cfg.advisor))
    write(tmp_path, text)
    service.reload()  # returns: the agent keeps running
    assert service.cfg == before
    [(event, fields)] = recorded.lines
    assert event == "reload_rejected" and named in fields["error"], fields


def test_a_good_reload_applies_the_live_keys(tmp_path, monkeypatch):
    path = write(tmp_path, "[advisor]\nenter = 0.5\n")
    service, recorded = _running(path, monkeypatch)
    write(tmp_path, "[advisor]\nenter = 0.6\nmin_headroom = 0.2\n")
    service.reload()
    assert (service.cfg.advisor.enter, service.cfg.advisor.min_headroom) == (0.6, 0.2)
    [(event, fields)] = recorded.lines
    assert event == "config_reloaded" and {"advisor.enter", "advisor.min_headroom"} <= set(fields["applied"])
