"""The status page in a real browser (Debian's chromium, headless, driven by Playwright) over a running agent."""

from __future__ import annotations

import os
import shutil
from datetime import timedelta

import pytest
from edgewatch.agent.testing.harness import AgentProcess, EmbeddedBroker, publish_many, wait_for, wait_for_events
from edgewatch.agent.testing.plugin import require
from edgewatch.agent.testing.simulator import SimConfig, Simulator
from edgewatch.agent.timeutil import utcnow
from edgewatch.common.ports import free_port

from ..conftest import REPO

SECONDS = 480  # simulated seconds (faults start after 150): the first CUT before the page opens, the rest while it watches
CUT = 300
AHEAD = 120  # ... ending this far ahead of the clock (within the agent's 300 s), so no sensor goes stale meanwhile


@pytest.fixture
def chromium() -> str:
    path = shutil.which("chromium")
    require("chromium", path is not None, "Debian's `chromium` is not on PATH (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as e:
        require("playwright", False, str(e))
    return path


def test_status_page_shows_the_fleet_and_live_events(tmp_path, chromium):
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    sim = Simulator(SimConfig(sensors=6, symbols=2, duration=SECONDS, fault_fraction=1.0),
                    utcnow() - timedelta(seconds=SECONDS - AHEAD))
    messages = [(m.ts, m.topic, m.payload) for m in sim.messages()]
    cut = sim.start + timedelta(seconds=CUT)
    with EmbeddedBroker() as broker:
        agent = AgentProcess(broker, tmp_path / "agent", settings={"metrics": {"listen": f"127.0.0.1:{port}"}})
        agent.start()
        try:
            agent.wait_ready(broker)
            publish_many(broker, [(topic, payload) for ts, topic, payload in messages if ts < cut])
            wait_for_events(agent.db, 1)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
                page = browser.new_page(viewport={"width": 1400, "height": 1100})
                problems: list[str] = []  # script errors and refused resources (the page's CSP) fail the test
                page.on("pageerror", lambda e: problems.append(str(e)))
                page.on("console", lambda m: m.type == "error" and problems.append(m.text))
                page.goto(f"http://127.0.0.1:{port}/status")
                expect(page.locator("#live")).to_have_text("live")
                rows = page.locator("#fleet tbody tr")
                expect(rows).to_have_count(len(sim.sensor_ids))
                assert sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.sensor)")) == sim.sensor_ids

                # the second half arrives while the page is open: its findings stream in without a reload
                opened_at = max(e["id"] for e in agent_events(agent.db, after=0))
                publish_many(broker, [(topic, payload) for ts, topic, payload in messages if ts >= cut])
                wait_for_events(agent.db, 1, predicate=lambda e: e["id"] > opened_at)
                page.wait_for_function("top => [...document.querySelectorAll('#events li')].some(l => +l.dataset.id > top)",
                                       arg=opened_at, timeout=15_000)
                streamed = page.locator("#events li").evaluate_all(
                    "ls => ls.map(l => [+l.dataset.id, l.dataset.kind, l.dataset.key])")
                logged = {e["id"]: (e["kind"], e["key"]) for e in agent_events(agent.db, after=0)}
                assert all(logged[i] == (kind, key) for i, kind, key in streamed)
                assert [i for i, _, _ in streamed] == sorted((i for i, _, _ in streamed), reverse=True)  # newest on top

                # the fleet table follows the log: each sensor's band and open maintenance flags as the API has them
                def fleet_shown() -> bool:
                    api = page.evaluate("fetch('/status/api/fleet').then(r => r.json())")["sensors"]
                    shown = rows.evaluate_all("rs => rs.map(r => [r.dataset.sensor, r.cells[2].textContent,"
                                              " [...r.querySelectorAll('.flag')].map(f => f.textContent)])")
                    return shown == [[s["sensor"], s["band"], s["flags"]] for s in api]

                wait_for(fleet_shown, timeout=15, what="the fleet table matching the log")

                # the busiest sensor's chart: its readings, and its anomaly and maintenance events marked
                events = agent_events(agent.db, after=0)
                sensor = max(sim.sensor_ids, key=lambda sid: sum(e["key"] == sid for e in events))
                rows.filter(has_text=sensor).click()
                expect(page.locator("#sensor-name")).to_have_text(sensor)
                expect(page.locator("#sensor-chart canvas")).to_have_count(1)
                assert int(page.locator("#sensor-chart").get_attribute("data-points")) > 100

                def marks_shown() -> bool:
                    logged = [e["kind"] for e in agent_events(agent.db, after=0)
                              if e["key"] == sensor and e["kind"] in ("anomaly", "maintenance")]
                    shown = page.locator("#sensor-marks li").evaluate_all("ls => ls.map(l => l.dataset.kind)")
                    return logged and shown == logged[::-1][:40]

                wait_for(marks_shown, timeout=15, what="the sensor's events marked on its chart")

                expect(page.locator("#symbols button")).to_have_count(len(sim.symbols))
                expect(page.locator("#symbol-chart canvas")).to_have_count(1)
                assert int(page.locator("#symbol-chart").get_attribute("data-points")) > 10
                symbol = page.locator("#symbols button.selected").text_content()

                def symbol_marks_shown() -> bool:
                    logged = [e["id"] for e in agent_events(agent.db, after=0)
                              if e["key"] == symbol and e["kind"] in ("signal", "price_alert", "advice")]
                    shown = page.locator("#symbol-marks li").evaluate_all("ls => ls.map(l => +l.dataset.id)")
                    return logged and shown == logged[::-1][:40]

                wait_for(symbol_marks_shown, timeout=15, what="the symbol's signals, alerts and advice marked")

                assert problems == []
                shot = tmp_path / "status-page.png"
                page.screenshot(path=str(shot), full_page=True)
                browser.close()
            assert shot.stat().st_size > 10_000  # the artefact: kept under pytest's tmp dir
            if os.environ.get("EDGEWATCH_SCREENSHOT"):  # e.g. docs/status-page.png, to refresh the README's picture
                shutil.copyfile(shot, REPO / os.environ["EDGEWATCH_SCREENSHOT"])
        finally:
            assert agent.stop() == 0, agent.log_tail()


def agent_events(db: str, after: int) -> list[dict]:
    from edgewatch.agent.eventlog.store import Store

    store = Store(db, readonly=True)
    try:
        return store.events(after_id=after)
    finally:
        store.close()
