"""The trade advisor: fusion of technical view and news, hysteresis, the risk gate, degraded news."""

from datetime import datetime, timedelta

import csp

from edgewatch.agent.analytics.advisor import advisor
from edgewatch.agent.config import AdvisorConfig
from edgewatch.agent.records import Event, Sentiment, make_event

T0 = datetime(2026, 1, 5, 14, 30)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def view(z: float, t: float, threshold: float = 2.0) -> tuple[datetime, dict]:
    return at(t), {"AAPL": {"z": z, "threshold": threshold, "regime": "normal", "trend": 0.0, "at": at(t)}}


def bullish(t: float, score: float = 0.5) -> tuple[datetime, list]:
    return at(t), [Sentiment(symbol="AAPL", ts=at(t), score=score, label="bullish", confidence=0.9)]


def news_event(t: float, degraded: bool) -> tuple[datetime, list]:
    data = {"symbols": ["AAPL"], "degraded": degraded, "sentiment": "neutral", "confidence": 0.0, "scores": {}}
    return at(t), [make_event("news", "AAPL", at(t), "info", "headline", data, t)]


def limits(breached: bool = False, value: float = 0.0, action: str = "EMERGENCY_STOP") -> dict:
    return {"drawdown": {"action": action, "value": value, "limit": 100.0, "breached": breached}}


def run(views=(), sentiment=(), news=(), risk=(), cfg: AdvisorConfig | None = None) -> list[Event]:
    cfg = cfg or AdvisorConfig()

    @csp.graph
    def g():
        out = advisor(
            csp.curve(list[Event], list(news)) if news else csp.null_ts(list[Event]),
            csp.curve(list[Sentiment], list(sentiment)) if sentiment else csp.null_ts(list[Sentiment]),
            csp.curve(dict, list(views)) if views else csp.null_ts(dict),
            csp.curve(dict, list(risk)) if risk else csp.null_ts(dict),
            cfg,
        )
        csp.add_graph_output("advice", out)

    out = csp.run(g, starttime=T0, endtime=timedelta(hours=2))
    return [e for _, batch in out.get("advice", []) for e in batch]


def actions(events: list[Event]) -> list[str]:
    return [e.data["action"] for e in events]


def test_a_strong_move_alone_advises_and_falls_back_to_hold_only_below_exit():
    # z/threshold 1.8 -> technical 0.9 -> score 0.45 >= enter; 0.5 -> score 0.125 < exit
    events = run(views=[view(3.6, 1), view(3.6, 2), view(2.0, 3), view(1.0, 4)])
    assert actions(events) == ["BUY", "HOLD"]
    assert [e.ts for e in events] == [at(1), at(4)]  # score 0.25 at t=3 is above exit: BUY holds
    assert events[0].data["signal"]["regime"] == "normal" and events[0].data["news"] == "none"


def test_news_that_agrees_turns_a_moderate_move_into_advice():
    moderate = [view(2.2, 10), view(2.2, 11)]  # at the signal threshold: technical 0.55, score 0.275
    assert run(views=moderate) == []
    events = run(views=moderate, sentiment=[bullish(5)])
    assert actions(events) == ["BUY"]
    d = events[0].data
    assert d["sentiment"]["label"] == "bullish" and 0 < d["sentiment"]["weighted"] < 0.5
    assert d["score"] > AdvisorConfig().enter


def test_stale_news_weighs_less_than_fresh_news():
    fresh = run(views=[view(1.6, 60)], sentiment=[bullish(50)])
    stale = run(views=[view(1.6, 3600)], sentiment=[bullish(50)])
    assert actions(fresh) == ["BUY"]
    assert stale == []


def test_bearish_news_against_a_rising_price_cancels_the_buy():
    events = run(views=[view(3.6, 10)], sentiment=[bullish(5, score=-0.5)])
    assert events == []


def test_an_active_emergency_stop_vetoes_buy_and_says_why():
    events = run(views=[view(3.6, 10)], risk=[(at(1), limits(breached=True, value=150.0))])
    assert len(events) == 0  # the vetoed BUY leaves the advice at HOLD: nothing changed
    events = run(views=[view(3.6, 10), view(3.6, 20)], risk=[(at(15), limits(breached=True, value=150.0))])
    assert actions(events) == ["BUY", "HOLD"]
    vetoed = events[1].data["vetoed"]
    assert vetoed["action"] == "BUY" and "EMERGENCY_STOP" in vetoed["reason"]
    assert events[1].severity == "warning"


def test_low_headroom_vetoes_buy_but_not_sell():
    tight = [(at(1), limits(value=95.0, action="REDUCE_POSITIONS"))]  # 5 % headroom < 10 %
    assert run(views=[view(3.6, 10)], risk=tight) == []
    sells = run(views=[view(-3.6, 10)], risk=tight)
    assert actions(sells) == ["SELL"] and sells[0].data["headroom"]["drawdown"] < 0.1


def test_degraded_news_gives_technical_only_advice_and_says_so():
    events = run(views=[view(2.2, 10), view(3.6, 11)], sentiment=[bullish(5)], news=[news_event(6, degraded=True)])
    assert actions(events) == ["BUY"]
    assert events[0].ts == at(11)  # the news would have made it BUY at t=10
    assert events[0].data["news"] == "degraded" and events[0].data["sentiment"] is None


def test_the_same_input_gives_the_same_advice_ids():
    inputs = dict(views=[view(3.6, 1), view(0.0, 2), view(-3.6, 3)], sentiment=[bullish(0.5)])
    first, second = run(**inputs), run(**inputs)
    assert actions(first) == ["BUY", "HOLD"]
    assert [e.event_id for e in first] == [e.event_id for e in second]
    assert len({e.event_id for e in first}) == 2


def test_strong_news_alone_is_a_view_of_its_own():
    events = run(sentiment=[bullish(5, score=0.9)])
    assert actions(events) == ["BUY"] and events[0].data["signal"] is None



def test_senseless_advisor_settings_are_refused_naming_the_key(tmp_path, capsys):
    from edgewatch.agent.cli import main

    for line, key in (("exit = 0.6", "advisor.exit"), ("enter = 0", "advisor.enter"),
                      ("news_horizon = 0", "advisor.news_horizon"), ("min_headroom = 1.5", "advisor.min_headroom")):
        path = tmp_path / "agent.toml"
        path.write_text(f"[advisor]\n{line}\n")
        assert main(["check-config", str(path)]) == 2, line
        assert key in capsys.readouterr().err
