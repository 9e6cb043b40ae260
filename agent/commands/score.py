"""`edge-agent score`: a CSV through the live anomaly detector, in historical mode.

The rows go through the very `anomaly_scores` csp node the agent runs, each row
one reading of one sensor, so the scores are exactly what the live detector
would have said. Every column but the time column (`timestamp`, or
`--time-column NAME`) and those `--ignore` names (labels, identifiers) is a
metric of that sensor (or only `--metric NAME`); with `--sensor-column NAME`
each row is a reading of the sensor that column names (a historian's export of
many sensors in one file), each judged on its own. The delimiter is a comma, a
semicolon or a tab, whichever the header has most of. With several metrics,
`anomaly_score` is the sensor-level (fused) score that decides the live
`anomaly` events. Rows are scored in file order; a timestamp that repeats or
steps back is scored like a live out-of-order reading (see
edgewatch.agent.analytics.anomaly). A column that `anomaly.counters` names is a
running total, scored by its rate as the agent does. An empty cell is no
reading of that metric at that time (the row is a reading of the others); a row
with nothing to score (every cell empty, or a counter's first total, or one
after a reset, alone in its row) gets an empty score.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import itertools
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import csp
from edgewatch.agent import config
from edgewatch.agent.analytics.anomaly import FUSED, MAX_MAGNITUDE, SensorScore, anomaly_scores, raises_event
from edgewatch.agent.analytics.counters import CounterRates
from edgewatch.agent.config import AnomalyConfig
from edgewatch.agent.records import MetricScore, SensorReading
from edgewatch.agent.timeutil import ENGINE_FIRST, ENGINE_LAST, engine_range, milliseconds_hint

SENSOR_ID = "score"
BATCH = 4096  # rows per engine tick; batching never changes a score, only the engine's overhead
DELIMITERS = (",", ";", "\t")


class InputError(ValueError):
    """A row or header that cannot be scored; the message names the line."""


@dataclasses.dataclass(frozen=True)
class TableFormat:
    """Which of a CSV's columns is not a metric: its time column (`--time-column`), those `--ignore` names, and
    the column that names each row's sensor (`--sensor-column`; None: the file is one sensor's)."""

    time_column: str = "timestamp"
    ignore: tuple[str, ...] = ()
    sensor_column: str | None = None

    @classmethod
    def of(cls, args) -> TableFormat:
        return cls(args.time_column, tuple(args.ignore or ()), args.sensor_column)


PLAIN = TableFormat()  # `timestamp` and metrics, nothing else


def parse_time(text: str) -> datetime:
    """ISO-8601 (no timezone = UTC) or epoch seconds -> naive UTC; ValueError saying why not, also for a time the
    engine cannot run (csp: `engine_range()`)."""
    t = text.strip()
    try:
        seconds = float(t)
    except ValueError:
        seconds = None
    try:
        if seconds is not None:
            dt = datetime.fromtimestamp(seconds, timezone.utc).replace(tzinfo=None)
        else:
            dt = datetime.fromisoformat(t[:-1] + "+00:00" if t.endswith(("Z", "z")) else t)
            try:
                dt = dt.astimezone(timezone.utc).replace(tzinfo=None) if dt.tzinfo else dt
            except OverflowError:  # in UTC before the year 1 or after 9999
                dt = None
    except (ValueError, OverflowError, OSError):
        raise ValueError(f"unparsable timestamp {t[:64]!r}{milliseconds_hint(seconds)}") from None
    if dt is None or not ENGINE_FIRST <= dt <= ENGINE_LAST:
        raise ValueError(f"timestamp {t[:64]!r} is outside {engine_range()}, the times the engine can run")
    return dt


@contextlib.contextmanager
def reading(path: str) -> Iterator[None]:
    """Errors of reading the CSV at `path` (unreadable, not UTF-8, a bad header or row) as one InputError that
    names it."""
    try:
        yield
    except OSError as e:
        raise InputError(f"{path}: {e.strerror}") from None
    except csv.Error as e:  # (`_rows` names the line; this is the header's)
        raise InputError(f"{path}: line 1: {e}") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason})") from None
    except InputError as e:
        raise InputError(f"{path}: {e}") from None


def read_table(stream: io.TextIOBase, columns: list[str] | None = None,
               fmt: TableFormat = PLAIN) -> tuple[list[str], list[tuple]]:
    """A `timestamp,<col>,...` CSV: (the scored column names, rows as (timestamp text, value texts, time,
    values, the row's sensor or None)); `columns` None = every column but those `fmt` says are not metrics. Blank
    lines are skipped."""
    columns, rows = iter_table(stream, columns, fmt)
    return columns, list(rows)


def delimiter(header: str) -> str:
    """The header's delimiter: of DELIMITERS, the one that splits it into the most fields (a comma on a tie), so a
    spreadsheet's semicolon or tab export reads like a CSV."""
    return max(DELIMITERS, key=lambda d: (header.count(d), d == ","))


def iter_table(stream: io.TextIOBase, columns: list[str] | None = None,
               fmt: TableFormat = PLAIN) -> tuple[list[str], Iterator[tuple]]:
    """`read_table`, the header read at once and the rows as they are read (a long export need not fit in
    memory); a bad row raises InputError when it is reached."""
    time_column, ignore, sensor_column = fmt.time_column, fmt.ignore, fmt.sensor_column
    first = stream.readline().removeprefix("\ufeff")  # a spreadsheet's UTF-8 export may begin with a BOM
    if not first:
        raise InputError(f"line 1: empty file, expected a header with {time_column} and value columns")
    reader = csv.reader(itertools.chain([first], stream), delimiter=delimiter(first))
    header = [h.strip() for h in next(reader)]
    shown = ",".join(header)
    if time_column not in header:
        hint = "" if time_column != PLAIN.time_column else " (name the time column with --time-column)"
        raise InputError(f"line 1: no {time_column!r} column in header {shown!r}{hint}")
    for name in ignore:
        if name not in header:
            raise InputError(f"line 1: no {name!r} column to ignore in header {shown!r}")
    if sensor_column is not None and sensor_column not in header:
        raise InputError(f"line 1: no {sensor_column!r} column of sensors in header {shown!r}")
    if columns is None:
        columns = [h for h in header if h not in (time_column, sensor_column) and h not in ignore]
        if not columns:
            raise InputError(f"line 1: no value column besides {time_column!r} in header {shown!r}")
    for name in columns:
        if name not in header:
            raise InputError(f"line 1: no {name!r} column in header {shown!r}")
    if len(set(columns)) != len(columns):
        raise InputError(f"line 1: a column name repeats in header {shown!r}")
    ti = header.index(time_column)
    vis = [header.index(c) for c in columns]
    si = None if sensor_column is None else header.index(sensor_column)
    return columns, _rows(reader, header, columns, ti, vis, si)


def _rows(reader, header: list[str], columns: list[str], ti: int, vis: list[int], si: int | None) -> Iterator[tuple]:
    """The data rows, checked as they are read (`iter_table`): (timestamp text, value texts, time, values, the
    row's sensor or None)."""
    last = max([ti, *vis, -1 if si is None else si])
    for row in _checked(reader):
        if not row or all(not c.strip() for c in row):
            continue
        line = reader.line_num
        if len(row) <= last or (len(row) > len(header) and any(c.strip() for c in row[len(header):])):
            # (empty cells past the header's end are a spreadsheet's trailing delimiters; text there is a row
            # that does not split as the header does, an unquoted delimiter in a field)
            raise InputError(f"line {line}: expected {len(header)} columns, got {len(row)}")
        try:
            when = parse_time(row[ti])
        except ValueError as e:
            raise InputError(f"line {line}: {e}") from None
        values: list[float | None] = []
        for name, vi in zip(columns, vis):
            if not row[vi].strip():  # an empty cell: no reading of that metric at that time
                values.append(None)
                continue
            try:
                x = float(row[vi])
            except ValueError:
                raise InputError(f"line {line}: {name} is not a number: {row[vi][:64]!r}") from None
            if not -MAX_MAGNITUDE < x < MAX_MAGNITUDE:
                raise InputError(
                    f"line {line}: {name} is not a finite number of magnitude below {MAX_MAGNITUDE:g}: {row[vi]!r}")
            values.append(x)
        sensor = None
        if si is not None and not (sensor := row[si].strip()):
            raise InputError(f"line {line}: no sensor in column {header[si]!r}")
        yield row[ti], [row[vi] for vi in vis], when, values, sensor


def _checked(reader) -> Iterator[list[str]]:
    """`reader`'s rows; a line the csv module cannot split (a cell over its field limit) raises InputError naming
    the line."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise InputError(f"line {reader.line_num}: {e}") from None
        yield row


def metrics_of(columns: list[str], values: list[float | None]) -> dict[str, float]:
    """A row's reading: its metrics with a value (an empty cell is no reading of that metric at that time)."""
    return {c: x for c, x in zip(columns, values) if x is not None}


def read_series(stream: io.TextIOBase, column: str = "value") -> list[tuple[str, str, datetime, float]]:
    """Rows of a `timestamp,<column>` CSV as (timestamp text, value text, time, value); blank lines and rows
    whose value is empty skipped."""
    _, rows = read_table(stream, [column])
    return [(t, texts[0], when, values[0]) for t, texts, when, values, _ in rows if values[0] is not None]


def score_table(rows: list[tuple[datetime, list[float]]], cfg: AnomalyConfig,
                columns: list[str], sensors: list[str | None] | None = None) -> list[MetricScore | None]:
    """The score that decides each (time, values) row, in order, from the live `anomaly_scores` node in historical
    mode: each row is one reading of one sensor (`sensors`' for the row, else SENSOR_ID) with these metrics; with
    several, the sensor-level one (a SensorScore, naming its channel, at or above the threshold), else the
    metric's. The columns `cfg.counters` names reach it as rates (`CounterRates`, as in the agent); None for a
    row with none of its metrics left to score."""
    if not rows:
        return []
    rates = CounterRates(cfg)
    readings = [rates([SensorReading(sensor_id=sid or SENSOR_ID, ts=t, metrics=metrics, attrs={})])
                if (metrics := metrics_of(columns, xs)) else []
                for (t, xs), sid in zip(rows, sensors or itertools.repeat(None))]  # per row: [] or its reading
    judged = [r[0] for r in readings if r]
    ticks = []
    for i in range(0, len(judged), BATCH):
        chunk = judged[i : i + BATCH]
        # engine time never goes back: a chunk ticks at its latest row time, strictly after the previous tick
        clock = max(r.ts for r in chunk)
        if ticks and clock <= ticks[-1][0]:
            clock = ticks[-1][0] + timedelta(microseconds=1)
        ticks.append((clock, chunk))
    if not ticks:
        return [None] * len(rows)

    @csp.graph
    def g():
        with csp.memoize(False):  # readings hold dicts, which are not hashable
            csp.add_graph_output("scores", anomaly_scores(csp.curve(list[SensorReading], ticks), cfg))

    out = csp.run(g, starttime=ticks[0][0], endtime=ticks[-1][0])
    flat = [sc for _, batch in out.get("scores", []) for sc in batch]
    # each reading yields one score per metric, then (a fused reading) one sensor-level score, metric FUSED
    scores: list[MetricScore | None] = []
    i = 0
    for r in readings:
        if not r:
            scores.append(None)
            continue
        m = len(r[0].metrics)
        block = flat[i : i + m]
        i += m
        if i < len(flat) and flat[i].metric == FUSED:
            scores.append(flat[i])
            i += 1
        else:
            scores.append(max(block, key=lambda sc: sc.score))
    if i != len(flat):  # cannot happen: every finite reading yields its scores
        raise RuntimeError(f"detector returned {len(flat)} scores for {len(judged)} readings")
    return scores


def score_series(series: list[tuple[datetime, float]], cfg: AnomalyConfig, metric: str = "value") -> list[float]:
    """One score per (time, value), in order, from the live `anomaly_scores` node in historical mode."""
    return [sc.score for sc in score_table([(t, [x]) for t, x in series], cfg, [metric])]


def channel_of(sc: MetricScore | None, threshold: float) -> str:
    """What surprised most on a row whose score raises an `anomaly` event (a sensor-level score's channel, else the
    metric, as the event's data says); "" on any other row."""
    if sc is None or not raises_event(sc, threshold):
        return ""
    return sc.channel if isinstance(sc, SensorScore) else sc.metric


def score_command(args) -> int:
    loaded = config.load(args.config)
    cfg = config.group_named(loaded, args.group, ("anomaly",))[0].settings if args.group else loaded.anomaly
    try:
        with reading(args.input), open(args.input, newline="", encoding="utf-8") as f:
            fmt = TableFormat.of(args)
            columns, rows = read_table(f, [args.metric] if args.metric else None, fmt)
    except InputError as e:
        print(f"edge-agent score: {e}", file=sys.stderr)
        return 2
    try:  # before scoring: a bad --out fails at once, not after the whole series
        out = open(args.out, "w", newline="", encoding="utf-8") if args.out else sys.stdout
    except OSError as e:
        print(f"edge-agent score: {args.out}: {e.strerror}", file=sys.stderr)
        return 2
    scores = score_table([(when, xs) for _, _, when, xs, _ in rows], cfg, columns, [r[4] for r in rows])
    by, channel = bool(fmt.sensor_column), args.channel
    try:
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["timestamp", *[fmt.sensor_column] * by, *(["value"] if args.metric else columns), "anomaly_score",
                    *["anomaly_channel"] * channel])
        w.writerows([t, *[sid] * by, *texts, "" if sc is None else repr(sc.score),
                     *[channel_of(sc, cfg.threshold)] * channel] for (t, texts, _, _, sid), sc in zip(rows, scores))
    finally:
        if out is not sys.stdout:
            out.close()
    return 0
