"""Many agents, one log: two `edge-agent run` processes split the feeds by topic subtree and share one
PostgreSQL log; every reading is handled by one of them, every event is logged once with its agent's id and
published by that agent alone. One agent killed (SIGKILL) mid-stream and restarted loses nothing and logs
nothing twice. Headlines shared with `$share/{group}/...` reach one agent each. Then the pieces: the
`[agent]` and `mqtt.subscriptions` rules, and the outbox query that sees only its own agent's rows."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from edgewatch.agent import config
from edgewatch.agent.cli import main
from edgewatch.agent.commands.demo import scrape
from edgewatch.agent.eventlog.store import Store
from edgewatch.agent.records import Bar, DeadLetter, make_event
from edgewatch.agent.testing.harness import AgentProcess, publish_many, subscribe_collect, wait_for
from edgewatch.common.ports import free_port

pytestmark = pytest.mark.postgres

SITES = {"north": "site-a", "south": "site-b"}  # agent id -> the sensor subtree it takes
T0 = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(minutes=1)


def _agent(mosquitto, tmp_path, agent_id: str, url: str, subscriptions: list[str], **extra) -> AgentProcess:
    settings = {
        "agent": {"id": agent_id},
        "mqtt": {"subscriptions": subscriptions, "client_id": f"fleet-{agent_id}"},
        "store": {"url": url},
        "record": {"path": ""},  # no warm start: a restarted agent learns only from what it is sent again
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},
        "health": {"stale_min": 3600.0},  # one reading per sensor: never report them silent
        "news": {"enabled": False},
        **extra,
    }
    return AgentProcess(mosquitto, tmp_path / agent_id, settings, protocol="5")


def _start(agents, mosquitto) -> None:
    """One after the other: the retained status topic holds the latest agent's word only."""
    for agent in agents:
        agent.start()
        agent.wait_ready(mosquitto, timeout=60)


def _readings(site: str, first: int, n: int) -> list[tuple[str, dict]]:
    """A reading of a new sensor each, battery low: each raises one `maintenance` event (low_battery), a
    pure function of the reading (explicit `ts`), so a redelivered reading gives the same event id."""
    return [(f"sensors/{site}/s{i}", {"ts": (T0 + timedelta(milliseconds=i)).isoformat() + "Z",
                                      "temperature": 20.0, "battery": 5.0}) for i in range(first, first + n)]


def _sensor_count(agent: AgentProcess) -> float:
    """Readings the agent accepted (`edgewatch_messages_in_total{kind="sensor"}` over its run)."""
    listen = agent.config.read_text().split('listen = "')[1].split('"')[0]
    return scrape(f"http://{listen}/metrics").get("edgewatch_messages_in_total", 0.0)


def _low_battery(store: Store) -> list[dict]:
    return [e for e in store.events(kinds=["maintenance"]) if "low_battery" in json.dumps(e["data"])]


def _check_log(store: Store, expected: dict[str, int]) -> list[dict]:
    """Each expected sensor's low_battery event exactly once, logged by the agent that owns its subtree."""
    rows = _low_battery(store)
    per_key = Counter(r["key"] for r in rows)
    want = {f"{SITES[a]}/s{i}" for a, n in expected.items() for i in range(n)}
    assert set(per_key) == want and set(per_key.values()) == {1}, (len(per_key), len(want))
    for r in rows:
        assert r["agent_id"] == next(a for a, site in SITES.items() if r["key"].startswith(site + "/")), r
    return rows


def test_two_agents_split_the_sensors_and_share_one_postgresql_log(mosquitto, tmp_path, postgres_url):
    agents = {a: _agent(mosquitto, tmp_path, a, postgres_url, [f"sensors/{site}/#"]) for a, site in SITES.items()}
    with subscribe_collect(mosquitto, "edgewatch/events/maintenance/#") as published:
        try:
            _start(agents.values(), mosquitto)
            store = Store(postgres_url, readonly=True)

            # 1. both running: each reading handled by the one agent whose subtree it is in
            n = 150
            publish_many(mosquitto, _readings("site-a", 0, n) + _readings("site-b", 0, n))
            wait_for(lambda: len(_low_battery(store)) >= 2 * n, 60, what="both sites' events")
            wait_for(lambda: len(published) >= 2 * n, 30, what="both sites' events on MQTT")
            time.sleep(1.0)  # anything extra would arrive now
            rows = _check_log(store, {"north": n, "south": n})
            assert {a: _sensor_count(agent) for a, agent in agents.items()} == {"north": n, "south": n}
            on_mqtt = Counter(p["event_id"] for p in published.json())
            assert on_mqtt == Counter(r["event_id"] for r in rows)  # each published once, by its own agent
            assert all(p["agent_id"] in SITES for p in published.json())

            # 2. north killed mid-stream and restarted while both sites keep publishing
            m = 600
            a_third = threading.Event()

            def stream() -> None:  # about 4 s: 24 bursts of 25 readings per site
                for i in range(n, n + m, 25):
                    publish_many(mosquitto, _readings("site-a", i, 25) + _readings("site-b", i, 25))
                    if i >= n + m // 3:
                        a_third.set()
                    time.sleep(0.15)

            publisher = threading.Thread(target=stream)
            publisher.start()
            assert a_third.wait(60)
            agents["north"].kill()  # SIGKILL mid-stream: no clean stop, its unacknowledged readings stay with the broker
            assert publisher.is_alive()  # the stream goes on while north is away and after it is back
            time.sleep(0.5)
            agents["north"].start()
            agents["north"].wait_ready(mosquitto, timeout=60)
            publisher.join(120)
            total = n + m
            wait_for(lambda: len(_low_battery(store)) >= 2 * total, 90, what="every event after the restart")
            wait_for(lambda: len({p["event_id"] for p in published.json()}) >= 2 * total, 30,
                     what="every event on MQTT after the restart")
            time.sleep(1.0)
            rows = _check_log(store, {"north": total, "south": total})
            assert _sensor_count(agents["south"]) == total  # south took none of north's readings, before or after
            on_mqtt = Counter(p["event_id"] for p in published.json())
            assert set(on_mqtt) == {r["event_id"] for r in rows}  # nothing lost on the way out either
            south_ids = {r["event_id"] for r in rows if r["agent_id"] == "south"}
            assert {on_mqtt[e] for e in south_ids} == {1}  # the survivor published its own once, none of north's
            # north's own at least once: those it had sent, or had logged, when it was killed but whose
            # `published_at` it had not yet written go out again from its restart (topics.md: at least once,
            # deduplicate by event_id); in the log each is there once (above)
            assert all(c >= 1 for c in on_mqtt.values())
            store.close()
        finally:
            for agent in agents.values():
                agent.stop()
    for agent in agents.values():
        assert "Traceback" not in agent.log_tail(20_000)

    # the log tells the agents apart for an operator too
    assert main(["events", "--db", postgres_url, "--agent", "south", "--kind", "maintenance", "--format", "json"]) == 0


def test_shared_subscription_hands_each_headline_to_one_agent(mosquitto, tmp_path, postgres_url, capsys):
    """`$share/news/news/#` on both: the broker gives each headline to one of them, and it becomes one `news`
    event (degraded: no sidecar answers on this port) logged by that agent."""
    dead_sidecar = f"http://127.0.0.1:{free_port()}"
    agents = [_agent(mosquitto, tmp_path, a, postgres_url, ["$share/news/news/#"],
                     news={"enabled": True, "timeout": 0.2}, sidecar={"url": dead_sidecar}) for a in SITES]
    try:
        _start(agents, mosquitto)
        n = 60
        publish_many(mosquitto, [(f"news/wire{i % 3}", {"id": f"h{i}", "headline": f"Headline {i}", "symbols": ["ACME"],
                                                        "ts": (T0 + timedelta(seconds=i)).isoformat() + "Z"})
                                 for i in range(n)])
        store = Store(postgres_url, readonly=True)
        news = wait_for(lambda: (rows := store.events(kinds=["news"])) and len(rows) >= n and rows, 60,
                        what="every headline's event")
        time.sleep(1.0)
        news = store.events(kinds=["news"])
        store.close()
    finally:
        for agent in agents:
            agent.stop()
    assert len(news) == n and len({e["event_id"] for e in news}) == n
    by_agent = Counter(e["agent_id"] for e in news)
    assert set(by_agent) == set(SITES) and sum(by_agent.values()) == n, by_agent  # both took a share


# -- the pieces ------------------------------------------------------------------------------------------------


def test_agent_id_defaults_to_host_and_config_stem(tmp_path, monkeypatch):
    monkeypatch.setattr(config.socket, "gethostname", lambda: "edge1.plant.lan")
    north, south = tmp_path / "north.toml", tmp_path / "south.toml"
    north.write_text("")
    south.write_text('[mqtt]\nclient_id = "kept-session"\n')
    assert config.Config().agent.id == "edge1.plant.lan"  # no file: the host name
    a, b = config.load(north, {}), config.load(south, {})
    assert (a.agent.id, a.mqtt.client_id) == ("edge1.plant.lan-north", "edgewatch-edge1.plant.lan-north")
    assert (b.agent.id, b.mqtt.client_id) == ("edge1.plant.lan-south", "kept-session")  # an explicit id wins
    c = config.load(north, {"EDGEWATCH_AGENT_ID": "line-3"})
    assert (c.agent.id, c.mqtt.client_id) == ("line-3", "edgewatch-line-3")
    odd = tmp_path / "my agent (2).toml"
    odd.write_text("")
    assert config.load(odd, {}).agent.id == "edge1.plant.lan-my-agent--2"  # made a valid id, not refused


@pytest.mark.parametrize("text, named", [
    ('[agent]\nid = "a/b"\n', "agent.id: 'a/b' is not an agent id"),
    ('[agent]\nid = ""\n', "agent.id: '' is not an agent id"),
    ('[agent]\nid = "-x"\n', "agent.id: '-x' is not an agent id"),
    (f'[agent]\nid = "{"x" * 65}"\n', "is not an agent id (1 to 64"),
    ('[mqtt]\nsubscriptions = "sensors/#"\n', None),  # one string is a list of one (as in the environment)
    ("[mqtt]\nsubscriptions = [1]\n", "mqtt.subscriptions: expected a list of strings"),
    ('[mqtt]\nsubscriptions = ["#"]\n', "mqtt.subscriptions: '#' is under no input prefix"),
    ('[mqtt]\nsubscriptions = ["edgewatch/#"]\n', "mqtt.subscriptions: 'edgewatch/#' is under no input prefix"),
    ('[mqtt]\nsubscriptions = ["sensors"]\n', "mqtt.subscriptions: 'sensors' is under no input prefix"),
    ('[mqtt]\nsubscriptions = ["sensors/a#"]\n', "mqtt.subscriptions: 'sensors/a#' is not a topic filter"),
    ('[mqtt]\nsubscriptions = ["sensors/#/x"]\n', "is not a topic filter"),
    ('[mqtt]\nsubscriptions = ["sensors/#", "sensors/a/#"]\n', "'sensors/a/#' overlaps 'sensors/#'"),
    ('[mqtt]\nsubscriptions = ["sensors/+/t", "sensors/a/+"]\n', "'sensors/a/+' overlaps 'sensors/+/t'"),
    ('[mqtt]\nsubscriptions = ["$share/g/news/#", "news/reuters"]\n', "'news/reuters' overlaps '$share/g/news/#'"),
    ('[mqtt]\nsubscriptions = ["$share/g/sensors/#"]\n',
     "per-key state of the mqtt.sensors_prefix feed would be split between agents"),
    ('[mqtt]\nsubscriptions = ["$share/g/market/#"]\n', "mqtt.market_prefix feed would be split"),
    ('[mqtt]\nsubscriptions = ["$share/g/portfolio/#"]\n', "mqtt.portfolio_prefix feed would be split"),
    ('[mqtt]\nsubscriptions = ["$share//news/#"]\n', "a shared subscription is $share/{group}/{filter}"),
    ('[mqtt]\nsubscriptions = ["$SYS/#"]\n', "starts with '$', which the broker reserves"),
    ("[mqtt]\nsubscriptions = [" + ", ".join(f'"sensors/s{i}/#"' for i in range(101)) + "]\n",
     "mqtt.subscriptions: 101 topic filters, at most 100"),
    ('[mqtt]\nsubscriptions = ["sensors/site-a/#", "sensors/site-b/+", "market/ACME/#", "$share/g/news/#"]\n', None),
])
def test_check_config_of_agent_id_and_subscriptions(capsys, tmp_path, text, named):
    path = tmp_path / "agent.toml"
    path.write_text(text)
    rc = main(["check-config", str(path)])
    out, err = capsys.readouterr()
    if named is None:
        assert rc == 0 and err == "" and "  agent    " in out
    else:
        assert (rc, out) == (2, "") and named in err and len(err.strip().splitlines()) == 1, err


def test_subscriptions_default_to_every_input_feed():
    cfg = config.load(None, {"EDGEWATCH_MQTT_SENSORS_PREFIX": "plant/sensors"})
    assert config.subscriptions(cfg.mqtt) == ["plant/sensors/#", "market/#", "portfolio/#", "news/#"]
    cfg = config.load(None, {"EDGEWATCH_MQTT_SUBSCRIPTIONS": "sensors/a/#, $share/g/news/#"})
    assert config.subscriptions(cfg.mqtt) == ["sensors/a/#", "$share/g/news/#"]



def test_each_outbox_sees_only_its_own_agents_rows(url):
    """The outbox queries of two agents on one log: each its own unpublished events, bars and dead letters, never
    the other's."""
    north, south = Store(url, agent_id="north"), Store(url, agent_id="south")
    try:
        t = datetime(2026, 12, 6, 9, 0)
        bar = dict(end=t + timedelta(seconds=1), open=1.0, high=1.0, low=1.0, close=1.0, volume=1.0, vwap=1.0, trades=1)
        new = north.write([make_event("anomaly", f"n{i}", t, "info", "n", {}, i) for i in range(3)],
                          [DeadLetter(topic="sensors/x", payload="{", reason="bad", received_at=t, code="bad_json")],
                          [Bar(symbol="N", start=t, **bar)])
        assert {r["agent_id"] for r in new} == {"north"}  # what on_commit hands the outbox carries it too
        south.write([make_event("anomaly", f"s{i}", t, "info", "s", {}, i) for i in range(2)],
                    bars=[Bar(symbol="S", start=t, **bar)])
        assert [r["key"] for r in north.unpublished()] == ["n0", "n1", "n2"]
        assert [r["key"] for r in south.unpublished()] == ["s0", "s1"]
        assert [b["symbol"] for b in north.unpublished_rows("bars")] == ["N"]
        assert [b["symbol"] for b in south.unpublished_rows("bars")] == ["S"]
        assert [d["topic"] for d in north.unpublished_rows("deadletters")] == ["sensors/x"]
        assert south.unpublished_rows("deadletters") == []
        assert (north.unpublished_count(), south.unpublished_count()) == (5, 3)
        north.mark_published([r["id"] for r in north.unpublished()])
        assert north.unpublished() == [] and len(south.unpublished()) == 2
        # a query reads every agent's rows, or one agent's
        assert {e["agent_id"] for e in north.events()} == {"north", "south"}
        assert [e["key"] for e in north.events(agent="south")] == ["s0", "s1"]
        assert [d["agent_id"] for d in south.dead_letters()] == ["north"] and south.dead_letters(agent="south") == []
        assert [b["symbol"] for b in north.bars(agent="south")] == ["S"]
    finally:
        north.close()
        south.close()


def test_unpublished_rows_from_before_agent_ids_go_to_one_agent(url):
    """Rows a log held unpublished when it was upgraded carry no agent id: the first agent to start adopts them
    all, so they are published once, not by every agent and not by none."""
    t = datetime(2026, 12, 6, 9, 0)
    legacy = Store(url)  # agent_id "": what the migration gives the rows already in the log
    legacy.write([make_event("anomaly", f"old{i}", t, "info", "old", {}, i) for i in range(3)])
    legacy.mark_published([legacy.unpublished()[0]["id"]])
    legacy.close()
    north, south = Store(url, agent_id="north"), Store(url, agent_id="south")
    try:
        assert (north.adopt_unowned(), south.adopt_unowned()) == (2, 0)
        assert [r["key"] for r in north.unpublished()] == ["old1", "old2"] and south.unpublished() == []
        assert [e["agent_id"] for e in north.events()] == ["", "north", "north"]  # a published row stays as it was
    finally:
        north.close()
        south.close()


def test_events_agent_filter_on_the_command_line(capsys, tmp_path):
    db = str(tmp_path / "events.db")
    t = datetime(2026, 12, 6, 9, 0)
    for agent in ("north", "south"):
        store = Store(db, agent_id=agent)
        store.write([make_event("anomaly", f"{agent}-1", t, "info", agent, {}, 1)])
        store.close()
    assert main(["events", "--db", db, "--agent", "south", "--format", "json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["key"], r["agent_id"]) for r in rows] == [("south-1", "south")]
    assert main(["events", "--db", db]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["id", "ts", "agent_id"] and "north" in table[2] and "south" in table[3]
    assert main(["events", "--db", db, "--agent", "west"]) == 0
    assert capsys.readouterr().err == "no events match\n"
