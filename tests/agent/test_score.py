"""`edge-agent score`: one row per input row, exactly the live node's scores, clear errors."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from edgewatch.agent.analytics.anomaly import FUSED, Detector
from edgewatch.agent.cli import main
from edgewatch.agent.commands.score import read_series, score_series
from edgewatch.agent.config import AnomalyConfig
from edgewatch.agent.records import SensorReading

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2014, 7, 1)


def write(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("timestamp,value\n" + "".join(f"{t},{v}\n" for t, v in rows))
    return path


def series(n: int = 900) -> list[tuple[str, str]]:
    rows = [((T0 + timedelta(minutes=5 * i)).strftime("%Y-%m-%d %H:%M:%S"), str(10 + (i * 7919) % 13)) for i in range(n)]
    if n > 700:
        rows[700] = (rows[700][0], "400")
        rows[500] = rows[499]  # a repeated timestamp
        rows[600] = (rows[590][0], rows[600][1])  # a step back in time
    return rows


def test_one_row_per_input_row_equal_to_the_node(tmp_path):
    rows = series()
    out = tmp_path / "out.csv"
    assert main(["score", str(write(tmp_path / "in.csv", rows)), "--out", str(out)]) == 0
    got = list(csv.reader(out.open()))
    assert got[0] == ["timestamp", "value", "anomaly_score"]
    assert [(r[0], r[1]) for r in got[1:]] == rows
    scores = [float(r[2]) for r in got[1:]]
    assert all(0.0 <= s <= 1.0 for s in scores)
    # the same readings straight into the detector the node wraps
    readings = [
        SensorReading(sensor_id="score", ts=datetime.fromisoformat(t), metrics={"value": float(v)}, attrs={})
        for t, v in rows
    ]
    assert scores == [s.score for s in Detector(AnomalyConfig()).score_readings(readings)]
    assert scores[700] >= AnomalyConfig().threshold


def test_batching_does_not_change_scores(monkeypatch):
    data = [(T0 + timedelta(minutes=5 * i), float((i * 31) % 17)) for i in range(700)]
    whole = score_series(data, AnomalyConfig())
    monkeypatch.setattr("edgewatch.agent.commands.score.BATCH", 7)
    assert score_series(data, AnomalyConfig()) == whole


def test_stdout_and_config(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text("[anomaly]\nwarmup = 5\n")
    inp = write(tmp_path / "in.csv", series(50))
    p = subprocess.run(
        [sys.executable, "-m", "edgewatch.agent.cli", "score", str(inp), "--config", str(cfg)],
        capture_output=True, text=True, cwd=REPO,
    )
    assert p.returncode == 0, p.stderr
    assert len(p.stdout.splitlines()) == 51


@pytest.mark.parametrize(
    "body, message",
    [
        ("timestamp,value\n2014-07-01 00:00:00,1\nnot-a-time,2\n", "line 3: unparsable timestamp"),
        ("timestamp,value\n2014-07-01 00:00:00,1\n2014-07-01 00:05:00,abc\n", "line 3: value is not a number"),
        ("timestamp,value\n2014-07-01 00:00:00,nan\n", "line 2: value is not a finite number"),
        ("timestamp,value\n2014-07-01 00:00:00,1e31\n", "line 2: value is not a finite number of magnitude below 1e+30"),
        ("timestamp,value\n2014-07-01 00:00:00\n", "line 2: expected 2 columns"),
        ("timestamp,value\n2014-07-01 00:00:00,1,\n2014-07-01 00:05:00,1,5\n", "line 3: expected 2 columns, got 3"),
        ("timestamp,value\n1404172800000,1\n", "unparsable timestamp '1404172800000' (epoch seconds expected; this looks"),
        ("time,value\n", "line 1: no 'timestamp' column"),
        ("", "line 1: empty file"),
    ],
)
def test_bad_csv_exits_2_naming_the_line(tmp_path, capsys, body, message):
    path = tmp_path / "bad.csv"
    path.write_text(body)
    assert main(["score", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("when", ["0001-01-01 00:00:00", "1653-06-01 00:00:00", "2920-01-01", "3000-01-01T00:00:00Z",
                                  "9999-12-31 23:59:59", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
                                  "-1e10", "2262-01-01"])
def test_a_time_the_engine_cannot_run_exits_2_naming_the_line(tmp_path, capsys, when):
    """csp runs from 1678 to 2261 (its datetime is nanoseconds since 1970 in 64 bits): a time outside that, or
    outside datetime's range once in UTC, is one line naming it, not an OverflowError traceback."""
    path = tmp_path / "far.csv"
    path.write_text(f"timestamp,value\n2014-07-01 00:00:00,1\n2014-07-01 00:05:00,2\n\n{when},3\n")
    assert main(["score", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == (f"edge-agent score: {path}: line 5: timestamp {when!r} is outside 1678-01-01 – 2261-12-31, "
                   "the times the engine can run\n")


def test_the_engine_range_edges_score(tmp_path, capsys):
    path = write(tmp_path / "edges.csv", [("1678-01-01 00:00:00", "1"), ("2261-12-31T23:59:59.999999Z", "2")])
    assert main(["score", str(path)]) == 0
    rows = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert [r[:2] for r in rows] == [["timestamp", "value"], ["1678-01-01 00:00:00", "1"],
                                     ["2261-12-31T23:59:59.999999Z", "2"]]


@pytest.mark.parametrize("where, line", [("cell", 3), ("header", 1)])
def test_a_cell_past_the_csv_field_limit_exits_2_naming_the_line(tmp_path, capsys, where, line):
    huge = "x" * (128 * 1024 + 1)
    path = tmp_path / "huge.csv"
    if where == "cell":
        path.write_text(f'timestamp,value\n2014-07-01 00:00:00,1\n2014-07-01 00:05:00,"{huge}"\n')
    else:
        path.write_text(f'timestamp,"value{huge}"\n2014-07-01 00:00:00,1\n')
    assert main(["score", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"edge-agent score: {path}: line {line}: field larger than field limit")
    assert len(err.splitlines()) == 1


def test_missing_file_and_bad_config_exit_2(tmp_path, capsys):
    assert main(["score", str(tmp_path / "nope.csv")]) == 2
    cfg = tmp_path / "agent.toml"
    cfg.write_text("[anomaly]\nbogus = 1\n")
    assert main(["score", str(write(tmp_path / "in.csv", series(10))), "--config", str(cfg)]) == 2
    assert "anomaly.bogus" in capsys.readouterr().err


def test_beats_the_zscore_baseline_on_nab_files(shared_data, tmp_path):
    """Two nab-dev files, scored with NAB's method at the live threshold, against the baseline at its optimum."""
    sys.path.insert(0, str(REPO))
    from bench.zscore import zscore_series

    tool = shared_data.parent / "tools" / "nab_score.py"
    spec = importlib.util.spec_from_file_location("nab_score", tool)
    nab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nab)
    corpus = shared_data / "nab-dev"
    files = ["realKnownCause/nyc_taxi.csv", "artificialWithAnomaly/art_daily_jumpsdown.csv"]
    # a corpus of just these files: same data, their labels only
    (tmp_path / "labels").mkdir()
    labels = json.loads((corpus / "labels" / "windows.json").read_text())
    (tmp_path / "labels" / "windows.json").write_text(json.dumps({f: labels[f] for f in files}))
    (tmp_path / "data").symlink_to(corpus / "data")
    (tmp_path / "config").symlink_to(corpus / "config")
    sub = nab.Corpus(str(tmp_path))
    det, base = {}, {}
    for rel in files:
        with open(corpus / "data" / rel) as f:
            rows = read_series(f)
        det[rel] = score_series([(t, x) for _, _, t, x in rows], AnomalyConfig())
        base[rel] = zscore_series([x for *_, x in rows])
    mine = nab.score_corpus(sub, det, fixed_threshold=AnomalyConfig().threshold)["standard"]["normalized"]
    theirs = nab.score_corpus(sub, base)["standard"]["normalized"]
    print(f"detector {mine:.1f} vs z-score {theirs:.1f}")
    assert mine > theirs + 10, (mine, theirs)


def test_metric_names_the_value_column(tmp_path, capsys):
    path = tmp_path / "temp.csv"
    path.write_text("timestamp,temp\n" + "".join(f"2014-07-01T00:{i:02d}:00Z,{20 + i % 3}\n" for i in range(60)))
    out = tmp_path / "out.csv"
    assert main(["score", str(path), "--metric", "temp", "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 61
    assert main(["score", str(path), "--metric", "value"]) == 2
    assert "no 'value' column" in capsys.readouterr().err
    # without --metric every column but the timestamp is scored: here the one column, under its own name
    assert main(["score", str(path), "--out", str(out)]) == 0
    assert out.read_text().splitlines()[0] == "timestamp,temp,anomaly_score"


def test_unwritable_out_exits_2_with_one_line(tmp_path, capsys):
    rows = [(f"2024-01-01 00:{i:02d}:00", 1.0) for i in range(5)]
    out = tmp_path / "missing" / "out.csv"
    assert main(["score", str(write(tmp_path / "in.csv", rows)), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out) in err and "Traceback" not in err


def test_group_scores_with_that_groups_settings(tmp_path, capsys):
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[anomaly.groups.slow]\nsensors = ["plant1/#"]\nlevel_span = 50\nwarmup = 200\n')
    rows, out = series(), tmp_path / "out.csv"
    assert main(["score", str(write(tmp_path / "in.csv", rows)), "--config", str(cfg), "--group", "slow",
                 "--out", str(out)]) == 0
    scores = [float(r[2]) for r in list(csv.reader(out.open()))[1:]]
    readings = [
        SensorReading(sensor_id="score", ts=datetime.fromisoformat(t), metrics={"value": float(v)}, attrs={})
        for t, v in rows
    ]
    group = AnomalyConfig(level_span=50.0, warmup=200)
    assert scores == [s.score for s in Detector(group).score_readings(readings)]
    assert scores != [s.score for s in Detector(AnomalyConfig()).score_readings(readings)]
    assert main(["score", str(tmp_path / "in.csv"), "--config", str(cfg), "--group", "fast"]) == 2
    err = capsys.readouterr().err
    assert "--group fast: no [anomaly.groups.fast]" in err and "groups: slow" in err


def test_nab_bench_runs_its_cross_validation_on_a_cut_of_nab_dev(shared_data, tmp_path, capsys):
    """bench/nab.py end to end (every candidate, leave-one-category-out, in-sample) on four files of two
    categories: it prints one JSON line whose headline comes from folds that never chose on what they score."""
    sys.path.insert(0, str(REPO))
    from bench import cv, nab

    corpus = shared_data / "nab-dev"
    files = ["artificialWithAnomaly/art_daily_jumpsdown.csv", "artificialWithAnomaly/art_daily_jumpsup.csv",
             "realAdExchange/exchange-2_cpc_results.csv", "realAdExchange/exchange-3_cpc_results.csv"]
    (tmp_path / "labels").mkdir()
    labels = json.loads((corpus / "labels" / "windows.json").read_text())
    (tmp_path / "labels" / "windows.json").write_text(json.dumps({f: labels[f] for f in files}))
    (tmp_path / "data").symlink_to(corpus / "data")
    (tmp_path / "config").symlink_to(corpus / "config")
    result = nab.main(["--corpus", str(tmp_path), "--scorer", str(shared_data.parent / "tools" / "nab_score.py")])
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(result))
    assert result["files"] == 4 and len(result["candidates_in_sample_standard"]) == len(cv.candidates())
    chosen = result["cv"]["chosen"]
    assert set(chosen) == {"artificialWithAnomaly", "realAdExchange"}
    for held in chosen:  # each held-out category is scored whole, with its own windows
        windows = sum(len(labels[f]) for f in files if f.startswith(held + "/"))
        assert result["cv"]["held_out_by_category_at_pooled_threshold"][held]["windows_detected"].endswith(f"/{windows}")
    cross = result["cv"]["optimised"]["standard"]
    assert cross["bootstrap_95"][0] <= cross["normalized"] <= cross["bootstrap_95"][1] <= 100
    inside = result["in_sample"]["optimised"]["standard"]["normalized"]
    assert result["in_sample"]["optimised_bootstrap_95"][0] <= inside <= result["in_sample"]["optimised_bootstrap_95"][1]
    assert result["in_sample"]["config"] == cv.label(AnomalyConfig())


def pump_rows(n: int = 700) -> list[tuple[str, list[str]]]:
    """A three-metric sensor a second apart whose flow drops from row 600 while current stays."""
    rows = []
    for i in range(n):
        noise = ((i * 7919) % 13 - 6) / 60.0
        flow = 32.0 + noise - (4.0 if i >= 600 else 0.0)
        rows.append(((T0 + timedelta(seconds=i)).strftime("%Y-%m-%d %H:%M:%S"),
                     [f"{1.2 + noise / 10:.4f}", f"{0.9 + noise / 20:.4f}", f"{flow:.3f}"]))
    return rows


@pytest.mark.parametrize("sep", [";", "\t"])
def test_a_spreadsheet_export_with_its_own_time_column_and_labels_scores_like_the_plain_csv(tmp_path, sep):
    """A semicolon or tab export (UTF-8 with a byte-order mark, as spreadsheets write it) whose time column is
    `datetime` and which carries label columns scores exactly like the same readings in the plain format once
    --time-column names its time and --ignore its labels; the output is in the plain format."""
    rows = pump_rows()
    plain = tmp_path / "plain.csv"
    plain.write_text("timestamp,Current,Voltage,Flow\n" + "".join(f"{t},{','.join(v)}\n" for t, v in rows))
    export = tmp_path / "export.csv"
    export.write_text("\ufeff" + sep.join(["datetime", "Current", "Voltage", "Flow", "anomaly", "changepoint"]) + "\n"
                      + "".join(sep.join([t, *v, str(int(i >= 600)), str(int(i == 600))]) + "\n"
                                for i, (t, v) in enumerate(rows)), encoding="utf-8")
    want, got = tmp_path / "want.csv", tmp_path / "got.csv"
    assert main(["score", str(plain), "--out", str(want)]) == 0
    assert main(["score", str(export), "--time-column", "datetime", "--ignore", "anomaly", "--ignore", "changepoint",
                 "--out", str(got)]) == 0
    assert got.read_text() == want.read_text()
    table = list(csv.reader(got.open()))
    assert table[0] == ["timestamp", "Current", "Voltage", "Flow", "anomaly_score"]
    assert any(float(r[-1]) >= AnomalyConfig().threshold for r in table[601:661]), "the flow drop must alarm"


def test_a_time_column_or_label_that_is_not_there_exits_2_naming_it(tmp_path, capsys):
    path = tmp_path / "export.csv"
    path.write_text("datetime;flow;anomaly\n2020-03-09 10:00:00;32.0;0\n")
    assert main(["score", str(path)]) == 2
    assert "no 'timestamp' column in header 'datetime,flow,anomaly' (name the time column with --time-column)" in \
        capsys.readouterr().err
    assert main(["score", str(path), "--time-column", "datetime", "--ignore", "label"]) == 2
    err = capsys.readouterr().err
    assert "no 'label' column to ignore" in err and len(err.strip().splitlines()) == 1
    assert main(["score", str(path), "--time-column", "time"]) == 2
    assert "no 'time' column in header" in capsys.readouterr().err


def test_a_skab_file_scored_from_the_command_line_alarms_where_the_benchmark_counts_detections(shared_data, tmp_path):
    """`edge-agent score` on a SKAB file as published (semicolons, `datetime`, two label columns): its rows at or
    above the threshold are the rows bench/skab.py counts as the agent's detections."""
    sys.path.insert(0, str(REPO))
    from bench import skab

    path = shared_data / "skab-dev" / "valve1" / "0.csv"
    out = tmp_path / "scores.csv"
    assert main(["score", str(path), "--time-column", "datetime", "--ignore", "anomaly", "--ignore", "changepoint",
                 "--out", str(out)]) == 0
    scores = [float(r[-1]) for r in list(csv.reader(out.open()))[1:]]
    times, rows, _ = skab.read_skab(path)
    cfg = AnomalyConfig()
    assert len(scores) == len(rows)
    assert {i for i, s in enumerate(scores) if s >= cfg.threshold} == skab.detector_detections(times, rows, cfg)


def test_piping_the_scores_into_head_prints_no_traceback(tmp_path):
    """Scores of 4,000 rows are more than a pipe holds: the reader leaves after one line, `| head -1`."""
    inp = write(tmp_path / "in.csv", series(4000))
    proc = subprocess.Popen([sys.executable, "-m", "edgewatch.agent.cli", "score", str(inp)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline() == b"timestamp,value,anomaly_score\n"
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and err == ""


def test_an_export_of_many_sensors_scores_each_as_if_it_were_alone(tmp_path, capsys):
    """A historian's export: `time;tag;value` rows of two sensors interleaved. With --sensor-column each tag is a
    sensor of its own, scored exactly as its rows alone would be; the output names each row's sensor."""
    a, b = series(900), [(t, str(50 + (i * 31) % 7)) for i, (t, _) in enumerate(series(900))]
    long = tmp_path / "export.csv"
    long.write_text("time;tag;value\n" + "".join(f"{ta};pump-a;{va}\n{tb};pump-b;{vb}\n"
                                                   for (ta, va), (tb, vb) in zip(a, b)))
    out = tmp_path / "out.csv"
    assert main(["score", str(long), "--time-column", "time", "--sensor-column", "tag", "--out", str(out)]) == 0
    table = list(csv.reader(out.open()))
    assert table[0] == ["timestamp", "tag", "value", "anomaly_score"]
    for tag, rows in (("pump-a", a), ("pump-b", b)):
        alone = tmp_path / f"{tag}.csv"
        assert main(["score", str(write(tmp_path / f"{tag}-in.csv", rows)), "--out", str(alone)]) == 0
        assert [[r[0], r[2], r[3]] for r in table[1:] if r[1] == tag] == list(csv.reader(alone.open()))[1:]
    assert max(float(r[3]) for r in table[1:] if r[1] == "pump-a") >= AnomalyConfig().threshold

    long.write_text("time;tag;value\n2024-01-01 00:00:00;pump-a;1\n2024-01-01 00:00:01; ;2\n")
    assert main(["score", str(long), "--time-column", "time", "--sensor-column", "tag"]) == 2
    assert "line 3: no sensor in column 'tag'" in capsys.readouterr().err
    assert main(["score", str(long), "--time-column", "time", "--sensor-column", "device"]) == 2
    assert "no 'device' column of sensors" in capsys.readouterr().err


def test_channel_names_what_surprised_most_on_the_rows_that_alarm(tmp_path):
    """--channel: the three-metric pump whose flow drops names the flow's channel on its alarms, a single metric
    names itself, and a row that raises no event has none."""
    rows = pump_rows()
    plain = tmp_path / "plain.csv"
    plain.write_text("timestamp,Current,Voltage,Flow\n" + "".join(f"{t},{','.join(v)}\n" for t, v in rows))
    out = tmp_path / "out.csv"
    assert main(["score", str(plain), "--channel", "--out", str(out)]) == 0
    table = list(csv.reader(out.open()))
    assert table[0][-2:] == ["anomaly_score", "anomaly_channel"]
    threshold = AnomalyConfig().threshold
    drop = [r for r in table[1:] if float(r[-2]) >= threshold and r[0] >= rows[600][0]]
    assert drop and all(r[-1].startswith("Flow") for r in drop), drop
    assert all(r[-1] == "" for r in table[1:] if float(r[-2]) < threshold)
    assert main(["score", str(write(tmp_path / "in.csv", series())), "--channel", "--out", str(out)]) == 0
    assert [r[-1] for r in list(csv.reader(out.open()))[1:] if float(r[-2]) >= threshold][:1] == ["value"]


def test_an_empty_cell_is_no_reading_of_that_metric_and_loses_nothing_else(tmp_path):
    """A historian's export with gaps: an empty cell leaves that metric out of the row's reading (the others are
    scored as a reading of them alone, as the agent scores a message that lacks a metric); a row whose every cell
    is empty gets an empty score. Nothing else changes: the other rows score as they would without the gaps."""
    rows = pump_rows()
    gappy = [(t, ["" if i % 50 == 7 and j == 1 else x for j, x in enumerate(v)]) for i, (t, v) in enumerate(rows)]
    gappy[300] = (gappy[300][0], ["", "", ""])
    path = tmp_path / "gappy.csv"
    path.write_text("timestamp,Current,Voltage,Flow\n" + "".join(f"{t},{','.join(v)}\n" for t, v in gappy))
    out = tmp_path / "out.csv"
    assert main(["score", str(path), "--out", str(out)]) == 0
    table = list(csv.reader(out.open()))[1:]
    assert len(table) == len(rows) and table[300][-1] == "" and all(r[-1] for i, r in enumerate(table) if i != 300)
    readings = [SensorReading(sensor_id="score", ts=datetime.fromisoformat(t),
                              metrics={c: float(x) for c, x in zip(("Current", "Voltage", "Flow"), v) if x}, attrs={})
                for t, v in gappy if any(v)]
    fused = [sc.score for sc in Detector(AnomalyConfig()).score_readings(readings) if sc.metric == FUSED]
    assert [float(r[-1]) for r in table if r[-1]] == [0.0, *fused]  # a sensor's first reading: 0, no fused score
