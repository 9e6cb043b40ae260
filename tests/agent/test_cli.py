"""`edge-agent --help` and every subcommand's: a description, and the default of every option."""

from __future__ import annotations

import argparse

import pytest
from edgewatch.agent.cli import HANDLERS, build_parser


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_has_a_handler_and_a_parser():
    assert set(_subparsers()) == set(HANDLERS)


@pytest.mark.parametrize("name", list(HANDLERS))
def test_help_describes_the_command_and_shows_every_default(name):
    parser = _subparsers()[name]
    assert parser.description and len(parser.description.splitlines()) >= 3  # summary, blank line, what it does
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{name} {action.dest}: no help"
        if action.option_strings:  # an option: its default, as a value or in words
            shown = formatter._expand_help(action)
            assert "(default: " in shown, f"{name} {action.option_strings[0]}: no default in {shown!r}"
    parser.format_help()  # every help string formats


def test_usage_errors_are_one_line(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["events", "--format", "xml"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("edge-agent events: argument --format: invalid choice: 'xml'")
    assert err.strip().endswith("(see edge-agent events --help)")
