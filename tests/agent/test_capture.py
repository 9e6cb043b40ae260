"""Capture files: the JSON Lines format of docs/reference/capture.md, rotation, pruning, torn lines."""

import json
import os
import stat
from datetime import datetime, timedelta

import pytest

from edgewatch.agent.config import RecordConfig
from edgewatch.agent.ingest.capture import CaptureWriter, read_captures

T0 = datetime(2026, 1, 2, 3, 4, 5, 123456)


def test_lines_follow_the_spec_and_read_back_in_order(tmp_path):
    w = CaptureWriter(RecordConfig(path=str(tmp_path)))
    msgs = [(T0 + timedelta(seconds=i), f"sensors/s{i}", json.dumps({"temperature": i, "note": "é\"\n"}))
            for i in range(5)]
    for m in msgs:
        w.write(*m)
    w.flush()
    rows = [json.loads(line) for line in w.path.read_text(encoding="utf-8").splitlines()]
    assert rows[0] == {"received_at": "2026-01-02T03:04:05.123456Z", "topic": "sensors/s0", "payload": msgs[0][2]}
    w.close()
    assert list(read_captures([tmp_path])) == [(t, topic, p.encode()) for t, topic, p in msgs]


def test_nothing_reaches_the_file_before_flush_and_everything_after(tmp_path):
    w = CaptureWriter(RecordConfig(path=str(tmp_path)))
    w.write(T0, "sensors/a", '{"a": 1}')
    assert w.path.read_bytes() == b""
    w.flush()
    assert len(list(read_captures([w.path]))) == 1
    w.close()
    w.close()  # idempotent


def test_rotation_by_size_keeps_the_newest_files(tmp_path):
    w = CaptureWriter(RecordConfig(path=str(tmp_path), max_bytes=1000, max_files=3))
    for i in range(200):
        w.write(T0 + timedelta(milliseconds=i), "sensors/a", json.dumps({"i": i}))
        if i % 10 == 9:
            w.flush()
    w.close()
    files = sorted(tmp_path.glob("capture-*.jsonl"))
    assert len(files) == 3
    assert all(f.stat().st_size < 1100 for f in files)
    got = [json.loads(p)["i"] for _, _, p in read_captures([tmp_path])]
    assert got == list(range(200 - len(got), 200))  # the newest messages, contiguous and in order


def test_a_new_writer_never_overwrites_an_earlier_run(tmp_path):
    for run in range(3):
        w = CaptureWriter(RecordConfig(path=str(tmp_path)))
        w.write(T0, "sensors/a", json.dumps({"run": run}))
        w.close()
    assert [json.loads(p)["run"] for _, _, p in read_captures([tmp_path])] == [0, 1, 2]


def test_torn_and_damaged_lines_are_skipped_and_counted(tmp_path):
    w = CaptureWriter(RecordConfig(path=str(tmp_path)))
    for i in range(3):
        w.write(T0, "sensors/a", json.dumps({"i": i}))
    w.close()
    with open(w.path, "ab") as f:
        f.write(b'{"received_at": "2026-01-02T03:04:05Z", "topic": 5, "payload": "{}"}\n')  # damaged
        f.write(b'{"received_at": "2026-01-02T03:04:05Z", "topic": "sensors/a", "payl')  # torn by a kill
    reader = read_captures([w.path])
    assert [json.loads(p)["i"] for _, _, p in reader] == [0, 1, 2]
    assert (reader.lines, reader.skipped) == (3, 2)


@pytest.mark.parametrize("line", [
    b"[" * 100_000 + b"\n",  # nested past the parser's recursion limit
    b'{"received_at": "0001-01-01T00:00:00+01:00", "topic": "sensors/a", "payload": "{}"}\n',  # year 0 in UTC
    b'{"received_at": "9999-12-31T23:59:59-01:00", "topic": "sensors/a", "payload": "{}"}\n',  # after 9999 in UTC
    b'{"received_at": "1600-01-01T00:00:00Z", "topic": "sensors/a", "payload": "{}"}\n',  # before csp's first time
    b'{"received_at": "1677-12-31T23:59:59.999999Z", "topic": "sensors/a", "payload": "{}"}\n',
    b'{"received_at": "2262-01-01T00:00:00Z", "topic": "sensors/a", "payload": "{}"}\n',  # after csp's last time
    b'{"received_at": "3000-01-01T00:00:00Z", "topic": "sensors/a", "payload": "{}"}\n',
    b'{"received_at": 1e300, "topic": "sensors/a", "payload": "{}"}\n',
    b'{"received_at": "2026-01-02T03:04:05Z", "topic": "sensors/a", "payload": "\\ud800"}\n',  # not UTF-8 text
    b'["received_at", "topic", "payload"]\n',
])
def test_lines_no_engine_can_run_are_damaged_lines_skipped_and_counted(tmp_path, line):
    """A line that does not parse, or whose time csp cannot represent (1678-01-01 .. 2261-12-31), is skipped and
    counted like any damaged line, never raised: a replay and a warm start use what is there."""
    w = CaptureWriter(RecordConfig(path=str(tmp_path)))
    w.write(T0, "sensors/a", json.dumps({"i": 0}))
    w.close()
    with open(w.path, "ab") as f:
        f.write(line)
        f.write(b'{"received_at": "2026-01-02T03:04:06Z", "topic": "sensors/a", "payload": "{\\"i\\": 1}"}\n')
    for reader in (read_captures([tmp_path]), read_captures([w.path])):
        assert [json.loads(p)["i"] for _, _, p in reader] == [0, 1]
        assert (reader.lines, reader.skipped) == (2, 1)


def test_the_engine_range_edges_are_read(tmp_path):
    (tmp_path / "capture-a.jsonl").write_bytes(
        b'{"received_at": "1678-01-01T00:00:00Z", "topic": "sensors/a", "payload": "{}"}\n'
        b'{"received_at": "2261-12-31T23:59:59.999999Z", "topic": "sensors/a", "payload": "{}"}\n'
        b'{"received_at": "2170-01-01T00:00:00Z", "topic": "sensors/a", "payload": "{}"}\n')
    reader = read_captures([tmp_path])
    assert [t for t, _, _ in reader] == [datetime(1678, 1, 1), datetime(2261, 12, 31, 23, 59, 59, 999999),
                                         datetime(2170, 1, 1)]
    assert reader.skipped == 0


def test_a_folder_named_like_a_capture_is_left_out_and_a_missing_file_skipped(tmp_path):
    w = CaptureWriter(RecordConfig(path=str(tmp_path)))
    w.write(T0, "sensors/a", json.dumps({"i": 0}))
    w.close()
    (tmp_path / "capture-x.jsonl").mkdir()  # sorts after the file
    (tmp_path / "capture-0.jsonl").mkdir()  # and before it
    reader = read_captures([tmp_path])
    assert reader.files == [w.path]
    assert [json.loads(p)["i"] for _, _, p in reader] == [0] and reader.skipped == 0
    gone = read_captures([tmp_path / "capture-gone.jsonl", w.path])  # removed between the listing and the read
    assert len(list(gone)) == 1 and gone.unreadable == [str(tmp_path / "capture-gone.jsonl")]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000])
def test_capture_files_are_0640_like_the_log_whatever_the_umask(tmp_path, umask):
    """Captures hold every input message: owner writes, the service's group reads, nobody else."""
    old = os.umask(umask)
    try:
        w = CaptureWriter(RecordConfig(path=str(tmp_path / "capture"), max_bytes=200, max_files=0))
        for i in range(20):  # rotates: every new file gets the same mode
            w.write(T0 + timedelta(seconds=i), "sensors/a", json.dumps({"i": i, "pad": "x" * 50}))
            w.flush()
        w.close()
    finally:
        os.umask(old)
    files = sorted((tmp_path / "capture").glob("capture-*.jsonl"))
    assert len(files) > 3
    assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o640}
    assert stat.S_IMODE((tmp_path / "capture").stat().st_mode) == 0o750 & ~umask


def test_one_topic_is_read_without_parsing_the_others(tmp_path):
    from edgewatch.agent.ingest import capture

    w = CaptureWriter(RecordConfig(path=str(tmp_path)))
    topics = ["sensors/s1", "sensors/s10", "sensors/é\"x", "sensors/s1/"]
    msgs = [(T0 + timedelta(seconds=i), topics[i % 4], json.dumps({"temperature": i, "topic": "sensors/s1"}))  # the needle, escaped in payloads
            for i in range(400)]
    for m in msgs:
        w.write(*m)
    w.close()
    with open(w.path, "ab") as f:
        f.write(b'{"received_at":"2026-01-02T03:04:05Z","topic":"sensors/s1","payl')  # torn by a kill
    everything = list(read_captures([tmp_path]))
    for topic in topics:
        reader = capture.CaptureReader([tmp_path], topic)
        assert list(reader) == [m for m in everything if m[1] == topic]
    assert reader.skipped == 0  # another topic's torn line is never even parsed
    one = capture.CaptureReader([tmp_path], "sensors/s1")
    assert len(list(one)) == 100 and one.skipped == 1  # the torn line is its topic's, and skipped
    with open(w.path, "rb") as f:  # blocks far smaller than a line: lines found across block boundaries
        small = list(capture._lines_with(f, b'"topic":"sensors/s10",', chunk=7))
    assert len(small) == 100 and all(b'"sensors/s10"' in line and line.endswith(b"\n") for line in small)
