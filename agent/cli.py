"""`edge-agent`: the command line (SPEC §3).

Each subcommand lives in its own module and is imported only when used, so
`edge-agent events` starts fast and never loads the csp graphs.
Exit codes: 0 success, 2 usage or configuration error, 1 runtime failure.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from edgewatch.agent.config import ConfigError
from edgewatch.common import __version__

FORMATS = ("table", "json", "csv")

# subcommand -> "module:function"; each function takes the parsed args and returns an exit code
HANDLERS = {
    "run": "edgewatch.agent.commands.run:run_command",
    "events": "edgewatch.agent.commands.events:events_command",
    "deadletters": "edgewatch.agent.commands.events:deadletters_command",
    "replay": "edgewatch.agent.commands.replay:replay_command",
    "score": "edgewatch.agent.commands.score:score_command",
    "demo": "edgewatch.agent.commands.demo:demo_command",
    "simulate": "edgewatch.agent.commands.simulate:simulate_command",
    "check-config": "edgewatch.agent.commands.check_config:check_config_command",
    "doctor": "edgewatch.agent.commands.doctor:doctor_command",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-agent", description="Edgewatch edge agent")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the agent service")
    run.add_argument("--config", metavar="PATH")

    for name, helptext in (("events", "query the event log"), ("deadletters", "query the dead letters")):
        q = sub.add_parser(name, help=helptext)
        q.add_argument("--db", metavar="URL|PATH", help="event log (default: store.url of the configuration)")
        q.add_argument("--config", metavar="PATH")
        if name == "events":
            q.add_argument("--kind", action="append", default=[], metavar="K")
            q.add_argument("--key", metavar="KEY")
            q.add_argument("--severity", choices=("info", "warning", "critical"))
            q.add_argument("--until", metavar="T")
            q.add_argument("--follow", action="store_true", help="keep printing new events")
        q.add_argument("--since", metavar="T", help="ISO-8601 or relative: 90s, 15m, 2h, 7d")
        q.add_argument("--limit", type=int, metavar="N")
        q.add_argument("--format", choices=FORMATS, default="table")

    rp = sub.add_parser("replay", help="run the graphs over capture files in event time")
    rp.add_argument("captures", nargs="+", metavar="CAPTURE")
    rp.add_argument("--config", metavar="PATH")
    rp.add_argument("--db", metavar="URL|PATH")

    sc = sub.add_parser("score", help="score a CSV (one or more metric columns) with the live anomaly detector")
    sc.add_argument("input", metavar="INPUT.csv")
    sc.add_argument("--metric", metavar="NAME", help="score this column alone (default: every column but timestamp)")
    sc.add_argument("--out", metavar="OUT.csv", help="default: standard output")
    sc.add_argument("--config", metavar="PATH")

    dm = sub.add_parser("demo", help="the whole system on this machine, nothing else needed")
    dm.add_argument("--duration", default="30s", metavar="D")
    dm.add_argument("--db", metavar="PATH", default="./edgewatch-demo.db")

    sm = sub.add_parser("simulate", help="publish simulated feeds to a broker")
    sm.add_argument("--broker", default="127.0.0.1:1883", metavar="HOST:PORT")
    sm.add_argument("--sensors", type=int, default=20, metavar="N")
    sm.add_argument("--symbols", type=int, default=3, metavar="N")
    sm.add_argument("--rate", type=float, default=1.0, metavar="R", help="readings per sensor per second")
    sm.add_argument("--faults", action="store_true", help="inject labelled faults")
    sm.add_argument("--duration", default="60s", metavar="D")

    cc = sub.add_parser("check-config", help="validate a configuration file")
    cc.add_argument("path", metavar="PATH")

    dr = sub.add_parser("doctor", help="check configuration, broker, log, sidecar")
    dr.add_argument("--config", metavar="PATH")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module, func = HANDLERS[args.command].split(":")
    try:
        return int(getattr(importlib.import_module(module), func)(args) or 0)
    except ConfigError as e:
        print(f"edge-agent {args.command}: configuration error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
