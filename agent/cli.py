"""`edge-agent`: the command line (docs/reference/commands.md).

Each subcommand lives in its own module and is imported only when used, so
`edge-agent events` starts fast and never loads the csp graphs.
Exit codes: 0 success, 2 usage or configuration error, 1 runtime failure.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import typing

from edgewatch.agent.config import ConfigError
from edgewatch.agent.kinds import EVENT_KINDS, LABELS, LEGACY_CODE, REASON_CODES, SEVERITIES
from edgewatch.common import __version__
from edgewatch.common.journal import error_line

FORMATS = ("table", "json", "csv")

# subcommand -> "module:function"; each function takes the parsed args and returns an exit code
HANDLERS = {
    "run": "edgewatch.agent.commands.run:run_command",
    "events": "edgewatch.agent.commands.events:events_command",
    "deadletters": "edgewatch.agent.commands.events:deadletters_command",
    "bars": "edgewatch.agent.commands.events:bars_command",
    "replay": "edgewatch.agent.commands.replay:replay_command",
    "score": "edgewatch.agent.commands.score:score_command",
    "demo": "edgewatch.agent.commands.demo:demo_command",
    "simulate": "edgewatch.agent.commands.simulate:simulate_command",
    "check-config": "edgewatch.agent.commands.check_config:check_config_command",
    "doctor": "edgewatch.agent.commands.doctor:doctor_command",
    "migrate": "edgewatch.agent.commands.migrate:migrate_command",
    "state": "edgewatch.agent.commands.state:state_command",
    "calibrate": "edgewatch.agent.commands.calibrate:calibrate_command",
    "label": "edgewatch.agent.commands.label:label_command",
    "labels": "edgewatch.agent.commands.events:labels_command",
}


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line naming the flag, exit 2, like every other usage error of the command."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default; options whose default is not a value say theirs in their help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, []) or "default:" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


CONFIG_HELP = "configuration file (default: built-in defaults, then EDGEWATCH_* variables)"
DB_HELP = "event log: a SQLite path or an SQLAlchemy URL (default: store.url of the configuration)"


def _command(sub, name: str, summary: str, description: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=summary, description=f"{summary[0].upper()}{summary[1:]}.\n\n{description}",
                          formatter_class=_Help)


def _table_options(parser: argparse.ArgumentParser) -> None:
    """Which columns of an input CSV are not metrics (`score`, and `calibrate`'s CSVs)."""
    parser.add_argument("--time-column", default="timestamp", metavar="NAME",
                        help="the CSV column of the readings' times, ISO 8601 or epoch seconds (default: timestamp)")
    parser.add_argument("--ignore", action="append", metavar="NAME",
                        help="a CSV column not to score, such as a label or an identifier; repeat for several (default: none)")
    parser.add_argument("--sensor-column", metavar="NAME",
                        help="the CSV column that names each row's sensor, for an export of many sensors in one file "
                             "(default: none: the file is one sensor's)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="edge-agent", description="Edgewatch edge agent",
                epilog="exit codes: 0 success, 1 runtime failure, 2 usage or configuration error")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = _command(sub, "run", "run the agent service",
                   "MQTT feeds in, csp analytics, events into the log and out on MQTT. SIGTERM/SIGINT stop it\n"
                   "cleanly, SIGHUP re-reads the configuration. The configuration is checked first\n"
                   "(as check-config does).")
    run.add_argument("--config", metavar="PATH", help=CONFIG_HELP)

    for name, summary, description in (
        ("events", "query the event log",
         "Read-only, safe while the agent writes. Times (T) are ISO-8601 or relative: 90s, 15m, 2h, 7d."),
        ("bars", "query the VWAP bars",
         "Read-only, as published on {output_prefix}/bars/{symbol}; --since/--until bound the bar's start."),
        ("deadletters", "query the dead letters",
         "The rejected input messages with their reasons, read-only. A payload that was not UTF-8\n"
         "text is kept base64-encoded, and its reason says so."),
    ):
        q = _command(sub, name, summary, description)
        q.add_argument("--db", metavar="URL|PATH", help=DB_HELP)
        q.add_argument("--config", metavar="PATH", help=CONFIG_HELP)
        if name == "events":
            q.add_argument("--kind", action="append", default=[], choices=EVENT_KINDS, metavar="K",
                           help=f"only this kind ({', '.join(EVENT_KINDS)}); repeatable (default: every kind)")
            q.add_argument("--key", action="append", default=[], metavar="KEY",
                           help="only this sensor id, symbol or other key, or the keys a topic filter takes "
                                "(plant1/#, plant1/+/pump); repeatable (default: every key)")
            q.add_argument("--group", metavar="NAME",
                           help="only the sensors of [anomaly.groups.NAME] or [health.groups.NAME] of the "
                                "configuration (default: every sensor)")
            q.add_argument("--severity", choices=SEVERITIES, help="only this severity (default: every severity)")
        if name == "bars":
            q.add_argument("--symbol", metavar="SYMBOL", help="only this symbol (default: every symbol)")
        if name == "deadletters":
            q.add_argument("--code", choices=(*REASON_CODES, LEGACY_CODE), metavar="CODE",
                           help=f"only this reason code ({', '.join(REASON_CODES)}; {LEGACY_CODE}: logged before "
                                "reasons had codes) (default: every code)")
        else:
            q.add_argument("--until", metavar="T", help=f"only {name} before T (default: no upper bound)")
            q.add_argument("--follow", action="store_true", help=f"keep printing new {name} (default: off)")
        q.add_argument("--agent", metavar="ID",
                       help="only rows this agent logged, by its agent.id (default: every agent's)")
        q.add_argument("--since", metavar="T", help="only rows at or after T (default: no lower bound)")
        q.add_argument("--limit", type=int, metavar="N", help="the N most recent rows (default: all)")
        q.add_argument("--format", choices=FORMATS, default="table", help="output format; json is JSON Lines")
        q.add_argument("--wide", action="store_true", help="table cells in full, never shortened (default: off)")

    lb = _command(sub, "label", "label an event a real finding or a false alarm",
                  "An operator's verdict, kept in the log beside the event (and after it, if retention deletes\n"
                  "the event): `labels` lists them, `calibrate --labels` weighs stricter settings against them.")
    lb.add_argument("event", metavar="EVENT", help="the event's id as `events` shows it, or its event_id")
    lb.add_argument("label", choices=(*LABELS, "none"), help="real (a finding to act on), false (a false alarm), "
                    "or none (take the label off)")
    lb.add_argument("--note", default="", metavar="TEXT", help="why, in a few words (default: none)")
    lb.add_argument("--db", metavar="URL|PATH", help=DB_HELP)
    lb.add_argument("--config", metavar="PATH", help=CONFIG_HELP)

    ls = _command(sub, "labels", "list the labels given to events",
                  "Read-only, oldest event first. Times (T) are ISO-8601 or relative: 90s, 15m, 2h, 7d.")
    ls.add_argument("--kind", action="append", default=[], choices=EVENT_KINDS, metavar="K",
                    help="only labels of events of this kind; repeatable (default: every kind)")
    ls.add_argument("--since", metavar="T", help="only events at or after T (default: no lower bound)")
    ls.add_argument("--until", metavar="T", help="only events before T (default: no upper bound)")
    ls.add_argument("--format", choices=FORMATS, default="table", help="output format; json is JSON Lines")
    ls.add_argument("--wide", action="store_true", help="table cells in full, never shortened (default: off)")
    ls.add_argument("--db", metavar="URL|PATH", help=DB_HELP)
    ls.add_argument("--config", metavar="PATH", help=CONFIG_HELP)

    rp = _command(sub, "replay", "run the graphs over capture files in event time",
                  "The live analytics over recorded input (files or folders of capture-*.jsonl), as fast as\n"
                  "the graphs allow; events already in the log are not written twice.")
    rp.add_argument("captures", nargs="+", metavar="CAPTURE", help="capture files or folders")
    rp.add_argument("--config", metavar="PATH", help=CONFIG_HELP)
    rp.add_argument("--db", metavar="URL|PATH", help=DB_HELP)

    sc = _command(sub, "score", "score a CSV (one or more metric columns) with the live anomaly detector",
                  "Reads a CSV (comma, semicolon or tab) with a time column and one or more metric columns;\n"
                  "writes timestamp,value,anomaly_score, one row per input row (with several metrics\n"
                  "the score is the sensor-level one that decides the live anomaly events).")
    sc.add_argument("input", metavar="INPUT.csv", help="the series to score")
    sc.add_argument("--metric", metavar="NAME",
                    help="score this column alone (default: every column but the time column and --ignore's)")
    _table_options(sc)
    sc.add_argument("--channel", action="store_true",
                    help="also an anomaly_channel column: on a row that raises an anomaly event, what surprised most "
                         "(a metric, METRIC:change, METRIC:spike, a~b) (default: off)")
    sc.add_argument("--out", metavar="OUT.csv", help="where to write the scores (default: standard output)")
    sc.add_argument("--config", metavar="PATH", help=CONFIG_HELP)
    sc.add_argument("--group", metavar="NAME", help="with the settings of [anomaly.groups.NAME] (default: [anomaly])")

    cb = _command(sub, "calibrate", "how many anomaly events recorded normal operation raises at stricter settings",
                  "Runs the live detector over the sensor readings of capture files (or CSVs, one sensor each)\n"
                  "once per step from the settings as they are to the strictest, counts the anomaly events per\n"
                  "sensor-hour (on normal operation every one is false) and names the least strict step within\n"
                  "--budget.")
    cb.add_argument("captures", nargs="+", metavar="CAPTURE|CSV",
                    help="capture files or folders, or CSVs in `score`'s format (one sensor each), of normal operation")
    cb.add_argument("--config", metavar="PATH", help=CONFIG_HELP)
    cb.add_argument("--group", metavar="NAME",
                    help="the sensors of [anomaly.groups.NAME], with its settings (default: those outside every "
                         "group, with [anomaly])")
    cb.add_argument("--budget", type=float, default=1.0, metavar="R",
                    help="false alarms per sensor-hour an operator can take")
    cb.add_argument("--faults", action="store_true",
                    help="also the share of faults injected into copies of the readings each step finds (a 4-sigma "
                         "step, a 6-sigma spike per sensor; three times the work) (default: off)")
    cb.add_argument("--labels", action="store_true",
                    help="alarms at readings labelled real in the log (`label`) are findings, not false alarms; "
                         "each step says how many labelled real and false it still raises (default: off)")
    cb.add_argument("--db", metavar="URL|PATH", help=DB_HELP + "; read for --labels")
    _table_options(cb)
    cb.add_argument("--json", action="store_true", help="one JSON object instead of text (default: off)")

    dm = _command(sub, "demo", "the whole system on this machine, nothing else needed",
                  "An embedded broker, the sidecar (when a model is shipped), the agent and a simulated\n"
                  "fleet with faults; ends with a summary of this run's events.")
    dm.add_argument("--duration", default="30s", metavar="D", help="how long to run (90s, 2m, ...)")
    dm.add_argument("--db", metavar="PATH", default="./edgewatch-demo.db",
                    help="the demo's event log, started afresh each run")
    dm.add_argument("--keep-log", action="store_true",
                    help="add to the log of earlier demos instead of starting afresh (default: off)")

    sm = _command(sub, "simulate", "publish simulated feeds to a broker",
                  "Sensor, market, portfolio and news feeds in real time (QoS 1). With --faults the injected\n"
                  "fault schedule is printed first as JSON lines: the ground truth to compare events with.")
    sm.add_argument("--broker", default="127.0.0.1:1883", metavar="HOST:PORT", help="the MQTT broker")
    sm.add_argument("--sensors", type=int, default=20, metavar="N", help="simulated sensors")
    sm.add_argument("--symbols", type=int, default=3, metavar="N", help="simulated market symbols")
    sm.add_argument("--rate", type=float, default=1.0, metavar="R", help="readings per sensor per second")
    sm.add_argument("--faults", action="store_true", help="inject labelled faults (default: off)")
    sm.add_argument("--duration", default="60s", metavar="D", help="how long to publish (90s, 2m, ...)")

    cc = _command(sub, "check-config", "validate a configuration file",
                  "Keys, types, ranges, the rules between keys, readable secret and certificate files, the\n"
                  "database driver; one line naming the bad key and exit 2, else a summary. Secret files\n"
                  "that others can read get a warning.")
    cc.add_argument("path", metavar="PATH", help="the configuration file")

    dr = _command(sub, "doctor", "check configuration, broker, log, sidecar",
                  "Probes what the service needs the way it uses it and says how to fix what fails.")
    dr.add_argument("--config", metavar="PATH", help=CONFIG_HELP)

    mg = _command(sub, "migrate", "bring the event log's schema to this version",
                  "What run does at start, and nothing else: every row is kept, agents starting together take\n"
                  "turns, and a log written by a newer release is refused (exit 2) and left as it is.")
    mg.add_argument("--db", metavar="URL|PATH", help=DB_HELP)
    mg.add_argument("--config", metavar="PATH", help=CONFIG_HELP)

    st = _command(sub, "state", "show the analytics' state snapshots and what the last start resumed from",
                  "Read-only. Per snapshot: when it was taken and its age, its size, the keys each analytic\n"
                  "holds, and whether the next start can resume from it (same agent, code and settings);\n"
                  "then which snapshot the last start restored and how old it was then.")
    st.add_argument("--db", metavar="URL|PATH", help=DB_HELP)
    st.add_argument("--config", metavar="PATH", help=CONFIG_HELP)
    st.add_argument("--json", action="store_true", help="one JSON object instead of text (default: off)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module, func = HANDLERS[args.command].split(":")
    try:
        return int(getattr(importlib.import_module(module), func)(args) or 0)
    except ConfigError as e:
        print(error_line(f"edge-agent {args.command}: configuration error: {e}", sys.stderr), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`| head`): stop quietly; stdout -> devnull so the flush at exit is silent too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
