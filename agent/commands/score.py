"""`edge-agent score`: one series through the live anomaly detector, in historical mode.

The rows go through the very `anomaly_scores` csp node the agent runs, each row
one reading of one sensor, so the scores are exactly what the live detector
would have said. Rows are scored in file order; a timestamp that repeats or
steps back is scored like a live out-of-order reading (see edgewatch.agent.analytics.anomaly).
"""

from __future__ import annotations

import csv
import io
import sys
from datetime import datetime, timedelta, timezone

import csp
from edgewatch.agent import config
from edgewatch.agent.analytics.anomaly import MAX_MAGNITUDE, anomaly_scores
from edgewatch.agent.config import AnomalyConfig
from edgewatch.agent.records import SensorReading

SENSOR_ID = "score"
BATCH = 4096  # rows per engine tick; batching never changes a score, only the engine's overhead


class InputError(ValueError):
    """A row or header that cannot be scored; the message names the line."""


def parse_time(text: str) -> datetime:
    """ISO-8601 (no timezone = UTC) or epoch seconds -> naive UTC."""
    t = text.strip()
    try:
        return datetime.fromtimestamp(float(t), timezone.utc).replace(tzinfo=None)
    except (ValueError, OverflowError, OSError):
        pass
    if t.endswith(("Z", "z")):
        t = t[:-1] + "+00:00"
    dt = datetime.fromisoformat(t)
    return dt.astimezone(timezone.utc).replace(tzinfo=None) if dt.tzinfo else dt


def read_series(stream: io.TextIOBase, column: str = "value") -> list[tuple[str, str, datetime, float]]:
    """Rows of a `timestamp,<column>` CSV as (timestamp text, value text, time, value); blank lines skipped."""
    reader = csv.reader(stream)
    header = next(reader, None)
    if header is None:
        raise InputError("line 1: empty file, expected a header with timestamp and value columns")
    header = [h.strip() for h in header]
    for name in ("timestamp", column):
        if name not in header:
            raise InputError(f"line 1: no {name!r} column in header {','.join(header)!r}")
    ti, vi = header.index("timestamp"), header.index(column)
    rows = []
    for row in reader:
        if not row or all(not c.strip() for c in row):
            continue
        line = reader.line_num
        if len(row) <= max(ti, vi):
            raise InputError(f"line {line}: expected {len(header)} columns, got {len(row)}")
        try:
            when = parse_time(row[ti])
        except ValueError:
            raise InputError(f"line {line}: unparsable timestamp {row[ti][:64]!r}") from None
        try:
            x = float(row[vi])
        except ValueError:
            raise InputError(f"line {line}: {column} is not a number: {row[vi][:64]!r}") from None
        if not -MAX_MAGNITUDE < x < MAX_MAGNITUDE:
            raise InputError(f"line {line}: {column} is not a finite number of magnitude below {MAX_MAGNITUDE:g}: {row[vi]!r}")
        rows.append((row[ti], row[vi], when, x))
    return rows


def score_series(series: list[tuple[datetime, float]], cfg: AnomalyConfig, metric: str = "value") -> list[float]:
    """One score per (time, value), in order, from the live `anomaly_scores` node in historical mode."""
    if not series:
        return []
    ticks = []
    for i in range(0, len(series), BATCH):
        chunk = series[i : i + BATCH]
        # engine time never goes back: a chunk ticks at its latest row time, strictly after the previous tick
        clock = max(t for t, _ in chunk)
        if ticks and clock <= ticks[-1][0]:
            clock = ticks[-1][0] + timedelta(microseconds=1)
        readings = [SensorReading(sensor_id=SENSOR_ID, ts=t, metrics={metric: x}, attrs={}) for t, x in chunk]
        ticks.append((clock, readings))

    @csp.graph
    def g():
        with csp.memoize(False):  # readings hold dicts, which are not hashable
            csp.add_graph_output("scores", anomaly_scores(csp.curve(list[SensorReading], ticks), cfg))

    out = csp.run(g, starttime=ticks[0][0], endtime=ticks[-1][0])
    scores = [sc.score for _, batch in out.get("scores", []) for sc in batch]
    if len(scores) != len(series):  # cannot happen: every finite reading yields one score
        raise RuntimeError(f"detector returned {len(scores)} scores for {len(series)} rows")
    return scores


def score_command(args) -> int:
    cfg = config.load(args.config).anomaly
    try:
        with open(args.input, newline="", encoding="utf-8") as f:
            rows = read_series(f, args.metric)
    except OSError as e:
        print(f"edge-agent score: {args.input}: {e.strerror}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as e:
        print(f"edge-agent score: {args.input}: not UTF-8 text ({e.reason})", file=sys.stderr)
        return 2
    except InputError as e:
        print(f"edge-agent score: {args.input}: {e}", file=sys.stderr)
        return 2
    try:  # before scoring: a bad --out fails at once, not after the whole series
        out = open(args.out, "w", newline="", encoding="utf-8") if args.out else sys.stdout
    except OSError as e:
        print(f"edge-agent score: {args.out}: {e.strerror}", file=sys.stderr)
        return 2
    scores = score_series([(when, x) for _, _, when, x in rows], cfg, args.metric)
    try:
        w = csv.writer(out, lineterminator="\n")
        w.writerow(("timestamp", "value", "anomaly_score"))
        w.writerows((t, v, repr(s)) for (t, v, _, _), s in zip(rows, scores))
    finally:
        if out is not sys.stdout:
            out.close()
    return 0
