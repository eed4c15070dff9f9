"""The README is the front door: every example in it runs, as written, in a test.

Each fenced block of README.md is preceded by a marker, ``<!-- example: NAME -->``, and is run
by ``test_example_NAME`` (dashes as underscores). A block without a marker, or a marker
without its test, fails ``test_every_block_is_run``.

Shell examples run against a real ``midgram serve`` started as the tour starts it, with
``XDG_RUNTIME_DIR`` pointing at a temporary folder: the README's ``/run/user/1000`` is that
folder, so the default socket the tour relies on is the server's. A command's output, when
the README shows one, must match it: JSON by shape (times and pids vary), text with digits
and column widths normalised. Python examples run with their socket paths replaced by
temporary ones.

Also: the parameter tables of docs/parameters.md and docs/tracing.md are the ones
``midgram.config.table`` renders from the parameters' declarations, and ``midgram serve
--help`` has a flag for each.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from servers import READY_TIMEOUT, RawClient, midgram_server, short_tmpdir, wait_until

from midgram.cli import cli
from midgram.config import PARAMETERS
from midgram.config.table import PAGES, markdown_table

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
#: Where the README's examples say XDG_RUNTIME_DIR is.
README_RUNTIME_DIR = "/run/user/1000"
BIN = Path(sys.executable).parent

_BLOCK = re.compile(r"^```([\w-]*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_MARKER = re.compile(r"<!-- example: ([\w-]+) -->\n$")


def readme_blocks() -> dict[str, str]:
    """Every fenced block of the README by its marker's name; a block without one is an
    error (it would be an example no test runs)."""
    blocks: dict[str, str] = {}
    for match in _BLOCK.finditer(README):
        before = README[: match.start()]
        marker = _MARKER.search(before[before.rfind("\n", 0, len(before) - 1) + 1 :])
        assert marker is not None, f"README block without an example marker:\n{match.group(2)}"
        name = marker.group(1)
        assert name not in blocks, f"two README blocks named {name}"
        blocks[name] = match.group(2)
    return blocks


BLOCKS = readme_blocks()


def test_every_block_is_run() -> None:
    for name in BLOCKS:
        assert f"test_example_{name.replace('-', '_')}" in globals(), f"no test runs {name}"


@dataclass
class Step:
    """One ``$ command`` of a console block and the output the README shows for it."""

    command: str
    output: list[str] = field(default_factory=list)


def console_steps(name: str) -> list[Step]:
    steps: list[Step] = []
    for line in BLOCKS[name].splitlines():
        if line.startswith("$ "):
            steps.append(Step(line[2:]))
        else:
            assert steps, f"{name}: output before any command"
            steps[-1].output.append(line)
    return steps


# --- comparing what a command printed with what the README shows --------------------------


def shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return type(value).__name__


def normalised(text: str) -> str:
    """Digits, dash rules and runs of spaces vary with pids and times."""
    text = re.sub(r"[0-9]+", "N", text)
    text = re.sub(r"-+", "-", text)
    return "\n".join(re.sub(r"[ \t]+", " ", line).strip() for line in text.splitlines())


def assert_output(step: Step, printed: str) -> None:
    shown = "\n".join(step.output)
    if not shown:
        assert printed.strip(), f"{step.command}: printed nothing"
        return
    if shown.startswith(("{", "[")):
        assert shape(json.loads(printed)) == shape(json.loads(shown)), step.command
        return
    assert normalised(printed) == normalised(shown), step.command


# --- the tour's server ----------------------------------------------------------------------


@dataclass
class Tour:
    """``midgram serve`` as the tour starts it, and the environment its commands run in."""

    runtime_dir: str
    env: dict[str, str]
    announced: list[str]

    def localise(self, text: str) -> str:
        return text.replace(README_RUNTIME_DIR, self.runtime_dir).replace(
            "/tmp/me.sock", f"{self.runtime_dir}/me.sock"
        )

    def run(self, step: Step) -> str:
        done = subprocess.run(
            ["bash", "-c", self.localise(step.command)],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.runtime_dir,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, f"{step.command}: status {done.returncode}\n{done.stderr}"
        return done.stdout


def _read_announcement(stream: Any, lines: list[str], done: threading.Event) -> None:
    for raw in stream:
        lines.append(raw.rstrip("\n"))
        if "stop it:" in raw:
            done.set()
    done.set()


@pytest.fixture(scope="module")
def tour() -> Iterator[Tour]:
    runtime_dir = short_tmpdir()
    env = {
        **os.environ,
        "XDG_RUNTIME_DIR": runtime_dir,
        "HOME": runtime_dir,  # no ~/.opensips-cli.cfg of the machine's
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "NO_COLOR": "1",
    }
    (serve,) = console_steps("tour-serve")
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {serve.command}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=runtime_dir,
    )
    lines: list[str] = []
    announced = threading.Event()
    reader = threading.Thread(
        target=_read_announcement, args=(proc.stderr, lines, announced), daemon=True
    )
    reader.start()
    try:
        assert announced.wait(READY_TIMEOUT), "midgram serve did not announce itself"
        assert proc.poll() is None, "\n".join(lines)
        yield Tour(runtime_dir, env, list(lines))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            reader.join(5)
            if proc.stderr is not None:
                proc.stderr.close()
            shutil.rmtree(runtime_dir, ignore_errors=True)


def test_example_tour_serve(tour: Tour) -> None:
    (serve,) = console_steps("tour-serve")
    announcement = [line for line in tour.announced if "midgram[" not in line]  # not the log
    assert announcement == [tour.localise(line) for line in serve.output]


def test_example_tour_call(tour: Tour) -> None:
    for step in console_steps("tour-call"):
        assert_output(step, tour.run(step))


def test_example_tour_clients(tour: Tour) -> None:
    for step in console_steps("tour-clients"):
        assert_output(step, tour.run(step))


def test_example_tour_socat(tour: Tour) -> None:
    for step in console_steps("tour-socat"):
        assert_output(step, tour.run(step))


# --- the Python examples --------------------------------------------------------------------


def run_python(name: str, path: str, replacement: str) -> subprocess.Popen[str]:
    code = BLOCKS[name]
    assert path in code, f"{name} no longer uses {path}"
    return subprocess.Popen(
        [sys.executable, "-c", code.replace(path, replacement)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


def test_example_embed_serve(folder: Path) -> None:
    proc = run_python("embed-serve", "/run/calls/mi.sock", f"{folder}/mi.sock")
    try:
        wait_until(lambda: Path(folder, "mi.sock").exists(), what="the example to listen")
        with RawClient(f"{folder}/mi.sock") as client:
            recipes = client.call("which", ["call_limit"])["result"]
            assert recipes == [[], ["limit"], ["limit", "scope"]]
            limited = client.call("call_limit", {"limit": "5"})["result"]
            assert limited == {"limit": 5, "scope": "global"}
            assert client.call("calls_active")["result"] == {"active": 3}
            assert client.call("help", ["calls_active"])["result"]["Exported by"] == "calls"
            processes = client.call("ps")["result"]["Processes"]
            assert [p["Type"] for p in processes].count("MI Datagram") == 2
            assert "calls:started" in client.call("get_statistics", [["calls:"]])["result"]
            assert client.call("kill")["result"] == "OK"
        assert proc.wait(15) == 0
    finally:
        _finish(proc)


def test_example_embed_async(folder: Path) -> None:
    proc = run_python("embed-async", "/run/calls/mi.sock", f"{folder}/mi.sock")
    try:
        wait_until(lambda: Path(folder, "mi.sock").exists(), what="the example to listen")
        with RawClient(f"{folder}/mi.sock") as client:
            assert client.call("calls_active")["result"] == {"active": 3}
            assert client.call("kill")["result"] == "OK"
        assert proc.wait(15) == 0
    finally:
        _finish(proc)


def test_example_client() -> None:
    with midgram_server() as server:
        proc = run_python("client", "/run/opensips/mi.sock", server.target)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    uptime, stats, recipes, error = out.splitlines()
    assert "Up since" in uptime
    assert "core:timestamp" in stats
    assert recipes == "[[], ['level'], ['level', 'pid']]"
    assert error == "-32601 Method not found"


# --- the rest of the front door -------------------------------------------------------------


def test_the_two_commands_are_shown() -> None:
    assert "`make run`" in README
    assert "`make test`" in README


def test_readme_links_lead_somewhere() -> None:
    for target in re.findall(r"\]\(((?:docs|tests)/[^)#]+)", README):
        assert (ROOT / target).exists(), target


@pytest.mark.parametrize("page", sorted(PAGES))
def test_the_parameter_tables_are_generated_from_the_declarations(page: str) -> None:
    assert markdown_table(page) in (ROOT / "docs" / page).read_text(), (
        f"docs/{page}'s parameter table is not the one midgram.config.settings declares: "
        f"run `.venv/bin/python tools/parameter_table.py` and commit docs/{page}"
    )


def test_serve_has_a_flag_for_each_parameter() -> None:
    help_text = CliRunner().invoke(cli, ["serve", "--help"], terminal_width=200).output
    for parameter in PARAMETERS:
        shown = ", ".join(parameter.flags)
        if parameter.off_flag is not None:
            shown += f" / {parameter.off_flag}"
        assert f"  {shown} " in help_text, parameter.name
        assert f"{parameter.name}: {parameter.description}" in help_text, parameter.name
