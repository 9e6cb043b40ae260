"""A deterministic simulator of the agent's inputs, with a ground-truth fault schedule.

Sensors report temperature, humidity, pressure and battery; some get one fault
each: spikes, drift, a stuck value, a dropout, extra noise, a draining battery or
impossible readings. Symbols trade as random walks that switch between calm,
volatile and trending regimes (with occasional jumps), with quotes, positions,
cumulative P&L and headlines from a small built-in list. The same seed gives the
same messages and the same faults, so tests can check each fault is found.

Messages are the topics and JSON payloads of docs/reference/topics.md (with `ts`), in time order.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import json
import math
import random
from collections.abc import Iterator
from datetime import datetime, timedelta

from edgewatch.agent.timeutil import isoformat

# fault kind -> the maintenance reason (or event kind) that should report it
FAULT_REASONS = {
    "spike": "anomaly_burst",
    "drift": "drift",
    "stuck": "stuck",
    "dropout": "stale",
    "noisy": "noisy",
    "battery": "low_battery",
    "out_of_range": "out_of_range",
    "price_jump": "price_alert",
}
FAULT_READINGS = (90, 180)  # a sensor fault lasts between these many readings
FAULT_GAP = 30  # readings of normal operation, at least, after a fault before the run ends
SENSOR_FAULTS = ("spike", "drift", "stuck", "dropout", "noisy", "battery", "out_of_range")
REASONS_OF_SENSORS = frozenset(FAULT_REASONS[k] for k in SENSOR_FAULTS)

# metric -> (low, high) of the healthy base level, noise standard deviation, impossible reading
METRICS = {
    "temperature": ((18.0, 26.0), 0.1, -127.0),
    "humidity": ((35.0, 60.0), 0.5, 255.0),
    "pressure": ((1005.0, 1020.0), 0.3, 0.0),
}

# the simulated fleet's physical ranges, as its operator would configure them (`health.ranges`): the agent assumes
# none from a metric's name, so whatever expects `out_of_range` from the simulator sets these
RANGES = "temperature=-40:85,humidity=0:100,pressure=300:1100,battery=0:100"

SYMBOLS = ("AAPL", "MSFT", "NVDA", "AMZN", "GOOG", "TSLA", "JPM", "XOM", "META", "NFLX")

# (template, sentiment): realistic finance headlines, {sym} is the symbol
HEADLINES = (
    ("{sym} beats quarterly earnings estimates and raises full-year guidance", 1),
    ("{sym} shares jump after regulator approves flagship product", 1),
    ("Analysts upgrade {sym} to buy, citing strong demand and margin expansion", 1),
    ("{sym} announces $10 billion share buyback program", 1),
    ("{sym} wins multi-year contract with major government agency", 1),
    ("{sym} misses revenue forecast as sales slow in key markets", -1),
    ("{sym} cuts outlook, warns of supply chain disruptions", -1),
    ("Regulators open antitrust investigation into {sym}", -1),
    ("{sym} downgraded to sell on valuation concerns", -1),
    ("{sym} recalls products after safety complaints, shares slide", -1),
    ("{sym} to present at industry conference next week", 0),
    ("{sym} appoints new chief financial officer", 0),
    ("{sym} declares regular quarterly dividend", 0),
    ("{sym} schedules fourth-quarter earnings call", 0),
)


@dataclasses.dataclass(frozen=True)
class Fault:
    """Ground truth: `key` (sensor id or symbol) has fault `kind` from `start` to `end`."""

    key: str
    kind: str
    start: datetime
    end: datetime
    metric: str = ""

    @property
    def reason(self) -> str:
        return FAULT_REASONS[self.kind]


@dataclasses.dataclass(frozen=True)
class Message:
    ts: datetime
    topic: str
    payload: dict


@dataclasses.dataclass
class SimConfig:
    sensors: int = 20
    symbols: int = 3
    rate: float = 1.0  # readings per sensor per second
    faults: bool = True
    fault_fraction: float = 0.35  # share of sensors that get one fault
    fault_kinds: tuple = SENSOR_FAULTS  # kinds dealt in turn to the faulty sensors
    seed: int = 0
    duration: float = 600.0  # seconds of simulated time
    warmup: int = 150  # readings per sensor before any fault starts: detectors learn first
    trade_rate: float = 4.0  # trades per symbol per second
    news_interval: float = 20.0  # mean seconds between headlines
    position_interval: float = 5.0  # seconds between position changes
    pnl_interval: float = 1.0  # seconds between P&L updates
    jump_rate: float = 0.002  # probability that a trade jumps (a price_alert fault) when faults are on
    news_impact: float = 0.0  # log-price drift a bullish/bearish headline sets off in its direction (0: news is noise)
    news_impact_horizon: float = 120.0  # seconds over which that drift plays out after the headline


class Simulator:
    """Build the fault schedule on construction; `messages()` yields every message in time order."""

    def __init__(self, cfg: SimConfig, start: datetime):
        if cfg.rate <= 0 or cfg.duration < 0 or cfg.sensors < 0 or cfg.symbols < 0:
            raise ValueError("rate must be positive; sensors, symbols and duration not negative")
        self.cfg = cfg
        self.start = start
        self.end = start + timedelta(seconds=cfg.duration)
        self.sensor_ids = [f"site{i // 100}/sensor{i:05d}" for i in range(cfg.sensors)]
        self.symbols = [SYMBOLS[i] if i < len(SYMBOLS) else f"SYM{i}" for i in range(cfg.symbols)]
        self.faults: list[Fault] = self._schedule() if cfg.faults else []
        self._jumps: list[Fault] = []
        self.headlines: list[tuple[datetime, str, str, int]] = self._headlines() if self.symbols else []
        self._news_of = {sym: ([h[0] for h in self.headlines if h[1] == sym], [h[3] for h in self.headlines if h[1] == sym])
                         for sym in self.symbols}  # symbol -> (headline times, their sentiments), for news_drift

    def _schedule(self) -> list[Fault]:
        cfg = self.cfg
        rng = random.Random(cfg.seed * 7919 + 1)
        out = []
        period = 1.0 / cfg.rate
        warm = cfg.warmup * period
        kinds = 0
        for sid in self.sensor_ids:
            if rng.random() >= cfg.fault_fraction:
                continue
            kind = cfg.fault_kinds[kinds % len(cfg.fault_kinds)]  # in turn: every kind is covered
            kinds += 1
            length = rng.uniform(*FAULT_READINGS) * period
            latest = cfg.duration - length - FAULT_GAP * period
            if latest <= warm:
                continue
            t0 = self.start + timedelta(seconds=rng.uniform(warm, latest))
            metric = rng.choice(tuple(METRICS)) if kind not in ("battery", "stuck", "dropout") else ""
            out.append(Fault(sid, kind, t0, t0 + timedelta(seconds=length), metric))
        return out

    def messages(self) -> Iterator[Message]:
        """All feeds merged in time order (ties broken by a fixed sequence, so the order is deterministic)."""
        sources = [self._sensor(i, sid) for i, sid in enumerate(self.sensor_ids)]
        sources += [self._symbol(i, sym) for i, sym in enumerate(self.symbols)]
        if self.symbols:
            sources += [self._portfolio(), self._news()]
        return heapq.merge(*sources, key=lambda m: m.ts)

    def jump_faults(self) -> list[Fault]:
        """Price jumps injected so far (known only once `messages()` has produced them)."""
        return list(self._jumps)

    def _sensor(self, index: int, sid: str) -> Iterator[Message]:
        cfg = self.cfg
        rng = random.Random(cfg.seed * 1_000_003 + index)
        base = {m: rng.uniform(*lohi) for m, (lohi, _, _) in METRICS.items()}
        battery = rng.uniform(60.0, 100.0)
        fault = next((f for f in self.faults if f.key == sid), None)
        period = timedelta(seconds=1.0 / cfg.rate)
        t = self.start + timedelta(seconds=rng.uniform(0, 1.0 / cfg.rate))
        frozen = None
        k = 0
        while t < self.end:
            active = fault is not None and fault.start <= t < fault.end
            kind = fault.kind if active else None
            k += 1
            if kind == "dropout":
                t += period
                continue
            day = 2 * math.pi * (t.hour * 3600 + t.minute * 60 + t.second) / 86400.0
            values = {}
            for m, (_, sd, bad) in METRICS.items():
                x = base[m] + (1.5 * sd * math.sin(day) if m == "temperature" else 0.0) + rng.gauss(0, sd)
                if active and fault.metric == m:
                    since = (t - fault.start).total_seconds() * cfg.rate
                    if kind == "spike" and rng.random() < 0.3:
                        x += rng.choice((-1, 1)) * rng.uniform(15, 30) * sd
                    elif kind == "drift":
                        x += 0.3 * sd * since
                    elif kind == "noisy":
                        x += rng.gauss(0, 4 * sd)
                    elif kind == "out_of_range" and rng.random() < 0.8:
                        x = bad
                values[m] = round(x, 3)
            battery = max(0.0, battery - 0.0005)
            if kind == "battery":
                battery = max(2.0, battery - 1.0)
            elif fault is not None and fault.kind == "battery" and t >= fault.end and battery < 50:
                battery = 100.0  # replaced
            if kind == "stuck":
                frozen = frozen or values
                values = dict(frozen)
            values["battery"] = round(battery, 2)
            payload = {"ts": isoformat(t), **values}
            if kind == "battery" and battery < 10:
                payload["status"] = "low_battery"
            yield Message(t, f"sensors/{sid}", payload)
            t += period

    def _symbol(self, index: int, sym: str) -> Iterator[Message]:
        cfg = self.cfg
        rng = random.Random(cfg.seed * 2_000_003 + index)
        price = rng.uniform(50, 500)
        t = self.start
        regime, regime_end = "calm", t
        drift = 0.0
        sigma = 0.0003
        last = t
        while True:
            t += timedelta(seconds=rng.expovariate(cfg.trade_rate))
            if t >= self.end:
                return
            if t >= regime_end:
                regime = rng.choice(("calm", "calm", "volatile", "trending"))
                regime_end = t + timedelta(seconds=rng.uniform(60, 240))
                sigma = {"calm": 0.0003, "volatile": 0.0012, "trending": 0.0005}[regime]
                drift = rng.choice((-1, 1)) * 0.0003 if regime == "trending" else 0.0
            move = drift + rng.gauss(0, sigma) + self.news_drift(sym, t) * (t - last).total_seconds()
            last = t
            if cfg.faults and rng.random() < cfg.jump_rate:
                move += rng.choice((-1, 1)) * rng.uniform(0.03, 0.06)
                self._jumps.append(Fault(sym, "price_jump", t, t))
            price = max(0.01, price * math.exp(move))
            size = round(rng.lognormvariate(4, 1)) + 1
            ts = isoformat(t)
            yield Message(t, f"market/{sym}/trade", {"ts": ts, "price": round(price, 4), "size": size})
            half = price * rng.uniform(0.0001, 0.0005)
            yield Message(t, f"market/{sym}/quote", {
                "ts": ts, "bid": round(price - half, 4), "ask": round(price + half, 4),
                "bid_size": rng.randint(1, 50) * 100, "ask_size": rng.randint(1, 50) * 100,
            })

    def _portfolio(self) -> Iterator[Message]:
        """Positions change now and then; P&L follows from positions and a price proxy of its own."""
        cfg = self.cfg
        rng = random.Random(cfg.seed * 3_000_017)
        positions = dict.fromkeys(self.symbols, 0.0)
        pnl = 0.0
        t = self.start
        next_pos = t
        while t < self.end:
            if t >= next_pos:
                sym = rng.choice(self.symbols)
                positions[sym] = float(rng.randint(-20, 20) * 100)
                next_pos = t + timedelta(seconds=cfg.position_interval)
                yield Message(t, "portfolio/positions", {"ts": isoformat(t), "symbol": sym, "quantity": positions[sym]})
            gross = sum(abs(q) for q in positions.values())
            pnl += rng.gauss(0, 0.5) * math.sqrt(gross + 1.0)
            yield Message(t, "portfolio/pnl", {"ts": isoformat(t), "pnl": round(pnl, 2)})
            t += timedelta(seconds=cfg.pnl_interval)

    def _headlines(self) -> list[tuple[datetime, str, str, int]]:
        """The news schedule, drawn up front so prices can react to it: (time, symbol, text, sentiment)."""
        cfg = self.cfg
        rng = random.Random(cfg.seed * 4_000_037)
        t = self.start
        out = []
        while True:
            t += timedelta(seconds=rng.expovariate(1.0 / cfg.news_interval))
            if t >= self.end:
                return out
            sym = rng.choice(self.symbols)
            template, sentiment = rng.choice(HEADLINES)
            out.append((t, sym, template.format(sym=sym), sentiment))

    def _news(self) -> Iterator[Message]:
        rng = random.Random(self.cfg.seed * 5_000_011)
        for n, (t, sym, text, _) in enumerate(self.headlines, 1):
            source = rng.choice(("wire", "newsdesk"))
            yield Message(t, f"news/{source}", {
                "ts": isoformat(t), "headline": text, "symbols": [sym], "id": f"sim-{self.cfg.seed}-{n}",
            })

    def news_drift(self, sym: str, t: datetime) -> float:
        """Log-price drift per second at `t` from the symbol's headlines (ground truth of news impact)."""
        cfg = self.cfg
        if not cfg.news_impact:
            return 0.0
        times, sentiments = self._news_of[sym]
        first = bisect.bisect_right(times, t - timedelta(seconds=cfg.news_impact_horizon))
        last = bisect.bisect_right(times, t)
        return sum(sentiments[first:last]) * cfg.news_impact / cfg.news_impact_horizon


def to_batches(messages, cfg, window: float = 0.01) -> dict[str, list[tuple[datetime, list]]]:
    """Messages -> per feed kind, csp.curve data: records parsed by the agent's own validator,
    batched per `window` seconds of data time (as live ingest batches them), stamped at the window's end."""
    from edgewatch.agent.ingest.validate import Parsed, parse

    out: dict[str, list[tuple[datetime, list]]] = {}
    step = timedelta(seconds=window)
    open_at = None
    batch: dict[str, list] = {}
    for m in messages:
        if open_at is None or m.ts >= open_at + step:
            for kind, records in batch.items():
                out.setdefault(kind, []).append((open_at + step, records))
            batch = {}
            open_at = m.ts
        got = parse(m.topic, json.dumps(m.payload).encode(), m.ts, cfg)
        if isinstance(got, Parsed):
            batch.setdefault(got.kind, []).append(got.record)
    for kind, records in batch.items():
        out.setdefault(kind, []).append((open_at + step, records))
    return out


def match_faults(faults: list[Fault], events, grace: timedelta) -> dict[str, dict]:
    """Score `maintenance` events against the ground truth, per reason.

    A fault is found when its reason is raised on its sensor between its start and
    `grace` after its end; a raise is a true positive when such a fault explains it.
    Returns {reason: {faults, found, recall, raised, true_raises, precision, max_delay_s, mean_delay_s,
    false_with: {fault kind active on that sensor, or "none": false raises}}}.
    """
    raises: dict[tuple[str, str], list[datetime]] = {}
    for e in events:
        if e.kind == "maintenance" and e.data.get("state") == "raised":
            for reason in e.data["reasons"]:
                raises.setdefault((e.key, reason), []).append(e.ts)
    by_reason: dict[str, dict] = {}
    explained: set[tuple[str, str, datetime]] = set()
    for f in faults:
        if f.reason not in REASONS_OF_SENSORS:
            continue
        r = by_reason.setdefault(f.reason, {"faults": 0, "found": 0, "delays": []})
        r["faults"] += 1
        hits = [t for t in raises.get((f.key, f.reason), ()) if f.start <= t <= f.end + grace]
        if hits:
            r["found"] += 1
            r["delays"].append((min(hits) - f.start).total_seconds())
        explained.update((f.key, f.reason, t) for t in hits)
    fault_of = {f.key: f for f in faults}
    for (key, reason), times in raises.items():
        r = by_reason.setdefault(reason, {"faults": 0, "found": 0, "delays": []})
        r["raised"] = r.get("raised", 0) + len(times)
        r["true_raises"] = r.get("true_raises", 0) + sum((key, reason, t) in explained for t in times)
        for t in times:
            if (key, reason, t) not in explained:  # which fault (if any) the false raise came with
                other = fault_of.get(key)
                cause = other.kind if other and other.start <= t <= other.end + grace else "none"
                r.setdefault("false_with", {}).setdefault(cause, 0)
                r["false_with"][cause] += 1
    out = {}
    for reason, r in sorted(by_reason.items()):
        raised, true, delays = r.get("raised", 0), r.get("true_raises", 0), r["delays"]
        out[reason] = {
            "faults": r["faults"], "found": r["found"], "recall": r["found"] / r["faults"] if r["faults"] else None,
            "raised": raised, "true_raises": true, "precision": true / raised if raised else None,
            "max_delay_s": max(delays) if delays else None,
            "mean_delay_s": sum(delays) / len(delays) if delays else None,
            "false_with": r.get("false_with", {}),
        }
    return out
