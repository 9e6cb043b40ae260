"""Portfolio risk checks: drawdown, gross/net exposure, concentration, volatility-scaled exposure.

Checked on every position or P&L update and on every trade of a held symbol
(the event carries that data's time, so a replay reports what the live run
did), and on an engine-time timer as a safety net (the event carries the
engine time). A breach is reported once per crossing: a check fires when
its value reaches the limit and re-arms only once the value is back inside by
`rearm_fraction`, so a value hovering at the limit does not flood the log.

Exposure = position x last price; the last price is the last trade, or the
quote mid-price before any trade. A position with no price yet is left out of
every exposure figure (and listed in `data.unpriced`) until a price arrives:
guessing a price would invent risk, or hide it.
"""

from __future__ import annotations

from datetime import timedelta

import csp
from csp import ts
from edgewatch.agent.analytics.snapshot import keep, persisted
from edgewatch.agent.analytics.states import RecentStates
from edgewatch.agent.config import RiskConfig
from edgewatch.agent.records import Event, Pnl, Position, Quote, Trade, make_event

# check name -> (action, severity, limit key in RiskConfig)
CHECKS = {
    "drawdown": ("EMERGENCY_STOP", "critical", "max_drawdown"),
    "gross_exposure": ("REDUCE_POSITIONS", "warning", "max_gross_exposure"),
    "net_exposure": ("REDUCE_NET_EXPOSURE", "warning", "max_net_exposure"),
    "concentration": ("REDUCE_CONCENTRATION", "warning", "max_concentration"),
    "vol_exposure": ("REDUCE_RISK", "warning", "max_vol_exposure"),
}


@persisted
class Book:
    """The portfolio as the agent knows it: positions, last prices, vols, P&L and its high-water mark."""

    __slots__ = ("positions", "prices", "traded", "vols", "pnl", "hwm", "armed")

    def __init__(self, max_symbols: int = 10_000):
        # per symbol, each bounded: positions and prices arrive from anyone who can publish
        self.positions = RecentStates(max_symbols, "risk_positions")
        self.prices = RecentStates(max_symbols, "risk_prices")
        self.traded = RecentStates(max_symbols, "risk_traded")  # symbols priced by trades (quotes no longer override)
        self.vols = RecentStates(max_symbols, "risk_vols")
        self.pnl = None
        self.hwm = None
        self.armed = dict.fromkeys(CHECKS, True)

    def __len__(self) -> int:
        """Symbols the book knows (held or priced)."""
        return max(len(self.positions), len(self.prices))

    def figures(self, cfg: RiskConfig) -> tuple[dict, dict]:
        """Current value of every check that can be computed, plus the evidence shared by all."""
        values = {}
        if self.pnl is not None:
            values["drawdown"] = self.hwm - self.pnl
        gross = net = vol_exp = 0.0
        top_symbol, top = None, 0.0
        unpriced = []
        for symbol, qty in self.positions.items():
            price = self.prices.get(symbol)
            if price is None:
                if qty:
                    unpriced.append(symbol)
                continue
            exposure = qty * price
            gross += abs(exposure)
            net += exposure
            vol_exp += abs(exposure) * self.vols.get(symbol, 0.0)
            if abs(exposure) > top:
                top_symbol, top = symbol, abs(exposure)
        values["gross_exposure"] = gross
        values["net_exposure"] = abs(net)
        values["vol_exposure"] = vol_exp
        if gross >= cfg.concentration_min_gross and gross > 0:
            values["concentration"] = top / gross
        evidence = {
            "gross_exposure": gross, "net_exposure": net, "pnl": self.pnl, "high_water_mark": self.hwm,
            "largest_symbol": top_symbol, "unpriced": sorted(unpriced),
        }
        return values, evidence


def limits_of(book: Book, cfg: RiskConfig) -> dict:
    """Each enabled check's value, limit and whether it is breached (fired and not yet re-armed)."""
    values, _ = book.figures(cfg)
    out = {}
    for name, (action, _, limit_key) in CHECKS.items():
        limit = getattr(cfg, limit_key)
        if limit > 0:
            out[name] = {"action": action, "value": values.get(name, 0.0), "limit": limit,
                         "breached": not book.armed[name]}
    return out


def evaluate(book: Book, cfg: RiskConfig, when) -> list[Event]:
    """Run every check once; return the breaches that are new crossings. A limit of 0 disables its check."""
    values, evidence = book.figures(cfg)
    out = []
    for name, (action, severity, limit_key) in CHECKS.items():
        limit = getattr(cfg, limit_key)
        value = values.get(name)
        if value is None or limit <= 0:
            continue
        if book.armed[name] and value >= limit:
            book.armed[name] = False
            data = {"check": name, "action": action, "limit": limit, "value": value, **evidence}
            msg = f"{action}: {name.replace('_', ' ')} {value:,.4g} reached limit {limit:,.4g}"
            out.append(make_event("risk", "portfolio", when, severity, msg, data, name))
        elif not book.armed[name] and value < limit * (1.0 - cfg.rearm_fraction):
            book.armed[name] = True
    return out


@csp.node(memoize=False)
def risk_checks(
    trades: ts[list[Trade]],
    quotes: ts[list[Quote]],
    positions: ts[list[Position]],
    pnl: ts[list[Pnl]],
    vols: ts[dict],
    cfg: RiskConfig,
    max_symbols: int = 10_000,
    states: object = None,
) -> csp.Outputs(events=ts[list[Event]], limits=ts[dict]):
    """Keep the book current from every input; check it on position/P&L updates and on the timer.

    `limits` ticks after every check with `limits_of` the book: the advisor's risk gate reads it. The book is
    kept in `states` (a snapshot.StateBook, or None)."""
    with csp.alarms():
        a_check = csp.alarm(bool)
    with csp.state():
        s_book = keep(states, "risk", Book(max_symbols))
        s_interval = timedelta(seconds=cfg.check_interval) if cfg.check_interval > 0 else None
    with csp.start():
        if s_interval is not None:
            csp.schedule_alarm(a_check, s_interval, True)

    book = s_book
    if csp.ticked(quotes):
        for q in quotes:
            if q.symbol not in book.traded:
                book.prices[q.symbol] = (q.bid + q.ask) / 2.0
    out = []
    when = None
    if csp.ticked(trades):
        for t in trades:
            book.prices[t.symbol] = t.price
            book.traded[t.symbol] = True
            if book.positions.get(t.symbol):  # a held symbol's price moved: exposure changed at data time
                when = t.ts if when is None or t.ts > when else when
    if csp.ticked(vols):
        book.vols.update(vols)
    if csp.ticked(positions):
        for p in positions:
            book.positions[p.symbol] = p.quantity
            when = p.ts if when is None or p.ts > when else when
    if csp.ticked(pnl):
        for x in pnl:
            book.pnl = x.pnl
            book.hwm = x.pnl if book.hwm is None else max(book.hwm, x.pnl)
            out += evaluate(book, cfg, x.ts)  # every P&L point counts: a dip inside one batch is a dip
            when = x.ts if when is None or x.ts > when else when
    if csp.ticked(a_check):
        csp.schedule_alarm(a_check, s_interval, True)
        if when is None:
            when = csp.now()
    if when is not None:
        out += evaluate(book, cfg, when)
        csp.output(limits=limits_of(book, cfg))
    if out:
        csp.output(events=out)
