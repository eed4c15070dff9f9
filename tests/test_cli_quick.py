"""``midgram call`` read without click (``quickcall``), held to the click command it stands in
for: the same command line gives the same output, errors and exit status either way, and the
quick path leaves click and asyncio unimported (its cold start is what a script calling
``midgram call`` in a loop pays: docs/benchmarks.md)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from servers import ROOT, ServerProcess, midgram_server, short_tmpdir

from midgram.cli import cli
from midgram.cli.quickcall import quick_call

DEADLINE = 20.0
ID = re.compile(r'"id":\s*[0-9]+')
#: Run ``midgram ARGV`` as the ``midgram`` script does, then report which of the heavy
#: modules it imported.
PROBE = """
import json, sys
from midgram.cli import main
sys.argv = ["midgram", *json.loads(sys.argv[1])]
try:
    main()
finally:
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("click", "asyncio"))
    print(json.dumps(heavy), file=sys.stderr)
"""


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with midgram_server("--app", "apps:mi") as running:
        yield running


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    path = short_tmpdir()
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def env(folder: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MIDGRAM_", "_MIDGRAM_"))}
    clean.pop("NO_COLOR", None)
    clean.update(XDG_CACHE_HOME=str(folder / "cache"), PYTHONPATH=str(ROOT / "src"))
    return clean


def as_script(argv: list[str], env: dict[str, str]) -> tuple[int, str, str, list[str]]:
    """``midgram ARGV`` as a real process: exit status, stdout, stderr, heavy modules."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argv)],
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    stderr, _, heavy = done.stderr.rstrip("\n").rpartition("\n")
    return done.returncode, done.stdout, stderr + "\n" if stderr else "", json.loads(heavy)


def through_click(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, argv, env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def _without_ids(*texts: str) -> list[str]:
    """The texts with each request's id (random per run) written as N."""
    return [ID.sub('"id":N', text) for text in texts]


def quick_forms(target: str, silent: str) -> list[list[str]]:
    """Command lines the quick path takes: every option it reads, each spelling, and the
    errors a call can end with (an error reply, no reply, no server). Each one's output is
    the same on two calls (``version``, not ``uptime``, whose seconds tick)."""
    return [
        ["call", "-t", target, "version"],
        ["call", "version", "--target", target],
        ["call", f"--target={target}", "which", "log_level"],
        ["call", "-t", target, "slow", "seconds:=0"],
        ["call", "-t", target, "which", ':="uptime"'],
        ["call", "-t", target, "-j", '{"command": "uptime"}', "which"],
        ["call", "-t", target, '--json=["version"]', "which"],
        ["call", "-t", target, "-f", "pretty", "version"],
        ["call", "-t", target, "--format", "lines", "which"],
        ["call", "-t", target, "--format=table", "ps"],
        ["call", "-t", target, "-f", "raw", "which"],
        ["call", "-t", target, "--dialect", "opensips", "--timeout", "2.5s", "version"],
        ["call", "-t", target, "--timeout=3", "--dry-run", "get_statistics", "statistics=a:"],
        ["call", "-t", target, "no_such_command"],
        ["call", "-t", target, "log_level", "level=loud"],
        ["call", "-t", target, "fail"],
        ["call", "-t", silent, "--timeout", "100ms", "version"],
        ["call", "-t", silent + ".none", "version"],
    ]


def test_the_quick_path_answers_as_click_does_and_imports_neither_click_nor_asyncio(
    server: ServerProcess, folder: Path, env: dict[str, str]
) -> None:
    silent = str(folder / "silent.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as peer:
        peer.bind(silent)
        for argv in quick_forms(server.target, silent):
            status, stdout, stderr, heavy = as_script(argv, env)
            reference = through_click(argv, env)
            assert (status, *_without_ids(stdout, stderr)) == (
                reference[0],
                *_without_ids(*reference[1:]),
            ), argv
            assert heavy == [], argv


def test_the_environment_variables_are_read(server: ServerProcess, env: dict[str, str]) -> None:
    variables = {**env, "MIDGRAM_TARGET": server.target, "MIDGRAM_TIMEOUT": "2s"}
    status, stdout, stderr, heavy = as_script(["call", "which", "uptime"], variables)
    assert (status, stdout, stderr, heavy) == (0, "[[]]\n", "", [])


@pytest.mark.parametrize(
    "argv",
    [
        ["call"],
        ["call", "--help"],
        ["call", "-v", "-t", "x"],  # no method
        ["call", "-p", "edge", "uptime"],
        ["call", "-t", "/x", "-tq", "uptime"],
        ["call", "-t", "/x", "log_level", "-1"],
        ["call", "-t", "/x", "--", "log_level"],
        ["call", "-t", "/x", "-j", "-", "uptime"],
        ["call", "-t", "/x", "-j", "[1]", "uptime", "word"],
        ["call", "-t", "/x", "--timeout", "0", "uptime"],
        ["call", "-t", "tcp:x:1", "uptime"],
        ["call", "-t", "/x", "-f", "nope", "uptime"],
        ["call", "-t", "/x", "--dialect", "nope", "uptime"],
        ["call", "-t", "/x", "ps", "a=1", "b"],
        ["call", "--dialect", "kamailio", "-t", "/x", "core.echo", "a=1"],
        ["which", "-t", "/x"],
        ["--version"],
    ],
)
def test_what_the_quick_path_does_not_read_is_left_to_click(argv: list[str]) -> None:
    """Nothing is sent and nothing printed: the click command reads these and says what is
    wrong with them (tests/test_cli_client.py)."""
    assert quick_call(argv) is None


def test_a_profile_in_the_environment_is_left_to_click(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIDGRAM_PROFILE", "edge")
    assert quick_call(["call", "-t", "/x", "uptime"]) is None
