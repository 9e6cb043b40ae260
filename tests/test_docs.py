"""docs/ is the contract a user builds against: it must name what the code has, link only inside the repo,
and tell the product, not the history of its making."""

from __future__ import annotations

import argparse
import re
import subprocess

import pytest
from edgewatch.agent import cli as agent_cli
from edgewatch.agent.ops import metrics as agent_metrics
from edgewatch.model import cli as model_cli
from edgewatch.sidecar import cli as sidecar_cli
from prometheus_client import CollectorRegistry

from .conftest import REPO

DOCS = REPO / "docs"
USER_DOCS = [REPO / "README.md", REPO / "CHANGELOG.md", REPO / "bench" / "README.md", *sorted(DOCS.rglob("*.md"))]
ORDINALS = "first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|eleventh|twelfth|thirteenth"
NARRATION = re.compile(rf"\b({ORDINALS}|\d+(st|nd|rd|th))[- ]session|\bin (this|that|the last) session", re.I)
OUTSIDE = re.compile(r"\.\./shared|shared folder|SPEC\.md|SPEC §")


def _text(path) -> str:
    return path.read_text(encoding="utf-8")


def _section(page: str, heading: str) -> str:
    """The text under `heading` up to the next heading of the same or a higher level (fenced code skipped)."""
    level = len(heading.split(" ", 1)[0])
    lines = page[page.index(heading + "\n"):].splitlines()
    fenced = False
    for i, line in enumerate(lines[1:], 1):
        fenced ^= line.startswith("```")
        if not fenced and re.match(rf"#{{1,{level}}} ", line):
            return "\n".join(lines[:i])
    return "\n".join(lines)


@pytest.mark.parametrize("path", USER_DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_user_docs_tell_the_product_and_point_nowhere_outside_the_repo(path):
    text = _text(path)
    assert not NARRATION.search(text), NARRATION.search(text).group(0)
    assert not OUTSIDE.search(text), OUTSIDE.search(text).group(0)


def test_code_comments_point_into_the_repo():
    out = subprocess.run(["git", "grep", "-n", "-E", r"SPEC §|SPEC\.md|\.\./shared|shared[/]data", "--",
                          "agent", "model", "sidecar", "common", "deploy", "bench", "tests", ":!tests/test_docs.py"],
                         cwd=REPO, capture_output=True, text=True)
    assert out.stdout == "", out.stdout


@pytest.mark.parametrize("path", USER_DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(path):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", _text(path)):
        if "://" in target:
            continue
        assert (path.parent / target).exists(), f"{path.name}: {target}"


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _long_options(parser: argparse.ArgumentParser) -> list[str]:
    return [o for a in parser._actions if a.help != argparse.SUPPRESS for o in a.option_strings
            if o.startswith("--") and o not in ("--help", "--version")]


@pytest.mark.parametrize("command, parser", [
    ("edge-agent", agent_cli.build_parser()),
    ("edge-sidecar", sidecar_cli.build_parser()),
    ("edge-model", model_cli.build_parser()),
])
def test_every_command_and_option_is_in_the_commands_reference(command, parser):
    page = _text(DOCS / "reference" / "commands.md")
    for verb, sub in _subcommands(parser).items():
        heading = next((h for h in (f"### `{command} {verb}`", f"## `{command} {verb}`") if h + "\n" in page), None)
        assert heading, f"{command} {verb} has no section"
        section = _section(page, heading)
        for option in _long_options(sub):
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", section), f"{command} {verb} {option} is not documented"


def _sidecar_routes() -> list[tuple[str, str]]:
    """Every API route, as the app's OpenAPI description lists them (the routers are included lazily)."""
    from edgewatch.sidecar.app import create_app

    paths = create_app().openapi()["paths"]
    return [(method.upper(), path) for path, operations in paths.items() for method in sorted(operations)]


def test_every_sidecar_endpoint_has_a_section_with_a_request_example():
    page = _section(_text(DOCS / "reference" / "http-api.md"), "## The sidecar")
    routes = _sidecar_routes()
    assert len(routes) >= 6
    for method, path in routes:
        section = _section(page, f"### `{method} {path}`")
        assert re.search(rf"^curl .*{re.escape(path)}\b", section, re.M), f"{method} {path}: no curl example"


def _metric_names(registry: CollectorRegistry) -> set[str]:
    names = set()
    for family in registry.collect():
        if family.name.startswith(("process_", "python_")):
            continue
        suffix = {"counter": "_total", "info": "_info"}.get(family.type, "")
        names.add(family.name + suffix)
    return names


def test_every_metric_is_in_the_metrics_reference():
    from edgewatch.sidecar.metrics import SidecarMetrics

    page = _text(DOCS / "reference" / "metrics.md")
    sidecar_registry = CollectorRegistry()
    SidecarMetrics(sidecar_registry, lambda: 0)
    names = _metric_names(agent_metrics.REGISTRY) | _metric_names(sidecar_registry)
    assert any(n.startswith("edgewatch_") for n in names) and any(n.startswith("sidecar_") for n in names)
    missing = sorted(n for n in names if f"`{n}`" not in page)
    assert not missing, missing
