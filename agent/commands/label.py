"""`edge-agent label`: an operator's verdict on one event, a real finding or a false alarm, kept in the log.

The detector's settings were chosen on public benchmarks; only a site's own verdicts say how they do on its
machines. A label names the event by the log id `edge-agent events` shows (or by its event_id) and keeps the
event's kind, key and time, so it outlives the event's retention. `edge-agent labels` lists them, and
`edge-agent calibrate --labels` weighs stricter settings against them: how many alarms labelled real each
step still raises, and how many labelled false it no longer does.
"""

from __future__ import annotations

from edgewatch.agent.commands.logfile import failed, with_log
from edgewatch.agent.eventlog.store import Store


def label_command(args) -> int:
    """`edge-agent label EVENT real|false|none [--note TEXT] [--db URL|PATH] [--config PATH]`."""
    verdict = None if args.label == "none" else args.label

    def body(store: Store) -> int | None:
        row = store.label(args.event, verdict, args.note)
        if row is None:
            return failed("label", f"{args.event}: no such event in {store.display_url} (give the id "
                          "`edge-agent events` shows)", 2)
        said = "label taken off" if verdict is None else f"labelled {verdict}"
        print(f"event {row['id']} ({row['kind']} {row['key']} at {row['ts']}): {said}")
        return None

    return with_log("label", args, body, readonly=False)
