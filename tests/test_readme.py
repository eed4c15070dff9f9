"""The README is the front door: keep its promises checkable."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from midgram.cli import cli
from midgram.config import PARAMETERS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def parameter_table() -> str:
    start = README.index("<!-- parameters:start")
    return README[start : README.index("<!-- parameters:end")]


def test_every_parameter_is_documented() -> None:
    table = parameter_table()
    documented = set(re.findall(r"^\| `(\w+)` \|", table, re.MULTILINE))
    assert documented == {p.name for p in PARAMETERS}


def test_documented_flags_exist() -> None:
    help_text = CliRunner().invoke(cli, ["serve", "--help"]).output
    for flag in re.findall(r"\| `(--[\w-]+)` \|", parameter_table()):
        assert flag in help_text, flag


def test_the_two_commands_are_shown() -> None:
    assert "make run" in README
    assert "make test" in README
