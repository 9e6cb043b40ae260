"""Operators' labels on events (`edge-agent label`, `labels`) and `calibrate --labels`, which weighs stricter
settings against them."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pytest
from edgewatch.agent import config
from edgewatch.agent.cli import main
from edgewatch.agent.commands.calibrate import calibrate
from edgewatch.agent.commands.replay import replay
from edgewatch.agent.eventlog.store import Store
from edgewatch.agent.records import make_event

from tests.agent.test_calibrate import GROUPS, T0, bursty_counters
from tests.agent.test_replay import EPOCH, write_capture


def test_a_label_names_an_event_replaces_the_last_and_outlives_the_event(url):
    store = Store(url)
    first, second = (make_event("anomaly", "pump/p1", T0 + timedelta(minutes=m), "warning", "x", {"score": 0.9})
                     for m in (1, 2))
    health = make_event("health", "pump/p1", T0 + timedelta(minutes=3), "info", "ok", {})
    logged = store.write(events=[first, second, health])
    by_id = {e["event_id"]: e["id"] for e in logged}

    row = store.label(str(by_id[first.event_id]), "false", "a door slammed")  # by the id `events` shows
    assert (row["event_id"], row["label"], row["note"]) == (first.event_id, "false", "a door slammed")
    store.label(second.event_id, "real")  # or by its event_id
    store.label(health.event_id, "real")
    store.label(second.event_id, "false")  # a new verdict replaces the old
    store.label(health.event_id, None)  # and none takes it off
    assert store.label("999999", "real") is None and store.label("f" * 24, "real") is None

    got = store.labels(kinds=["anomaly"])
    assert [(g["event_id"], g["label"], g["key"]) for g in got] == [(first.event_id, "false", "pump/p1"),
                                                                    (second.event_id, "false", "pump/p1")]
    assert got[0]["ts"].startswith("2026-01-05T00:01:00") and got[0]["note"] == "a door slammed"
    assert [g["event_id"] for g in store.labels(since=T0 + timedelta(minutes=2))] == [second.event_id]
    assert store.labels(kinds=["health"]) == []

    store.apply_retention(0, 1)  # retention deletes the events; their labels stay, with what they need
    assert [e["event_id"] for e in store.events()] == [health.event_id]
    assert [g["event_id"] for g in store.labels()] == [first.event_id, second.event_id]
    store.close()


def test_label_command_labels_by_the_shown_id_and_refuses_what_it_cannot_find(tmp_path, capsys):
    db = tmp_path / "events.db"
    store = Store(str(db))
    event = make_event("anomaly", "pump/p1", T0, "warning", "x", {"score": 0.9})
    (logged,) = store.write(events=[event])
    store.close()

    assert main(["label", str(logged["id"]), "real", "--note", "bearing", "--db", str(db)]) == 0
    assert capsys.readouterr().out == f"event {logged['id']} (anomaly pump/p1 at {logged['ts']}): labelled real\n"
    assert main(["labels", "--db", str(db), "--format", "json"]) == 0
    (listed,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (listed["event_id"], listed["label"], listed["note"]) == (event.event_id, "real", "bearing")

    assert main(["label", "77", "false", "--db", str(db)]) == 2
    assert capsys.readouterr().err == (f"edge-agent label: 77: no such event in {db} "
                                       "(give the id `edge-agent events` shows)\n")
    assert main(["label", "1", "false", "--db", str(tmp_path / "nothing.db")]) == 2  # a label never starts a log
    assert "nothing.db: no event log there" in capsys.readouterr().err and not (tmp_path / "nothing.db").exists()
    with pytest.raises(SystemExit) as usage:
        main(["label", "1", "maybe", "--db", str(db)])
    assert usage.value.code == 2 and "invalid choice: 'maybe'" in capsys.readouterr().err
    assert main(["label", str(logged["id"]), "none", "--db", str(db)]) == 0
    assert capsys.readouterr().out.endswith("label taken off\n")
    assert main(["labels", "--db", str(db)]) == 0 and "no labels match" in capsys.readouterr().err


def test_calibrate_counts_an_alarm_labelled_real_as_a_finding_and_shows_what_each_step_keeps(tmp_path, capsys):
    """Door counters (bursty: false alarms) and a pump whose bearing runs 8 sigma hot for ten minutes, replayed into
    the log; an operator labels the pump's alarm real and the counters' false. Calibrate then counts only the
    counters' alarms against the budget, and each step says how many of the labelled alarms it still raises."""
    bursty_counters(tmp_path / "doors", hours=1.0)
    rng = np.random.default_rng(5)
    msgs = []
    for i in range(3600):
        t = T0 + timedelta(seconds=i)
        fault = 8 * 0.2 if 2400 <= i < 3000 else 0.0
        msgs.append((t, "sensors/doors/pump", json.dumps({"ts": (t - EPOCH).total_seconds(),
                                                          "bearing": 40 + rng.normal(0, 0.2) + fault})))
    write_capture(tmp_path / "pump", msgs)
    (tmp_path / "agent.toml").write_text(GROUPS)
    cfg = config.load(tmp_path / "agent.toml", environ={})
    db = str(tmp_path / "events.db")
    captures = [str(tmp_path / "doors"), str(tmp_path / "pump")]
    replay(captures, cfg, db)
    store = Store(db)
    alarms = [e for e in store.events(kinds=["anomaly"]) if e["key"].startswith("doors/")]
    pump = [e for e in alarms if e["key"] == "doors/pump"]
    assert pump and pump[0]["ts"].startswith("2026-01-05T00:40:0")  # found within seconds of the fault
    for e in alarms:
        store.label(str(e["id"]), "real" if e["key"] == "doors/pump" else "false")
    labels = store.labels(kinds=["anomaly"])
    store.close()

    plain = calibrate(captures, cfg, "doors", budget=1.0)
    rep = calibrate(captures, cfg, "doors", budget=1.0, labels=labels)
    assert rep["labels"] == {"given": len(alarms), "real": len(pump), "false": len(alarms) - len(pump)}
    first, last = rep["steps"][0], rep["steps"][-1]
    # the settings as they are raise every labelled alarm again (the replay was the live run); the pump's are no
    # false alarms, so the rate is the counters' alone
    assert (first["real_raised"], first["false_raised"]) == (len(pump), len(alarms) - len(pump))
    assert first["alarms"] == plain["steps"][0]["alarms"] == len(alarms)
    assert first["per_sensor_hour"] * rep["sensor_hours"] == pytest.approx(len(alarms) - len(pump), abs=0.01)
    assert first["per_sensor_hour"] < plain["steps"][0]["per_sensor_hour"]
    # the strictest step still finds the bearing and drops most of the counters' false alarms
    assert last["real_raised"] == len(pump) and last["false_raised"] < first["false_raised"] / 2

    assert main(["calibrate", *captures, "--config", str(tmp_path / "agent.toml"), "--group", "doors",
                 "--labels", "--db", db]) == 0
    text = capsys.readouterr().out
    assert f"({len(alarms)} labels in the log, {len(pump)} real and {len(alarms) - len(pump)} false" in text
    assert f"{len(pump)} of {len(pump)}" in text.splitlines()[2]
