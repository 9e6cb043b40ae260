"""Logging into the journal's native socket: every key a field, nothing lost when the journal is away."""

from __future__ import annotations

import io
import json
import os
import socket
import struct

import structlog
from edgewatch.common.journal import (
    JournalLoggerFactory,
    entry_fields,
    error_line,
    stdout_is_journal,
)


def decode(data: bytes) -> dict[str, str]:
    """journald's side of the native protocol."""
    fields, i = {}, 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            i = nl + 1
        else:
            key, (size,) = line, struct.unpack("<Q", data[nl + 1 : nl + 9])
            value = data[nl + 9 : nl + 9 + size]
            assert data[nl + 9 + size : nl + 10 + size] == b"\n"
            i = nl + 10 + size
        fields[key.decode()] = value.decode()
    return fields


def configure(factory) -> None:
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        logger_factory=factory, cache_logger_on_first_use=False,
    )


def test_keys_become_journal_fields(tmp_path):
    path = str(tmp_path / "journal.socket")
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(path)
    try:
        configure(JournalLoggerFactory("edgewatch-agent", path))
        structlog.get_logger().error("writer_failed", error="disk full\nretrying", rows=3, _private=1)
        fields = decode(journal.recv(65536))
    finally:
        structlog.reset_defaults()
        journal.close()
    assert fields["SYSLOG_IDENTIFIER"] == "edgewatch-agent"
    assert fields["PRIORITY"] == "3" and fields["LEVEL"] == "error" and fields["EVENT"] == "writer_failed"
    assert fields["ERROR"] == "disk full\nretrying" and fields["ROWS"] == "3"  # multi-line values survive
    assert "_PRIVATE" not in fields and "PRIVATE" in fields  # callers cannot forge trusted (_*) fields
    assert json.loads(fields["MESSAGE"])["event"] == "writer_failed"  # `journalctl -o cat | jq` still works


def test_journal_away_falls_back_to_stdout(tmp_path, capsys):
    configure(JournalLoggerFactory("edgewatch-agent", str(tmp_path / "no-journal")))
    try:
        structlog.get_logger().info("agent_ready", broker="127.0.0.1:1883")
    finally:
        structlog.reset_defaults()
    assert json.loads(capsys.readouterr().out)["event"] == "agent_ready"


def test_reserved_and_odd_keys():
    fields = dict(entry_fields(json.dumps({"event": "x", "level": "warning", "message": "m", "9x": 1, "a-b": [1]}), "id"))
    assert fields["PRIORITY"] == "4" and fields["MESSAGE"].startswith("{")  # a `message` key cannot replace MESSAGE
    assert fields["A_B"] == "[1]" and "9X" not in fields
    assert dict(entry_fields("plain text", "id")) == {"MESSAGE": "plain text", "SYSLOG_IDENTIFIER": "id", "PRIORITY": "6"}


def test_stdout_is_journal_only_for_the_stream_systemd_connected(tmp_path):
    with open(tmp_path / "out", "w") as f:
        st = os.fstat(f.fileno())
        assert stdout_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, f)
        assert not stdout_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, f)  # stdout redirected elsewhere
        assert not stdout_is_journal({}, f)
    assert not stdout_is_journal({"JOURNAL_STREAM": "1:2"}, io.StringIO())


def test_error_lines_carry_the_err_priority_only_into_the_journal(tmp_path, monkeypatch):
    with open(tmp_path / "err", "w") as f:
        st = os.fstat(f.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert error_line("edge-agent run: configuration error: x", f) == "<3>edge-agent run: configuration error: x"
        assert error_line("edge-sidecar: a\nb", f) == "<3>edge-sidecar: a\n<3>b"  # journald reads it line by line
        monkeypatch.delenv("JOURNAL_STREAM")
        assert error_line("edge-agent run: configuration error: x", f) == "edge-agent run: configuration error: x"


def test_logs_setup_uses_the_journal_under_systemd(tmp_path, monkeypatch):
    """common.logs (both services' setup): with stdout connected to the journal, entries arrive as fields."""
    from edgewatch.common import journal, logs

    path = str(tmp_path / "journal.socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    monkeypatch.setattr(journal, "JOURNAL_SOCKET", path)
    with open(tmp_path / "stdout", "w") as out:
        st = os.fstat(out.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        monkeypatch.setattr("sys.stdout", out)
        monkeypatch.setattr("sys.argv", ["/opt/edgewatch/bin/edge-agent", "run"])
        try:
            logs.setup("info", "json")
            logs.get("edgewatch.agent.commands.run").info("agent_ready", broker="127.0.0.1:1883")
            fields = decode(sock.recv(65536))
        finally:
            structlog.reset_defaults()
            sock.close()
    assert fields["SYSLOG_IDENTIFIER"] == "edge-agent" and fields["EVENT"] == "agent_ready"
    assert fields["BROKER"] == "127.0.0.1:1883" and fields["PRIORITY"] == "6"
    assert (tmp_path / "stdout").read_text() == ""  # the entry went to the journal only, once
