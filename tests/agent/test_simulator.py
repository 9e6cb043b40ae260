"""The fault simulator: deterministic, valid messages (docs/reference/topics.md), faults where the ground truth says;
and `edge-agent simulate` against a real broker."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from edgewatch.agent.cli import main
from edgewatch.agent.config import Config
from edgewatch.agent.ingest.validate import Parsed, parse
from edgewatch.agent.testing.plugin import subscribe_collect
from edgewatch.agent.testing.simulator import (
    HEADLINES,
    SENSOR_FAULTS,
    SimConfig,
    Simulator,
)

T0 = datetime(2026, 3, 2, 8, 0)


def sim(**kw) -> Simulator:
    base = dict(sensors=14, symbols=2, duration=400, seed=7, fault_fraction=1.0)
    return Simulator(SimConfig(**{**base, **kw}), T0)


def test_same_seed_same_messages_and_faults_other_seed_differs():
    a, b, c = sim(), sim(), sim(seed=8)
    ma = list(a.messages())
    assert ma == list(b.messages()) and a.faults == b.faults
    assert ma != list(c.messages())
    assert [m.ts for m in ma] == sorted(m.ts for m in ma)


def test_every_message_is_a_valid_spec_input():
    cfg = Config()
    kinds = set()
    for m in sim(duration=250).messages():
        got = parse(m.topic, json.dumps(m.payload).encode(), m.ts, cfg)
        assert isinstance(got, Parsed), (m, got)
        assert got.record.ts == m.ts
        kinds.add(got.kind)
    assert kinds == {"sensor", "trade", "quote", "position", "pnl", "news"}


def test_faults_follow_the_ground_truth():
    s = sim()
    assert sorted({f.kind for f in s.faults}) == sorted(SENSOR_FAULTS)  # every kind dealt in turn
    msgs = [m for m in s.messages() if m.topic.startswith("sensors/")]
    for f in s.faults:
        assert T0 + timedelta(seconds=150) <= f.start < f.end <= T0 + timedelta(seconds=400)
        inside = [m.payload for m in msgs if m.topic == f"sensors/{f.key}" and f.start <= m.ts < f.end]
        if f.kind == "dropout":
            assert inside == []
        elif f.kind == "stuck":
            assert len({(p["temperature"], p["humidity"], p["pressure"]) for p in inside}) == 1
        elif f.kind == "out_of_range":
            assert any(p[f.metric] in (-127.0, 255.0, 0.0) for p in inside)
        elif f.kind == "battery":
            assert inside[-1]["battery"] < 15 and inside[-1].get("status") == "low_battery"


def test_headlines_name_their_symbol_and_price_jumps_are_recorded():
    s = sim(sensors=0, symbols=3, duration=600, jump_rate=0.01)
    msgs = list(s.messages())
    news = [m.payload for m in msgs if m.topic.startswith("news/")]
    assert news and all(p["symbols"][0] in p["headline"] for p in news)
    assert len({p["id"] for p in news}) == len(news)
    assert len(HEADLINES) >= 10
    jumps = s.jump_faults()
    assert jumps and all(f.reason == "price_alert" for f in jumps)


def test_simulate_publishes_to_a_real_broker(mosquitto, capsys):
    with subscribe_collect(mosquitto, "#") as got:
        rc = main(["simulate", "--broker", f"{mosquitto.host}:{mosquitto.port}", "--sensors", "3", "--symbols", "1",
                   "--rate", "5", "--duration", "2s"])
        assert rc == 0
        got.wait(30, timeout=10)
    topics = {t for t, _ in got}
    assert {"sensors/site0/sensor00000", "market/AAPL/trade", "portfolio/pnl"} <= topics
    assert "published" in capsys.readouterr().err


def test_simulate_says_when_its_faults_need_a_longer_run(mosquitto, capsys):
    """The README's command must inject faults: a run too short for any says how long it needs, on stderr, and
    stdout holds nothing but the fault schedule's JSON lines."""
    broker = f"{mosquitto.host}:{mosquitto.port}"
    assert main(["simulate", "--broker", broker, "--sensors", "2", "--symbols", "0", "--faults", "--duration", "2s"]) == 0
    out, err = capsys.readouterr()
    assert "--faults: a fault starts after 150 readings" in err and "give --duration 6m or more" in err
    assert all(json.loads(line)["fault"] for line in out.splitlines())
    full = Simulator(SimConfig(sensors=20, symbols=0, duration=6 * 60), T0)  # the duration it asks for
    assert len(full.faults) >= 5 and all(f.start >= T0 + timedelta(seconds=150) for f in full.faults)


@pytest.mark.parametrize("argv", [["--broker", "nohost"], ["--duration", "soon"], ["--rate", "0"]])
def test_simulate_usage_errors_exit_2(argv, capsys):
    assert main(["simulate", *argv]) == 2
    assert "simulate" in capsys.readouterr().err


def test_simulate_unreachable_broker_exits_1(capsys):
    from edgewatch.common.ports import free_port

    assert main(["simulate", "--broker", f"127.0.0.1:{free_port()}", "--duration", "1s"]) == 1
    assert "cannot reach broker" in capsys.readouterr().err
