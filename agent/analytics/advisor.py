"""The trade advisor: news sentiment, the technical view and the risk state fused into BUY / SELL / HOLD.

Per symbol, two views in [-1, 1] are combined into one score:

- the technical view: the last closed bar's move against its regime-adaptive
  threshold (`z / threshold`, clipped to +-2 and halved, so a view of +-0.5 is
  exactly where the market node raises a signal);
- the news view: the latest headline's sentiment score (P(bullish) - P(bearish)
  from the sidecar), decaying as `exp(-age / news_horizon)`.

`score = signal_weight * technical + news_weight * news`; at `enter` or beyond
the advice is BUY or SELL, and it falls back to HOLD only below `exit`
(hysteresis, so a score hovering at the edge does not flap). The risk gate comes
last and is explicit: no BUY while an EMERGENCY_STOP or REDUCE_* is active or a
limit's headroom is under `min_headroom`, and no new SELL during an
EMERGENCY_STOP; the vetoed action and the reason are in `data`.

Advice is an event only when a symbol's action changes. Its time is the data
time of what changed it (the bar's end, the headline's time, the latest data
time seen for risk updates), so a replay gives the same advice ids as the live
run. The node never waits for the sidecar: sentiment arrives when it arrives,
and while the sidecar is degraded the advice is technical-only (`data.news`).
"""

from __future__ import annotations

import math
from datetime import datetime

import csp
from csp import ts

from edgewatch.agent.analytics.snapshot import keep, persisted
from edgewatch.agent.analytics.states import RecentStates
from edgewatch.agent.config import AdvisorConfig, ConfigError
from edgewatch.agent.records import Event, Sentiment, make_event

REDUCING = ("EMERGENCY_STOP", "REDUCE_POSITIONS", "REDUCE_NET_EXPOSURE", "REDUCE_CONCENTRATION", "REDUCE_RISK")


def check(cfg: AdvisorConfig) -> None:
    """Raise ConfigError naming the first [advisor] key that makes no sense."""
    for key in ("news_horizon", "signal_weight", "news_weight"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"advisor.{key}: must not be negative")
    if cfg.news_horizon == 0:
        raise ConfigError("advisor.news_horizon: must be positive")
    if cfg.signal_weight + cfg.news_weight <= 0:
        raise ConfigError("advisor.signal_weight: signal_weight + news_weight must be positive")
    if not 0 < cfg.enter <= 1:
        raise ConfigError("advisor.enter: must be in (0, 1]")
    if not 0 <= cfg.exit <= cfg.enter:
        raise ConfigError("advisor.exit: must be in [0, advisor.enter]")
    if not 0 <= cfg.min_headroom < 1:
        raise ConfigError("advisor.min_headroom: must be in [0, 1)")


@persisted
class SymbolView:
    """What the advisor knows of one symbol: its last technical view, its last headline, its advice."""

    __slots__ = ("technical", "news", "action")

    def __init__(self):
        self.technical = None  # the market node's view of the last closed bar (z, threshold, regime, at)
        self.news = None  # the latest Sentiment for this symbol
        self.action = "HOLD"


@persisted
class AdvisorState:
    """What the advisor remembers: a view per symbol, the risk state, the news status, the latest data time."""

    __slots__ = ("symbols", "limits", "status", "latest")

    def __init__(self, max_symbols: int):
        self.symbols = RecentStates(max_symbols, "advisor")  # headlines name symbols: bounded like market's
        self.limits = {}
        self.status = "ok"  # "degraded" while the sidecar's last answer was a degraded news event
        self.latest = None  # the latest data time seen: the time of advice that a risk update changes

    def __len__(self) -> int:
        return len(self.symbols)


def technical_view(view: dict | None) -> float:
    """The bar's move in units of its signal threshold, clipped to +-2 and halved into [-1, 1]."""
    if view is None or view["threshold"] <= 0:
        return 0.0
    return max(-2.0, min(2.0, view["z"] / view["threshold"])) / 2.0


def news_view(news: Sentiment | None, now: datetime, horizon: float) -> tuple[float, float]:
    """(decayed sentiment score, age in seconds); a headline from the future counts as fresh."""
    if news is None:
        return 0.0, math.inf
    age = max(0.0, (now - news.ts).total_seconds())
    return news.score * math.exp(-age / horizon), age


def gate(limits: dict, cfg: AdvisorConfig) -> tuple[str | None, str | None]:
    """What the risk state forbids right now: (why no BUY, why no SELL)."""
    return veto("BUY", limits, cfg), veto("SELL", limits, cfg)


def veto(action: str, limits: dict, cfg: AdvisorConfig) -> str | None:
    """Why the risk state forbids `action`, or None when it may stand."""
    if action == "HOLD":
        return None
    for name, lim in limits.items():
        if lim["breached"] and (action == "BUY" or lim["action"] == "EMERGENCY_STOP"):
            return f"{lim['action']} active ({name})"
    if action == "BUY":
        for name, lim in limits.items():
            headroom = 1.0 - lim["value"] / lim["limit"]
            if headroom < cfg.min_headroom:
                return f"{name} headroom {headroom:.0%} under {cfg.min_headroom:.0%}"
    return None


def advise(symbol: str, s: SymbolView, now: datetime, limits: dict, news_status: str,
           cfg: AdvisorConfig) -> Event | None:
    """Re-evaluate one symbol at data time `now`; an `advice` event when its action changes."""
    technical = technical_view(s.technical)
    use_news = news_status != "degraded"
    news, age = news_view(s.news, now, cfg.news_horizon) if use_news else (0.0, math.inf)
    score = cfg.signal_weight * technical + cfg.news_weight * news
    total = cfg.signal_weight + cfg.news_weight
    held = s.action != "HOLD" and abs(score) >= cfg.exit and (score > 0) == (s.action == "BUY")
    if abs(score) >= cfg.enter:
        wanted = "BUY" if score > 0 else "SELL"
    elif held:
        wanted = s.action
    else:
        wanted = "HOLD"
    reason = veto(wanted, limits, cfg)
    action = "HOLD" if reason else wanted
    if action == s.action:
        return None
    s.action = action
    confidence = min(1.0, abs(score) / total) if action != "HOLD" else max(0.0, 1.0 - abs(score) / cfg.enter)
    sentiment = None
    if s.news is not None and use_news:
        sentiment = {"score": s.news.score, "label": s.news.label, "confidence": s.news.confidence,
                     "age_s": age, "weighted": news}
    view = s.technical
    signal = None if view is None else {"z": view["z"], "threshold": view["threshold"], "regime": view["regime"],
                                        "trend": view["trend"], "weighted": technical}
    headroom = {name: 1.0 - lim["value"] / lim["limit"] for name, lim in limits.items()}
    data = {
        "action": action, "confidence": confidence, "score": score,
        "news": news_status if s.news is not None or news_status == "degraded" else "none",
        "sentiment": sentiment, "signal": signal, "headroom": headroom,
        "vetoed": {"action": wanted, "reason": reason} if reason else None,
    }
    why = f"; {wanted} vetoed: {reason}" if reason else ""
    message = f"{action} {symbol} (score {score:+.2f}, confidence {confidence:.0%}{why})"
    return make_event("advice", symbol, now, "warning" if reason else "info", message, data, action)


@csp.node(memoize=False)
def advisor(
    news: ts[list[Event]],
    sentiment: ts[list[Sentiment]],
    views: ts[dict],
    limits: ts[dict],
    cfg: AdvisorConfig,
    max_symbols: int = 10_000,
    states: object = None,
) -> ts[list[Event]]:
    """`advice` per symbol on every new bar view, headline sentiment or risk state that changes it; what it
    remembers is kept in `states` (a snapshot.StateBook, or None)."""
    with csp.state():
        s_state = keep(states, "advisor", AdvisorState(max_symbols))

    st = s_state
    s_symbols = st.symbols
    touched = {}  # symbol -> data time of this cycle's change
    if csp.ticked(news):
        st.status = "degraded" if news[-1].data.get("degraded") else "ok"
        for e in news:
            for symbol in e.data.get("symbols", ()):
                touched[symbol] = max(touched.get(symbol, e.ts), e.ts)
    if csp.ticked(sentiment):
        for n in sentiment:
            s = s_symbols.get(n.symbol)
            if s is None:
                s = s_symbols[n.symbol] = SymbolView()
            s.news = n
            touched[n.symbol] = max(touched.get(n.symbol, n.ts), n.ts)
    if csp.ticked(views):
        for symbol, view in views.items():
            s = s_symbols.get(symbol)
            if s is None:
                s = s_symbols[symbol] = SymbolView()
            s.technical = view
            touched[symbol] = max(touched.get(symbol, view["at"]), view["at"])
    for when in touched.values():
        st.latest = when if st.latest is None or when > st.latest else st.latest
    if csp.ticked(limits):
        gate_changed = gate(limits, cfg) != gate(st.limits, cfg)
        st.limits = limits
        if gate_changed and st.latest is not None:  # only a change of what the gate forbids can change advice
            for symbol in s_symbols:
                touched.setdefault(symbol, st.latest)
    out = []
    for symbol, when in touched.items():
        s = s_symbols.get(symbol)
        if s is not None:
            ev = advise(symbol, s, when, st.limits, st.status, cfg)
            if ev is not None:
                out.append(ev)
    if out:
        return out
