"""The README is the front door: keep its promises checkable."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from midgram.cli import cli
from midgram.config import PARAMETERS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PARAMETERS_PAGE = (ROOT / "docs" / "parameters.md").read_text()


def parameter_table() -> str:
    """The table of docs/parameters.md, between its markers."""
    start = PARAMETERS_PAGE.index("<!-- parameters:start")
    return PARAMETERS_PAGE[start : PARAMETERS_PAGE.index("<!-- parameters:end")]


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


def test_the_library_example_runs_as_written() -> None:
    """The first Python block of the README, with its socket moved to a test folder."""
    import subprocess
    import sys

    from servers import ROOT, RawClient, short_tmpdir, wait_until

    example = re.search(r"### Serving your own commands\n\n```python\n(.*?)```", README, re.S)
    assert example is not None
    folder = short_tmpdir()
    code = example.group(1).replace("/run/calls/mi.sock", f"{folder}/mi.sock")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: Path(folder, "mi.sock").exists(), what="the example to listen")
        with RawClient(f"{folder}/mi.sock") as client:
            assert client.call("which", ["call_limit"])["result"] == [
                [],
                ["limit"],
                ["limit", "scope"],
            ]
            assert client.call("call_limit", {"limit": "5"})["result"] == {
                "limit": 5,
                "scope": "global",
            }
            assert client.call("calls_active")["result"] == {"active": 3}
            assert client.call("help", ["calls_active"])["result"]["Exported by"] == "calls"
            assert client.call("kill")["result"] == "OK"
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
