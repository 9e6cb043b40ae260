"""`edge-agent state`: the analytics' state snapshots in the log, and what the last start that resumed from one used.

Read-only, like the other query verbs. A snapshot is usable when it is this agent's (`agent.id`), the
code is the one it was taken with, and the configuration given here leaves at least one of its states as it
was built (the same rule `run` applies at start); it says which states would start fresh, and why a snapshot
is not usable. A start that resumed from none leaves no trace here: its log says
why (`state_not_restored`).
"""

from __future__ import annotations

import json

from edgewatch.agent import config
from edgewatch.agent.commands.logfile import with_log
from edgewatch.agent.commands.run import snapshot_identity
from edgewatch.agent.eventlog.snapshots import Identity, fresh_reason
from edgewatch.agent.eventlog.store import Store
from edgewatch.agent.timeutil import isoformat, utcnow
from edgewatch.common import logs


def report(store: Store, ident: Identity) -> dict:
    """The snapshots in the log (newest first) and the last restore, as `--json` prints them."""
    now = utcnow()
    rows = []
    for r in store.snapshots():
        why = ident.refusal(r) if r["agent"] == ident.agent else f"another agent's ({r['agent']})"
        stale = ident.stale(r) if why is None else {}
        rows.append({
            "id": r["id"], "agent": r["agent"], "taken_at": isoformat(r["taken_at"]),
            "age_seconds": round((now - r["taken_at"]).total_seconds(), 1), "saved_at": isoformat(r["saved_at"]),
            "version": r["version"], "bytes": r["size"], "keys": r["keys"], "usable": why is None, "why_not": why,
            "fresh": stale,
            "restored_at": isoformat(r["restored_at"]) if r["restored_at"] else None,
        })
    ours = [r for r in store.snapshots(ident.agent) if r["restored_at"] is not None]
    last = max(ours, key=lambda r: r["restored_at"], default=None)
    restore = None if last is None else {
        "snapshot": last["id"], "restored_at": isoformat(last["restored_at"]), "taken_at": isoformat(last["taken_at"]),
        "age_at_restore_seconds": round((last["restored_at"] - last["taken_at"]).total_seconds(), 1),
        "keys": last["keys"],
    }
    return {"agent": ident.agent, "log": store.display_url, "snapshots": rows, "last_restore": restore}


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _text(rep: dict) -> str:
    lines = []
    mine = [s for s in rep["snapshots"] if s["agent"] == rep["agent"]]
    if not mine:
        lines.append(f"no state snapshot of agent {rep['agent']} in {rep['log']}: its next start warms up from the "
                     "captures (record.warm_start) or starts cold")
    for s in rep["snapshots"]:
        verdict = "usable at the next start" if s["usable"] else f"not usable: {s['why_not']}"
        if s["fresh"]:
            verdict += "; these start fresh: " + fresh_reason(s["fresh"])
        keys = ", ".join(f"{k} {v}" for k, v in s["keys"].items()) or "nothing"
        lines.append(f"snapshot {s['id']} of {s['agent']}: taken {s['taken_at']} ({s['age_seconds']:.0f} s ago), "
                     f"{_size(s['bytes'])}; {verdict}")
        lines.append(f"  keys: {keys}")
    r = rep["last_restore"]
    if r is not None:
        lines.append(f"the last start that resumed from a snapshot ({r['restored_at']}) used snapshot {r['snapshot']}, "
                     f"taken {r['age_at_restore_seconds']:.0f} s before it, and re-ran the captures received after it")
    elif mine:
        lines.append("no start has resumed from these snapshots yet")
    return "\n".join(lines)


def state_command(args) -> int:
    """`edge-agent state [--config PATH] [--db URL] [--json]`."""
    logs.setup("warning", stream="stderr")  # stdout carries the answer alone
    cfg = config.load(args.config)
    ident = snapshot_identity(cfg)

    def body(store: Store) -> None:
        rep = report(store, ident)
        print(json.dumps(rep) if args.json else _text(rep))

    args.db = args.db or cfg.store.url  # the configuration is loaded once
    return with_log("state", args, body)
