"""A restart resumes warm: the agent re-runs its newest captures at start, so a detector that had
learnt a sensor before the restart judges its next reading at once, and the events after the
restart are the ones an uninterrupted run over the same input makes (same ids). State snapshots are
off here, so the captures alone warm it (tests/agent/test_snapshots.py: with snapshots)."""

from __future__ import annotations

import time

import pytest
from edgewatch.agent.testing.harness import AgentProcess, publish_many, wait_for

from tests.agent.test_service import FAST, captured, event_rows, readings, stop_within


def anomalies(agent: AgentProcess) -> list[str]:
    return [e["event_id"] for e in event_rows(agent) if e["kind"] == "anomaly" and e["key"] == "s1"]


def run_split(mosquitto, workdir, stop: str, warm_start: float, snapshot_interval: float = 0.0, pause_after: int = 40,
              pause=lambda agent: None, before_stop=lambda agent: None, settings: dict | None = None) -> AgentProcess:
    """40 calm readings (`pause(agent)` after the first `pause_after`), `before_stop(agent)`, a stop (`term` or
    `kill`), a start, 10 more and a spike; state snapshots every `snapshot_interval` seconds (0: none)."""
    settings = {**FAST, "record": {"warm_start": warm_start}, "state": {"snapshot_interval": snapshot_interval},
                **(settings or {})}
    agent = AgentProcess(mosquitto, workdir, settings, protocol="5").start()
    agent.wait_ready(mosquitto)
    calm = readings("s1", n=40, spike=False)
    publish_many(mosquitto, calm[:pause_after])
    wait_for(lambda: len(captured(agent)) >= pause_after, timeout=15, what="first part captured")
    pause(agent)
    if pause_after < 40:
        publish_many(mosquitto, calm[pause_after:])
        wait_for(lambda: len(captured(agent)) >= 40, timeout=15, what="40 readings captured")
    before_stop(agent)
    if stop == "term":
        assert stop_within(agent) == 0
    else:
        agent.kill()
        agent.stop()
    agent.start().wait_ready(mosquitto)
    publish_many(mosquitto, readings("s1", n=10, spike=True, start=40))
    wait_for(lambda: len({c["payload"] for c in captured(agent)}) >= 51, timeout=15, what="second part captured")
    return agent


def uninterrupted(mosquitto, workdir) -> list[str]:
    """The anomaly ids of one run over the same 50 readings and spike as `run_split`."""
    whole = AgentProcess(mosquitto, workdir, FAST, protocol="5").start()
    try:
        whole.wait_ready(mosquitto)
        publish_many(mosquitto, readings("s1", n=50, spike=True))
        return wait_for(lambda: anomalies(whole), timeout=15, what="the uninterrupted run's anomaly")
    finally:
        stop_within(whole)


@pytest.mark.parametrize("stop", ["term", "kill"])
def test_a_restart_resumes_warm_with_the_ids_of_an_uninterrupted_run(mosquitto, tmp_path, stop):
    expected = uninterrupted(mosquitto, tmp_path / "whole")
    agent = run_split(mosquitto, tmp_path / "split", stop, warm_start=3600.0)
    try:
        assert wait_for(lambda: anomalies(agent), timeout=15, what="anomaly after the restart") == expected
        assert "warm_start" in agent.log_tail(100_000)
    finally:
        stop_within(agent)


def test_without_warm_start_the_detector_starts_cold(mosquitto, tmp_path):
    agent = run_split(mosquitto, tmp_path / "cold", "term", warm_start=0.0)
    try:
        time.sleep(1.5)  # the spike's cycle has long been committed by then
        # 10 readings after the restart are still inside the detector's 20-reading warm-up: the spike is not judged
        assert anomalies(agent) == []
    finally:
        stop_within(agent)
