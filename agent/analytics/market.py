"""Market analytics per symbol: VWAP bars, regime, adaptive signals, fast price alerts.

All per-symbol state sits in one keyed node (a dict of `__slots__` objects,
O(1) per trade), because a csp.dynamic per symbol costs far more than the math.
Bars are cut on data time (`floor(ts / interval)`), so a replay and a live run
cut the same bars; an engine-time alarm closes bars of symbols that went quiet,
`bar_grace` after their end so that trades delayed in transit still count.
Regime and signals are computed once per closed bar, from the bar's VWAP, so
they too depend only on the data.

The price alert is its own tiny node: the cheap path sees every trade with one
dict lookup and a few float operations, never waiting behind bar or signal work.
It judges each move against the symbol's own tick-move scale, so a calm
large-cap alerts on a move a volatile small-cap makes every minute; and the move
since about a horizon ago against the symbol's typical move over that horizon,
so a slide of ticks each too small to alert still does. Steps of the horizon are
cut on data time too, so replay alerts where the live run did.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from fnmatch import fnmatchcase

import csp
from csp import ts
from edgewatch.agent.analytics.anomaly import ewma_alpha
from edgewatch.agent.analytics.snapshot import keep, persisted
from edgewatch.agent.analytics.states import RecentStates
from edgewatch.agent.config import ConfigError, MarketConfig
from edgewatch.agent.records import Bar, Event, Sentiment, Trade, make_event

EPOCH = datetime(1970, 1, 1)
SECONDS_PER_DAY = 86400.0


def bucket_of(when: datetime, interval: float) -> int:
    """Index of the bar that holds `when`: bars are aligned to the epoch, not to the first trade."""
    return math.floor((when - EPOCH).total_seconds() / interval)


def check(cfg: MarketConfig) -> None:
    """Raise ConfigError naming the first bad [market] key (called when the graph is wired)."""
    if cfg.bar_interval <= 0:
        raise ConfigError("market.bar_interval: must be positive")
    for key in ("fast_span", "slow_span", "vol_span", "vol_long_span", "price_alert_span"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"market.{key}: must be at least 1")
    if cfg.price_alert_threshold <= 0:
        raise ConfigError("market.price_alert_threshold: must be positive")
    if cfg.price_alert_multiple <= 0:
        raise ConfigError("market.price_alert_multiple: must be positive")
    if 0 < cfg.price_alert_horizon < 1:
        raise ConfigError(f"market.price_alert_horizon: must be 0 (off) or at least 1 second, "
                          f"got {cfg.price_alert_horizon:g}")
    if not cfg.price_alert_min_move < cfg.price_alert_threshold:
        raise ConfigError(f"market.price_alert_min_move: must be below market.price_alert_threshold "
                          f"({cfg.price_alert_threshold}), got {cfg.price_alert_min_move}")
    for symbol, floor in per_symbol(cfg.price_alert_thresholds, "price_alert_thresholds"):
        if not cfg.price_alert_min_move < floor:
            raise ConfigError(f"market.price_alert_thresholds: {symbol}: must be above market.price_alert_min_move "
                              f"({cfg.price_alert_min_move}), got {floor:g}")
    per_symbol(cfg.price_alert_multiples, "price_alert_multiples")


def per_symbol(text: str, key: str) -> list[tuple[str, float]]:
    """`SYMBOL=value,...` -> [(symbol or pattern, value)] in order (a pattern in shell syntax, `BTC-*`, stands for
    every symbol it matches); errors name the key."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        symbol, _, value = part.partition("=")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"market.{key}: expected SYMBOL=number, got {part!r}") from None
        if not symbol.strip() or not (math.isfinite(number) and number > 0):
            raise ConfigError(f"market.{key}: expected SYMBOL=number with a positive number, got {part!r}")
        out.append((symbol.strip(), number))
    return out


TICK_CLIP = 4.0  # a tick teaches the scale at most this many scales: a jump barely deafens the alert, a new regime still shows
HORIZON_STEPS = 6  # a horizon is tracked in sixths: its move runs from the last price a whole step back, 5/6 to 1 horizon ago


@persisted
class TickScale:
    """One symbol's last trade and its typical tick move: an EWMA of |move| between consecutive trades; and, for
    moves within a horizon, the last trade of each of its last HORIZON_STEPS steps (a ring: None before its first
    horizon, the alerting trade after a horizon alert) with the typical |move| over a horizon, one sample per step.
    The jumps alerted tick to tick are left out of horizon moves: `jumped` is the product of their price ratios,
    and each ring entry keeps its value then.

    The mean absolute move rather than a standard deviation: returns are heavy-tailed, and a mean of absolute
    values is the robust scale that costs one multiply-add. On a coarse price grid (a low-priced stock's cents)
    most trades print the last price again and a tiny move of the price behind them can show as one step, so a
    move is judged less one step of the grid: a single step never alerts by the multiple, however quiet the
    symbol was."""

    __slots__ = ("last", "floor", "multiple", "scale", "n", "grid", "step", "until", "ends", "then", "jumped",
                 "hscale", "hn", "hlim", "whole")

    def __init__(self, trade: Trade, p: AlertParams):
        self.last = trade  # the previous trade (its time is read only when an alert needs it)
        self.floor, self.multiple = p.of(trade.symbol)  # its price_alert_threshold and price_alert_multiple
        self.scale = 0.0
        self.n = 0  # moves learnt
        self.grid = math.inf  # the smallest change of its price seen: one step of its price grid, a cent
        step = (trade.ts - EPOCH) // p.step if p.step else 0
        self.step = step  # the horizon step of `last` ...
        self.until = EPOCH + (step + 1) * p.step if p.step else None  # ... which ends here
        self.ends: list[tuple[Trade, float] | None] = [None] * HORIZON_STEPS  # step k's (last trade, jumped) at
        self.then: tuple[Trade, float] | None = None  # k % HORIZON_STEPS; this step's horizon moves run from then
        self.jumped = 1.0
        self.hscale = 0.0
        self.hn = 0  # horizon moves learnt
        self.hlim = math.inf  # the horizon move that alerts (none while the typical one is learnt)
        self.whole = step  # the first step whose horizon move starts a whole horizon back (see _anchor)


class AlertParams:
    """Constants of the price alert, derived once from MarketConfig."""

    __slots__ = ("floor", "multiple", "floors", "multiples", "min_move", "warmup", "alpha", "horizon", "step",
                 "hmultiple", "gap", "gap_steps")

    def __init__(self, cfg: MarketConfig):
        self.floor = cfg.price_alert_threshold
        self.multiple = cfg.price_alert_multiple
        self.floors = per_symbol(cfg.price_alert_thresholds, "price_alert_thresholds")
        self.multiples = per_symbol(cfg.price_alert_multiples, "price_alert_multiples")
        self.min_move = cfg.price_alert_min_move
        self.warmup = cfg.price_alert_span
        self.alpha = ewma_alpha(cfg.price_alert_span)
        self.horizon = cfg.price_alert_horizon  # seconds (0: off)
        self.step = timedelta(seconds=self.horizon / HORIZON_STEPS) if self.horizon > 0 else None
        self.hmultiple = cfg.price_alert_horizon_multiple
        self.gap = timedelta(seconds=cfg.session_gap)
        self.gap_steps = self.step is not None and self.gap >= self.step  # a gap then ends a horizon step

    def of(self, symbol: str) -> tuple[float, float]:
        """The symbol's floor and tick multiple: its own (`price_alert_thresholds`, `price_alert_multiples`: the
        first entry that names or matches it), else the section's."""
        floor = next((v for pattern, v in self.floors if fnmatchcase(symbol, pattern)), self.floor)
        multiple = next((v for pattern, v in self.multiples if fnmatchcase(symbol, pattern)), self.multiple)
        return floor, multiple


def _price_alert(t: Trade, prev: Trade, move: float, scale: float | None, s: TickScale, p: AlertParams,
                 horizon: float | None = None, jumps: float = 0.0) -> Event:
    """The event for one large move since `prev`: the previous trade, or with `horizon` (seconds) the last trade
    about a horizon ago (`jumps`: the move of the jumps alerted since, left out of `move`); `scale` None while the
    symbol's tick scale is still being learnt."""
    size = abs(move)
    multiple = size / scale if scale else None
    alert_multiple = p.hmultiple if horizon else s.multiple
    big = size > 2.0 * s.floor or (multiple is not None and multiple >= 2.0 * alert_multiple)
    data = {
        "price": t.price, "prev_price": prev.price, "move": move, "scale": scale, "multiple": multiple,
        "threshold": None if horizon else s.floor, "alert_multiple": alert_multiple,
        "prev_ts": prev.ts.isoformat() + "Z", "size": t.size, "horizon": horizon,
        "jumps": jumps if horizon else None,
    }
    unit = f"its {horizon:g}-s" if horizon else "its tick"
    times = f", {multiple:.0f}x {unit} scale {scale:.3%}" if multiple is not None else ""
    span = f"in {(t.ts - prev.ts).total_seconds():.0f} s" if horizon else "in one trade"
    msg = f"{t.symbol} moved {move:+.2%} {span} ({prev.price:g} -> {t.price:g}{times})"
    return make_event("price_alert", t.symbol, t.ts, "critical" if big else "warning", msg, data, prev.price, t.price,
                      *((horizon,) if horizon else ()))


def _learned(scale: float, n: int, size: float, p: AlertParams) -> float:
    """A typical |move| (of `n` so far) after one more of `size`: the plain mean until the EWMA has a span of
    moves, then the EWMA of moves clipped at TICK_CLIP scales (never below `min_move`: a flat symbol's scale of
    0 must still be able to grow)."""
    if n < p.warmup:
        return scale + (size - scale) / (n + 1)
    lim = TICK_CLIP * scale
    if lim < p.min_move:
        lim = p.min_move
    return scale + p.alpha * ((size if size < lim else lim) - scale)


def _next_step(s: TickScale, t: Trade, p: AlertParams) -> None:
    """Trading moved on to the horizon step of `t`: the steps since the last trade end at it (a quiet step ends
    where the last one did), and the step that ended with a trade teaches the typical horizon move, one sample a
    step however busy the symbol."""
    ends, last, k = s.ends, (s.last, s.jumped), HORIZON_STEPS
    if s.then is not None and s.step >= s.whole:
        s.hscale = _learned(s.hscale, s.hn, abs(_horizon_move(s, s.last.price)), p)
        s.hn += 1
        if s.hn >= p.warmup:
            s.hlim = max(p.hmultiple * s.hscale, p.min_move)
    step = (t.ts - EPOCH) // p.step
    for j in range(max(s.step, step - k), step):
        ends[j % k] = last
    s.step = step
    s.until = EPOCH + (step + 1) * p.step
    s.then = ends[step % k]


def _horizon_move(s: TickScale, price: float) -> float:
    """The move from the trade this step's horizon runs from to `price`, without the jumps alerted tick to tick
    since (they were alerted once; a slide around them still counts)."""
    then, jumped = s.then
    return price / then.price * (jumped / s.jumped) - 1.0


def _anchor(s: TickScale, t: Trade) -> None:
    """After a horizon alert, or a trade after a pause (not a tick), horizon moves run from that trade for a
    horizon: a move is alerted once (again only once it has gone as far again). Those partial moves do not teach
    the typical horizon move."""
    s.ends[:] = [(t, s.jumped)] * HORIZON_STEPS
    s.then = s.ends[0]
    s.whole = s.step + HORIZON_STEPS


@csp.node(memoize=False)
def price_alerts(trades: ts[list[Trade]], cfg: MarketConfig, states: object = None) -> ts[list[Event]]:
    """`price_alert` when a symbol's move between consecutive trades (in arrival order) is large: beyond
    `price_alert_multiple` times its own tick-move scale (and at least `price_alert_min_move`), or beyond the
    fixed `price_alert_threshold`, which always alerts (a symbol named in `price_alert_multiples` or
    `price_alert_thresholds` has its own); or, with `price_alert_horizon`, when its move since the
    last trade about a horizon ago is `price_alert_horizon_multiple` times its own typical horizon move (a slide
    of ticks each too small to alert). One alert per move: a jump is not alerted again as a horizon move. A trade
    more than `session_gap` after the symbol's last (the open after a closed night, a halt, a feed outage) is
    not a tick: only the fixed threshold judges its move, which teaches no scale, and the horizon starts again from
    it; otherwise every open would alert on every symbol that gapped. (Hot path: one dict lookup, two datetime
    comparisons and a few float operations.)"""
    with csp.state():
        s_symbols = keep(states, "price_alerts", RecentStates(cfg.max_symbols, "price_alerts"))  # symbol -> TickScale
        s_params = AlertParams(cfg)
    p = s_params
    symbols = s_symbols
    horizon = p.step is not None
    out = []
    for t in trades:
        s = symbols.get(t.symbol)
        if s is None:
            symbols[t.symbol] = TickScale(t, p)
            continue
        prev = s.last
        price, before = t.price, prev.price
        move = price / before - 1.0
        size = move if move >= 0.0 else -move
        scale, n = s.scale, s.n
        # a trade within its horizon step is a tick; only one that ends a step has its pause measured
        tick = (p.gap_steps and t.ts < s.until) or t.ts - prev.ts <= p.gap
        jump = size > s.floor or (tick and size >= p.min_move and n >= p.warmup
                                  and size - (s.grid / before if s.grid < math.inf else 0.0) >= s.multiple * scale)
        if jump:
            out.append(_price_alert(t, prev, move, scale if n >= p.warmup else None, s, p))
        if horizon:
            if t.ts >= s.until:  # (a trade older than its step, out of order, moves no step back)
                _next_step(s, t, p)
            if not tick:
                _anchor(s, t)
            elif jump:  # alerted as a jump: left out of the horizon moves (a slide around it still counts)
                s.jumped *= price / before
            elif s.then is not None:
                hmove = _horizon_move(s, price)
                if hmove >= s.hlim or -hmove >= s.hlim:
                    then, jumped = s.then
                    out.append(_price_alert(t, then, hmove, s.hscale, s, p, p.horizon, s.jumped / jumped - 1.0))
                    _anchor(s, t)
        if tick:
            s.scale = _learned(scale, n, size, p)
            s.n = n + 1
            step = size * before
            if 0.0 < step < s.grid:
                s.grid = step
        s.last = t
    if out:
        return out


@persisted
class SymbolState:
    """One symbol: the open bar plus the running statistics that define its regime."""

    __slots__ = (
        "bucket", "closed", "start", "open", "high", "low", "close", "volume", "pv", "trades",
        "ref", "fast", "slow", "mean_r", "var", "var_long", "avg_volume", "bars", "last_signal", "news", "view",
        "ended",
    )

    def __init__(self):
        self.bucket = None  # index of the open bar; None when no bar is open
        self.closed = None  # index of the last bar cut: bars never reopen
        self.ref = None  # VWAP of the previous closed bar
        self.fast = self.slow = None
        self.mean_r = self.var = self.var_long = 0.0
        self.avg_volume = 0.0
        self.bars = 0
        self.last_signal = None  # data time of the last signal (cooldown)
        self.news = None  # (score, ts) of the latest sentiment
        self.view = None  # the technical view of the last closed bar (after warm-up), for the advisor
        self.ended = None  # the end of the last bar folded in (a session gap follows it)

    def add(self, t: Trade, bucket: int, interval: float) -> None:
        if self.bucket is None:
            self.bucket = bucket
            self.start = EPOCH + timedelta(seconds=bucket * interval)
            self.open = self.high = self.low = t.price
            self.volume = self.pv = 0.0
            self.trades = 0
        # a late trade (older than the open bar) is counted in the open bar
        self.high = max(self.high, t.price)
        self.low = min(self.low, t.price)
        self.close = t.price
        self.volume += t.size
        self.pv += t.price * t.size
        self.trades += 1

    def cut(self, symbol: str, interval: float) -> Bar:
        vwap = self.pv / self.volume if self.volume > 0 else self.close
        bar = Bar(
            symbol=symbol, start=self.start, end=self.start + timedelta(seconds=interval),
            open=self.open, high=self.high, low=self.low, close=self.close,
            volume=self.volume, vwap=vwap, trades=self.trades,
        )
        self.closed = self.bucket
        self.bucket = None
        return bar


class MarketParams:
    """Constants derived once from MarketConfig."""

    __slots__ = ("cfg", "a_fast", "a_slow", "a_vol", "a_long", "lag", "news_window", "cooldown", "mult", "per_day",
                 "gap")

    def __init__(self, cfg: MarketConfig):
        self.cfg = cfg
        self.a_fast = ewma_alpha(cfg.fast_span)
        self.a_slow = ewma_alpha(cfg.slow_span)
        self.a_vol = ewma_alpha(cfg.vol_span)
        self.a_long = ewma_alpha(cfg.vol_long_span)
        # a random walk strays from its EWMA by about sigma * sqrt(lag); z-scores divide by that
        self.lag = math.sqrt((cfg.slow_span + 1.0) / 2.0)
        self.news_window = timedelta(seconds=cfg.news_window)
        self.cooldown = timedelta(seconds=cfg.signal_cooldown)
        self.mult = {"volatile": cfg.volatile_mult, "calm": cfg.calm_mult, "trending": cfg.trending_mult, "normal": 1.0}
        self.per_day = math.sqrt(SECONDS_PER_DAY / cfg.bar_interval)
        self.gap = timedelta(seconds=cfg.session_gap)


def classify(vol_ratio: float, trend: float, cfg: MarketConfig) -> str:
    """The regime label that scales the signal threshold."""
    if vol_ratio >= cfg.volatile_ratio:
        return "volatile"
    if abs(trend) >= cfg.trend_z:
        return "trending"
    if vol_ratio <= cfg.calm_ratio:
        return "calm"
    return "normal"


def on_bar(s: SymbolState, bar: Bar, p: MarketParams) -> Event | None:
    """Fold a closed bar into the symbol's statistics; return a `signal` event when one fires. The first bar of
    a session (after `session_gap` without a bar) restarts the references from its price: the overnight move is
    not a bar's move, and judged as one it would signal at every open and pass for volatility."""
    price = bar.vwap
    ended, s.ended = s.ended, bar.end
    if s.ref is None:
        s.ref = s.fast = s.slow = price
        s.avg_volume = bar.volume
        s.bars = 1
        return None
    if ended is not None and bar.start - ended > p.gap:
        s.ref = s.fast = s.slow = price
        return None
    r = math.log(price / s.ref)
    s.ref = price
    # the move is judged against the volatility known before it, so a jump cannot hide itself;
    # variance is taken around the mean return, so a steady trend does not pass for volatility
    sigma = math.sqrt(s.var)
    d = r - s.mean_r
    s.mean_r += p.a_vol * d
    s.var = (1.0 - p.a_vol) * (s.var + p.a_vol * d * d)
    s.var_long += p.a_long * (d * d - s.var_long)
    slow_before = s.slow
    s.fast += p.a_fast * (price - s.fast)
    s.slow += p.a_slow * (price - s.slow)
    volume_ratio = bar.volume / s.avg_volume if s.avg_volume > 0 else 1.0
    s.avg_volume += p.a_slow * (bar.volume - s.avg_volume)
    s.bars += 1
    cfg = p.cfg
    if s.bars < cfg.warmup_bars or sigma <= 0.0 or s.var_long <= 0.0:
        return None
    scale = sigma * p.lag
    z = math.log(price / slow_before) / scale
    trend = math.log(s.fast / s.slow) / scale
    vol_ratio = sigma / math.sqrt(s.var_long)
    regime = classify(vol_ratio, trend, cfg)
    threshold = cfg.signal_z * p.mult[regime]
    s.view = {"z": z, "threshold": threshold, "regime": regime, "trend": trend, "at": bar.end}
    if abs(z) < threshold or (s.last_signal is not None and bar.end - s.last_signal < p.cooldown):
        return None
    side = "BUY" if z > 0 else "SELL"
    news = None
    if s.news is not None and bar.end - s.news[1] <= p.news_window:
        news = s.news[0]
    agrees = news is not None and abs(news) >= cfg.news_min_score and (news > 0) == (z > 0)
    strong = (
        abs(z) >= threshold * cfg.strong_mult
        and volume_ratio >= cfg.strong_volume
        and (agrees or not cfg.strong_requires_news)
    )
    signal = ("STRONG_" + side) if strong else side
    s.last_signal = bar.end
    data = {
        "signal": signal, "regime": regime, "threshold": threshold, "z": z, "reference_price": price,
        "volatility": sigma, "daily_volatility": sigma * p.per_day, "vol_ratio": vol_ratio, "trend": trend,
        "volume_ratio": volume_ratio, "news_score": news, "news_agrees": agrees,
        "bar_start": bar.start.isoformat() + "Z",
    }
    msg = f"{signal} {bar.symbol} at {price:g}: move {z:+.2f} vs threshold {threshold:.2f} ({regime})"
    return make_event("signal", bar.symbol, bar.end, "warning" if strong else "info", msg, data, signal)


def _next_boundary(now: datetime, interval: float) -> datetime:
    """The first bar boundary strictly after `now`; float rounding never yields the past."""
    boundary = EPOCH + timedelta(seconds=(bucket_of(now, interval) + 1) * interval)
    return boundary if boundary > now else now + timedelta(microseconds=1)


@csp.node(memoize=False)
def market_analytics(
    trades: ts[list[Trade]], sentiment: ts[list[Sentiment]], cfg: MarketConfig, states: object = None
) -> csp.Outputs(bars=ts[list[Bar]], signals=ts[list[Event]], vols=ts[dict], views=ts[dict]):
    """VWAP bars and regime-adaptive signals per symbol; `vols` = symbol -> daily realised volatility,
    `views` = symbol -> the technical view (z, threshold, regime) of the bar that just closed."""
    with csp.alarms():
        a_close = csp.alarm(bool)
    with csp.state():
        s_symbols = keep(states, "market", RecentStates(cfg.max_symbols, "market"))
        s_params = MarketParams(cfg)
        s_interval = timedelta(seconds=cfg.bar_interval)
        s_grace = timedelta(seconds=cfg.bar_grace)
    with csp.start():
        now = csp.now()
        csp.schedule_alarm(a_close, _next_boundary(now - s_grace, cfg.bar_interval) + s_grace - now, True)

    bars = []
    if csp.ticked(sentiment):
        for n in sentiment:
            s = s_symbols.get(n.symbol)
            if s is None:
                s = s_symbols[n.symbol] = SymbolState()
            s.news = (n.score, n.ts)
    if csp.ticked(trades):
        interval = cfg.bar_interval
        for t in trades:
            s = s_symbols.get(t.symbol)
            if s is None:
                s = s_symbols[t.symbol] = SymbolState()
            b = bucket_of(t.ts, interval)
            if s.closed is not None and b <= s.closed:
                b = s.closed + 1  # its bar was already cut (trade delayed past bar_grace): it joins the next
            if s.bucket is not None and b > s.bucket:
                bars.append(s.cut(t.symbol, interval))
            s.add(t, b, interval)
    if csp.ticked(a_close):
        # bars of symbols that went quiet close `bar_grace` after their end: a trade delayed in transit
        # still lands in its own bar, live as in a replay
        now = csp.now()
        for symbol, s in s_symbols.items():
            if s.bucket is not None and s.start + s_interval + s_grace <= now:
                bars.append(s.cut(symbol, cfg.bar_interval))
        csp.schedule_alarm(a_close, _next_boundary(now - s_grace, cfg.bar_interval) + s_grace - now, True)
    if bars:
        signals = []
        vols = {}
        views = {}
        for bar in bars:
            s = s_symbols.get(bar.symbol)
            if s is None:  # forgotten (state cap) since its bar was cut in this cycle: the bar stands alone
                continue
            ev = on_bar(s, bar, s_params)
            if ev is not None:
                signals.append(ev)
            if s.var > 0.0:
                vols[bar.symbol] = math.sqrt(s.var) * s_params.per_day
            if s.view is not None and s.view["at"] == bar.end:
                views[bar.symbol] = s.view
        csp.output(bars=bars)
        if signals:
            csp.output(signals=signals)
        if vols:
            csp.output(vols=vols)
        if views:
            csp.output(views=views)

