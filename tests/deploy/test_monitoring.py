"""The Grafana dashboard and the Prometheus rules in deploy/ match what a running agent and sidecar export."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import timedelta

import httpx
import pytest
from edgewatch.agent.testing.harness import (AgentProcess, EmbeddedBroker, publish, publish_many,
                                             wait_for_dead_letters, wait_for_events)
from edgewatch.agent.testing.simulator import SimConfig, Simulator
from edgewatch.agent.timeutil import utcnow
from edgewatch.common.ports import free_port
from edgewatch.sidecar.testing import SidecarProcess
from prometheus_client.parser import text_string_to_metric_families

from .conftest import DEPLOY, need

DASHBOARD = DEPLOY / "grafana" / "edgewatch.json"
RULES = DEPLOY / "prometheus" / "edgewatch-rules.yml"
SYNTHETIC = {"up"}  # written by Prometheus itself for every scrape target, never in a /metrics page
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (function names, label names and keywords left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings (label values)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)  # label matchers, ranges ([5m], [$__rate_interval])
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    names = set(re.findall(r"label_values\(\s*([a-zA-Z_:][\w:]*)\s*,", text))
    text = re.sub(r"label_values\([^)]*\)", " ", text)
    for m in re.finditer(r"(?<![\w$.])([a-zA-Z_:][\w:]*)\s*(\()?", text):
        if m.group(2) is None and m.group(1).lower() not in _KEYWORDS:
            names.add(m.group(1))
    return names


def test_metric_names_are_read_off_promql():
    expr = ('histogram_quantile(0.99, sum by (le, endpoint) (rate(sidecar_request_latency_seconds_bucket'
            '{instance=~"$sidecar"}[$__rate_interval]))) / on (instance) group_left up{job="a b"} > 0.5 and bool x_total')
    assert metric_names(expr) == {"sidecar_request_latency_seconds_bucket", "up", "x_total"}
    assert metric_names("label_values(edgewatch_engine_heartbeat_timestamp_seconds, instance)") == {
        "edgewatch_engine_heartbeat_timestamp_seconds"}


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["query"]["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return exprs


def rule_exprs() -> list[str]:
    """`expr:` values of the rules file (block scalars joined), without a YAML dependency."""
    exprs, lines = [], RULES.read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\s*expr:\s*(.*)$", line)
        if not m:
            continue
        if m.group(1).strip() in ("|", ">"):
            indent = len(lines[i + 1]) - len(lines[i + 1].lstrip())
            block = [ln for ln in lines[i + 1:] if ln.strip()]
            exprs.append(" ".join(ln.strip() for ln in _until_dedent(block, indent)))
        else:
            exprs.append(m.group(1))
    return exprs


def _until_dedent(lines: list[str], indent: int) -> list[str]:
    out = []
    for ln in lines:
        if len(ln) - len(ln.lstrip()) < indent:
            break
        out.append(ln)
    return out


def test_dashboard_and_rules_cover_what_operators_watch():
    text = " ".join(dashboard_exprs())
    for metric in ("edgewatch_messages_in_total", "edgewatch_engine_lag_seconds", "edgewatch_dead_letters_total",
                   "edgewatch_events_total", "edgewatch_outbox_backlog", "sidecar_request_latency_seconds_bucket",
                   "sidecar_queue_depth"):
        assert metric in text, metric
    alerts = re.findall(r"- alert: (\w+)", RULES.read_text())
    assert alerts == ["EdgewatchAgentDown", "EdgewatchEngineStalled", "EdgewatchEngineLag", "EdgewatchDeadLetterRate",
                      "EdgewatchOutboxBacklogGrowing", "EdgewatchSidecarUnavailable",
                      "EdgewatchNoReadingsFromSensorGroup"]
    assert len(rule_exprs()) == len(alerts)


def test_promtool_accepts_the_rules():
    promtool = need("promtool")
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


def _scrape(url: str) -> set[str]:
    r = httpx.get(url, timeout=10)
    r.raise_for_status()
    return {s.name for family in text_string_to_metric_families(r.text) for s in family.samples}


@pytest.fixture(scope="module")
def live_metric_names(tmp_path_factory) -> set[str]:
    """Sample names scraped from a running agent (after readings, a malformed message and events) and sidecar."""
    port = free_port()
    with EmbeddedBroker() as broker, SidecarProcess(None) as sidecar:
        agent = AgentProcess(broker, tmp_path_factory.mktemp("agent"), settings={
            "metrics": {"listen": f"127.0.0.1:{port}"}, "sidecar": {"url": sidecar.url}})
        agent.start()
        try:
            agent.wait_ready(broker)
            sim = Simulator(SimConfig(sensors=3, symbols=1, duration=120), utcnow() - timedelta(seconds=120))
            publish_many(broker, [(m.topic, m.payload) for m in sim.messages()])
            publish(broker, "sensors/site0/bad", b"not json")
            wait_for_events(agent.db, 3)
            wait_for_dead_letters(agent.db, 1)  # its counter is counted before it is logged: now it is exported
            httpx.post(sidecar.url + "/v1/classify", json={"texts": ["ACME beats estimates"]}, timeout=30)
            return _scrape(f"http://127.0.0.1:{port}/metrics") | _scrape(sidecar.url + "/metrics")
        finally:
            assert agent.stop() == 0, agent.log_tail()


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_every_referenced_metric_is_exported(source, live_metric_names):
    exprs = dashboard_exprs() if source == "dashboard" else rule_exprs()
    referenced = set().union(*map(metric_names, exprs))
    assert referenced, source
    assert referenced - SYNTHETIC - live_metric_names == set()
