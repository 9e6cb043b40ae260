"""The user docs hold: every configuration key with its default in docs/reference/configuration.md,
and the README opens with the two commands (`.ci/run` runs the second)."""

from __future__ import annotations

import dataclasses
import re
import subprocess

from edgewatch.agent import config

from .conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
CONFIGURATION = (REPO / "docs" / "reference" / "configuration.md").read_text(encoding="utf-8")


def _section_table(section: str) -> dict[str, str]:
    """`key -> default` from the configuration reference's table under `[section]`."""
    start = CONFIGURATION.index(f"`[{section}]`\n")
    table = CONFIGURATION[start:].split("\n\n")[1]
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| `([^`]*)` \|", table, re.M)}


def test_every_configuration_key_is_documented_with_its_default():
    cfg = config.Config()
    for section in dataclasses.fields(cfg):
        documented = _section_table(section.name)
        obj = getattr(cfg, section.name)
        keys = [f.name for f in dataclasses.fields(obj)]
        assert sorted(documented) == sorted(keys), section.name
        for key in keys:
            value = getattr(obj, key)
            if (section.name, key) in (("agent", "id"), ("mqtt", "client_id"), ("store", "url")):
                continue  # host-dependent defaults, described in words
            text = "true" if value is True else "false" if value is False else ('""' if value == "" else str(value))
            assert documented[key] == text, f"{section.name}.{key}: docs say {documented[key]!r}, code {text!r}"


def test_readme_opens_with_the_demo_and_the_test_commands():
    blocks = re.findall(r"```sh\n(.*?)```", README, re.S)
    assert "edge-agent demo" in blocks[0] and "pytest" in blocks[1]
    ci = (REPO / ".ci" / "run").read_text()
    picked = subprocess.run(["awk", "/^# 2\\./{getline; print; exit}", "README.md"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.strip()
    assert picked == blocks[1].splitlines()[1] and "README.md" in ci
