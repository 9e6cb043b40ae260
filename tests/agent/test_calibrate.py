"""`edge-agent calibrate`: the alarms recorded normal operation raises at each step toward stricter settings,
counted as the live agent would raise them, and the least strict step within an alarm budget."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import numpy as np
import pytest
from edgewatch.agent import config
from edgewatch.agent.cli import main
from edgewatch.agent.commands.calibrate import calibrate, ladder, table_batches
from edgewatch.agent.commands.replay import replay
from edgewatch.agent.commands.score import BATCH, InputError, TableFormat
from edgewatch.agent.eventlog.store import Store

from tests.agent.test_replay import EPOCH, write_capture

T0 = datetime(2026, 1, 5)
GROUPS = """
[anomaly.groups.doors]
sensors = ["doors/#"]
"""


def bursty_counters(path, hours: float = 2.0, tables=None) -> None:
    """Three door counters (negative binomial counts: bursty, the kind that alarms most) and two calm
    thermometers, one reading a second; with `tables` (a folder), the counters also as one CSV each."""
    rng = np.random.default_rng(3)
    msgs = []
    rows: dict[int, list[str]] = {s: ["timestamp,openings\n"] for s in range(3)}
    for i in range(int(hours * 3600)):
        t = T0 + timedelta(seconds=i)
        ts = (t - EPOCH).total_seconds()
        for s in range(3):
            count = int(rng.negative_binomial(2, 2 / (2 + 3.0)))
            msgs.append((t, f"sensors/doors/d{s}", json.dumps({"ts": ts, "openings": count})))
            rows[s].append(f"{t.isoformat()},{count}\n")
        for s in range(2):
            msgs.append((t, f"sensors/room{s}", json.dumps({"ts": ts, "temperature": 21 + rng.normal(0, 0.2)})))
    write_capture(path, msgs)
    if tables is not None:
        tables.mkdir()
        for s, lines in rows.items():
            (tables / f"d{s}.csv").write_text("".join(lines))


def load(tmp_path, text: str = GROUPS) -> config.Config:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return config.load(path, environ={})


def test_each_step_asks_for_rarer_evidence():
    steps = ladder(config.AnomalyConfig())
    assert [s.tail_floor for s in steps] == [1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9]
    assert [s.change_z for s in steps] == pytest.approx([3.4, 3.8, 4.2, 4.6, 5.0, 5.4])
    assert [s.spatial_z for s in steps] == [5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    assert [s.spike_z for s in steps] == [6.0, 7.0, 8.0, 9.0, 10.0, 11.0]
    assert {s.spike_z for s in ladder(config.AnomalyConfig(spike_z=0.0))} == {0.0}  # off stays off
    assert {s.threshold for s in steps} == {0.8}  # where events start stays; what a score means changes


def test_the_least_strict_step_within_the_budget_raises_what_the_agent_would(tmp_path):
    bursty_counters(tmp_path / "cap")
    cfg = load(tmp_path)
    rep = calibrate([str(tmp_path / "cap")], cfg, "doors", budget=1.0)
    assert rep["sensors"] == 3 and 5.99 < rep["sensor_hours"] <= 6.0 and rep["readings"] == 3 * 7200
    rates = [r["per_sensor_hour"] for r in rep["steps"]]
    assert rates == sorted(rates, reverse=True) and rates[0] > 5.0  # the defaults: several false alarms an hour
    chosen = rep["chosen"]
    assert chosen > 0 and rates[chosen] <= 1.0 < rates[chosen - 1]

    # the agent with the chosen step's settings for the group raises exactly the alarms counted for it
    step = rep["steps"][chosen]
    tuned = load(tmp_path, GROUPS + f"tail_floor = {step['tail_floor']}\nchange_z = {step['change_z']}\n"
                                    f"spatial_z = {step['spatial_z']}\nspike_z = {step['spike_z']}\n")
    replayed = replay([str(tmp_path / "cap")], tuned, str(tmp_path / "events.db"))
    doors = [e for e in Store(str(tmp_path / "events.db")).events(kinds=["anomaly"]) if e["key"].startswith("doors/")]
    assert len(doors) == step["alarms"] and replayed["accepted"] == {"sensor": 5 * 7200}

    # the thermometers outside the group (Gaussian noise) alarm far less: the settings as they are stay within 2
    rest = calibrate([str(tmp_path / "cap")], cfg, None, budget=2.0)
    assert rest["sensors"] == 2 and rest["chosen"] == 0 and rest["steps"][0]["per_sensor_hour"] < rates[0] / 5


def test_a_csv_export_is_one_sensor_and_counts_as_its_captured_readings_do(tmp_path, capsys):
    """The door counters as CSVs (as a historian would export them) raise, step for step, the alarms their
    captured readings raise."""
    bursty_counters(tmp_path / "cap", hours=1.0, tables=tmp_path / "csv")
    cfg = load(tmp_path)
    captured = calibrate([str(tmp_path / "cap")], cfg, "doors", budget=1.0)
    tables = [str(tmp_path / "csv" / f"d{s}.csv") for s in range(3)]
    exported = calibrate(tables, cfg, "doors", budget=1.0)
    assert exported["sensors"] == 3 and exported["readings"] == captured["readings"] == 3 * 3600
    assert exported["steps"] == captured["steps"] and exported["chosen"] == captured["chosen"] > 0
    assert exported["sensor_hours"] == captured["sensor_hours"]

    # read as it goes: an export need not fit in memory, and a bad row is named when it is reached
    late = tmp_path / "csv" / "late.csv"
    header, *rows = (tmp_path / "csv" / "d0.csv").read_text().splitlines(keepends=True)
    late.write_text(header + "".join(rows * 2) + "2026-01-05T02:00:00,lots\n")
    batches = table_batches(str(late))
    assert len(next(batches)) == BATCH < 2 * len(rows)
    with pytest.raises(InputError, match=f"^{late}: line {2 * len(rows) + 2}: openings is not a number"):
        list(batches)

    # a spreadsheet's export (semicolons, its own time column, an id column) with --time-column and --ignore
    semi = tmp_path / "semi.csv"
    semi.write_text("id;time;openings\n" + "".join(f"7;{r.replace(',', ';')}" for r in rows))
    alone = calibrate(tables[:1], cfg, "doors", budget=1.0)
    assert calibrate([str(semi)], cfg, "doors", budget=1.0, fmt=TableFormat("time", ("id",)))["steps"] == alone["steps"]
    assert main(["calibrate", str(semi), "--time-column", "time", "--ignore", "id", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["readings"] == len(rows)
    # one export of the three counters, a row per reading and a column naming its sensor: as the three files
    every = [(tmp_path / "csv" / f"d{s}.csv").read_text().splitlines()[1:] for s in range(3)]
    one = tmp_path / "doors.csv"
    one.write_text("timestamp,door,openings\n" + "".join(
        f"{t},door{s},{x}\n" for lines in zip(*every) for s, (t, x) in enumerate(r.split(",") for r in lines)))
    together = calibrate([str(one)], cfg, "doors", budget=1.0, fmt=TableFormat(sensor_column="door"))
    assert together["sensors"] == 3 and together["steps"] == exported["steps"]
    assert {r["sensor"] for r in together["loudest"]} == {"door0", "door1", "door2"}

    bad = tmp_path / "csv" / "bad.csv"
    bad.write_text("timestamp,openings\n2026-01-05T00:00:00,3\n2026-01-05T00:00:01,lots\n")
    assert main(["calibrate", tables[0], str(bad)]) == 2
    assert capsys.readouterr().err.strip() == f"edge-agent calibrate: {bad}: line 3: openings is not a number: 'lots'"


def test_the_loudest_sensors_are_named_so_they_can_get_a_group_of_their_own(tmp_path, capsys):
    """Without groups, the bursty door counters raise nearly every alarm of the fleet: calibrate lists them first."""
    bursty_counters(tmp_path / "cap", hours=1.0)
    rep = calibrate([str(tmp_path / "cap")], load(tmp_path, ""), None, budget=1.0)
    loudest = rep["loudest"]
    assert rep["sensors"] == 5 and {r["sensor"] for r in loudest[:3]} == {"doors/d0", "doors/d1", "doors/d2"}
    assert sum(r["alarms"] for r in loudest[:3]) > 0.8 * rep["steps"][0]["alarms"]
    assert [r["per_hour"] for r in loudest] == sorted((r["per_hour"] for r in loudest), reverse=True)
    assert main(["calibrate", str(tmp_path / "cap")]) == 0
    assert "loudest at the settings as they are (100% of all alarms): doors/d" in capsys.readouterr().out


def test_faults_injected_into_copies_show_what_stricter_settings_miss(tmp_path):
    bursty_counters(tmp_path / "cap", hours=1.0)
    cfg = load(tmp_path)
    plain = calibrate([str(tmp_path / "cap")], cfg, None, budget=1.0)
    rep = calibrate([str(tmp_path / "cap")], cfg, None, budget=1.0, faults=True)
    assert rep["faults"] == 2 and [r["alarms"] for r in rep["steps"]] == [r["alarms"] for r in plain["steps"]]
    first, last = rep["steps"][0], rep["steps"][-1]
    # the thermometers: at the settings as they are both faults are found in both; the strictest step finds neither
    assert (first["step_found"], first["spike_found"]) == (1.0, 1.0)
    assert (last["step_found"], last["spike_found"]) == (0.0, 0.0)


def test_calibrate_command_prints_the_settings_to_use_and_refuses_bad_input(tmp_path, capsys):
    bursty_counters(tmp_path / "cap", hours=1.0)
    (tmp_path / "agent.toml").write_text(GROUPS)
    args = ["calibrate", str(tmp_path / "cap"), "--config", str(tmp_path / "agent.toml"), "--group", "doors"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "3 sensors of [anomaly.groups.doors]" in text and "[anomaly.groups.doors]\ntail_floor = " in text
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["group"] == "doors"
    assert main([*args, "--faults"]) == 0
    assert "steps found spikes found" in capsys.readouterr().out

    assert main(["calibrate", str(tmp_path / "nothing")]) == 2
    assert "nothing: no such capture file, CSV or directory" in capsys.readouterr().err
    assert main([*args[:-1], "pumps"]) == 2
    assert "--group pumps: no [anomaly.groups.pumps] in the configuration (groups: doors)" in capsys.readouterr().err
    assert main([*args, "--budget", "0"]) == 2
    assert "--budget 0: must be above 0" in capsys.readouterr().err
    (tmp_path / "other.toml").write_text('[mqtt]\nsensors_prefix = "plant"\n')  # not the captures' prefix
    assert main(["calibrate", str(tmp_path / "cap"), "--config", str(tmp_path / "other.toml")]) == 2
    assert "no sensor readings in" in (err := capsys.readouterr().err) and "sensors prefix 'plant'" in err


@pytest.mark.parametrize("last, message", [
    ("3000-01-01T00:00:00,4\n", "line 4: timestamp '3000-01-01T00:00:00' is outside 1678-01-01 – 2261-12-31, "
                                "the times the engine can run"),
    ("0001-01-01T00:00:00+01:00,4\n", "line 4: timestamp '0001-01-01T00:00:00+01:00' is outside 1678-01-01 – "
                                      "2261-12-31, the times the engine can run"),
    ('2026-01-05T00:00:02,"' + "9" * (128 * 1024 + 1) + '"\n', "line 4: field larger than field limit (131072)"),
])
def test_a_csv_the_engine_cannot_take_exits_2_naming_the_file_and_line(tmp_path, capsys, last, message):
    bad = tmp_path / "far.csv"
    bad.write_text("timestamp,openings\n2026-01-05T00:00:00,3\n2026-01-05T00:00:01,5\n" + last)
    assert main(["calibrate", str(bad)]) == 2
    assert capsys.readouterr().err == f"edge-agent calibrate: {bad}: {message}\n"


def test_damaged_capture_lines_are_skipped_not_fatal(tmp_path):
    """Lines no engine can run (too deep to parse, a time past datetime's or csp's range) and a folder named like
    a capture file are left out: the readings around them are judged as without them."""
    bursty_counters(tmp_path / "cap", hours=0.25)
    cfg = load(tmp_path)
    clean = calibrate([str(tmp_path / "cap")], cfg, "doors")
    (capture,) = (tmp_path / "cap").glob("capture-*.jsonl")
    good = json.loads(capture.read_text().splitlines()[0])
    with capture.open("a") as f:
        f.write("[" * 100_000 + "\n")
        for when in ("1600-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "2300-01-01T00:00:00Z"):
            f.write(json.dumps({**good, "received_at": when}) + "\n")
    (tmp_path / "cap" / "capture-x.jsonl").mkdir()
    damaged = calibrate([str(tmp_path / "cap")], cfg, "doors")
    assert damaged["readings"] == clean["readings"] and damaged["steps"] == clean["steps"]
