"""VWAP bars leave the agent the way events do: from the log, through the outbox, retained per symbol on
`edgewatch/bars/{symbol}`, and `edge-agent bars` reads them back. A real agent process and Mosquitto."""

from __future__ import annotations

import json
import time

import pytest
import sqlalchemy as sa
from edgewatch.agent.cli import main
from edgewatch.agent.testing.harness import AgentProcess, publish_many, subscribe_collect, wait_for

pytestmark = pytest.mark.mosquitto


def _logged_bars(db: str) -> list[tuple]:
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.exec_driver_sql("SELECT id, symbol, vwap, published_at, trades FROM bars ORDER BY id")]
    engine.dispose()
    return rows


def test_bars_are_published_retained_per_symbol_and_queryable(mosquitto, tmp_path, capsys):
    agent = AgentProcess(mosquitto, tmp_path / "agent").start()
    try:
        agent.wait_ready(mosquitto)
        with subscribe_collect(mosquitto, "edgewatch/bars/#") as live:
            t0 = time.time()
            for step in range(8):  # 2 s of trades in 0.25 s steps: at least one closed 1 s bar per symbol
                publish_many(mosquitto, [
                    (f"market/{sym}/trade", {"ts": t0 + step * 0.25, "price": price + step, "size": 10 + step})
                    for sym, price in (("AAPL", 190.0), ("MSFT", 410.0))
                ])
                time.sleep(0.25)
            wait_for(lambda: {b["symbol"] for b in live.json()} == {"AAPL", "MSFT"}, 15, what="bars of both symbols")
            # every bar in the log is published and marked so, once the broker acknowledged it; the last bars close
            # on the engine's clock after the last trade: wait until the bars hold all 16 trades
            logged = wait_for(lambda: (rows := _logged_bars(agent.db)) and all(r[3] for r in rows)
                              and sum(r[4] for r in rows) == 16 and rows, 10, what="all trades in published bars")
            wait_for(lambda: len(live) >= len(logged), 10, what="every logged bar on MQTT")
    finally:
        assert agent.stop() == 0
    received = live.json()
    assert [(b["id"], b["symbol"], b["vwap"]) for b in received] == [r[:3] for r in logged]  # log order, as logged
    assert [t for t, _ in live] == [f"edgewatch/bars/{b['symbol']}" for b in received]
    first = received[0]
    assert set(first) == {"id", "symbol", "start", "end", "open", "high", "low", "close", "volume", "vwap", "trades", "agent_id"}
    assert first["low"] <= first["vwap"] <= first["high"] and first["start"].endswith("Z")

    # a subscriber that comes later (the agent is stopped by now) gets each symbol's latest bar, retained
    with subscribe_collect(mosquitto, "edgewatch/bars/#") as late:
        wait_for(lambda: len(late) >= 2, 5, what="retained bars")
        time.sleep(0.3)
    latest = {}
    for bar in received:
        latest[bar["symbol"]] = bar
    assert sorted(late.json(), key=lambda b: b["symbol"]) == [latest["AAPL"], latest["MSFT"]]

    # `edge-agent bars`: the same rows, with the options and formats of `events`
    assert main(["bars", "--db", agent.db, "--format", "json"]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == received
    assert main(["bars", "--db", agent.db, "--symbol", "MSFT", "--limit", "1", "--format", "json"]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == [latest["MSFT"]]
    assert main(["bars", "--db", agent.db]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["id", "agent_id", "symbol", "start", "end", "open", "high", "low", "close", "volume", "vwap",
                                "trades"]
    assert len(table) == 2 + len(received)
