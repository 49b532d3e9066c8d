"""Helpers the scenario and CLI tests share."""

import textwrap
from pathlib import Path

import pytest

from vmemcore.cli import main
from vmemcore.errors import ScenarioError
from vmemcore.scenario import parse_scenario

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
HEAD = '[machine]\narch = "x86_64"\n[[memory]]\nsize = "16G"\n'  # lines 1-4


def scenario_error(source) -> ScenarioError:
    """The error parsing ``source`` (dedented) as ``s.toml`` raises."""
    with pytest.raises(ScenarioError) as info:
        parse_scenario(textwrap.dedent(source), path="s.toml")
    return info.value


def cli(tmp_path, capsys, source, *argv):
    """Run ``vmemcore ARGV[0] s.toml ARGV[1:]`` on ``source``: (exit code, stdout, stderr)."""
    path = tmp_path / "s.toml"
    path.write_text(source)
    code = main([argv[0], str(path), *argv[1:]])
    captured = capsys.readouterr()
    return code, captured.out, captured.err
