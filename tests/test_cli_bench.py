"""``midgram bench`` against a real midgram server, for a fraction of a second per run.

The load generator is the compiled module midgram.client._loadgen, built at install time. Nothing
here asserts a speed: benchmarks are run on demand, these tests check shapes, figures that must
be there, and exit statuses.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from servers import ROOT, ServerProcess
from toolchain import needs_loadgen

from midgram.cli import cli
from midgram.cli.bench import TIMEOUT
from midgram.client.loadtest import DEFAULT_TIMEOUT

SHORT = ("--duration", "0.15", "--warmup", "0.02", "--runs", "2")
COLUMNS = ["run", "req/s", "p50 us", "p99 us", "p99.9 us", "errors", "timeouts"]


@pytest.fixture
def env(folder: Path) -> dict[str, str | None]:
    """No target, timeout or profile from the caller's environment; a private cache folder."""
    clean: dict[str, str | None] = {k: None for k in os.environ if k.startswith("MIDGRAM_")}
    return {**clean, "XDG_CACHE_HOME": str(folder / "cache")}


def invoke(env: dict[str, str | None], *args: str) -> Result:
    return CliRunner().invoke(cli, ["bench", *args], env=env, catch_exceptions=False)


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.split("  ") if cell.strip()]


def table_rows(output: str) -> tuple[str, list[str], list[list[str]]]:
    """Title, column names and rows of the table (columns are 2+ spaces apart)."""
    title, blank, header, rule, *rows = output.rstrip("\n").split("\n")
    assert blank == ""
    assert set(rule) <= {"-", " "}
    return title, _cells(header), [_cells(row) for row in rows]


@needs_loadgen
def test_table_with_the_server_cpu(midgram: ServerProcess, env: dict[str, str | None]) -> None:
    result = invoke(env, "-t", midgram.target, "--pid", str(midgram.proc.pid), *SHORT)
    assert (result.exit_code, result.stderr) == (0, "")
    title, columns, rows = table_rows(result.stdout)
    assert title.startswith(f"uptime on {midgram.target}: 8 in flight, 2 runs of 0.15 s")
    assert f"CPU of pids {midgram.proc.pid}, " in title  # the supervisor and its workers
    assert columns == [*COLUMNS, "CPU us/req"]
    assert [row[0] for row in rows] == ["1", "2", "median"]
    for row in rows:
        rps, p50, p99, p999, errors, timeouts, cpu = map(float, row[1:])
        assert rps > 0
        assert 0 < p50 <= p99 <= p999
        assert errors == timeouts == 0
        assert cpu > 0


@needs_loadgen
def test_json_with_params(midgram: ServerProcess, env: dict[str, str | None]) -> None:
    args = ("get_statistics", 'statistics:=["core:"]', "--inflight", "2", "-f", "json")
    result = invoke(env, "-t", midgram.target, *args, *SHORT)
    assert (result.exit_code, result.stderr) == (0, "")
    doc = json.loads(result.stdout)
    assert doc["request"] == (
        '{"jsonrpc":"2.0","method":"get_statistics","params":{"statistics":["core:"]},"id":%ID%}'
    )
    assert (doc["method"], doc["inflight"], doc["pids"]) == ("get_statistics", 2, [])
    assert len(doc["runs"]) == 2
    for run in doc["runs"]:
        assert run["received"] == run["ok"] > 0
        assert run["cpu_us_per_request"] is None
        assert '"result"' in run["sample"]
    median = doc["median"]
    assert set(median) == {"rps", "p50_us", "p99_us", "p999_us", "errors", "timeouts"} | {
        "cpu_us_per_request"
    }
    assert median["rps"] > 0
    assert median["cpu_us_per_request"] is None


def test_an_unreachable_target_exits_4_with_one_line(folder: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIDGRAM_")}
    env.update(XDG_CACHE_HOME=str(folder / "cache"), PYTHONPATH=str(ROOT / "src"))
    missing = f"{folder}/nobody.sock"
    proc = subprocess.run(
        [sys.executable, "-m", "midgram", "bench", "-t", missing],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (proc.returncode, proc.stdout) == (4, "")
    assert proc.stderr == (
        f"midgram: no socket at {missing}: is the server running? is the path right?\n"
    )


@needs_loadgen
def test_a_method_the_server_refuses_exits_1(
    midgram: ServerProcess, env: dict[str, str | None]
) -> None:
    result = invoke(env, "-t", midgram.target, "no_such_command", *SHORT)
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr.startswith("midgram: no_such_command: error -32601: Method not found")


@contextlib.contextmanager
def answers_once(path: str) -> Iterator[None]:
    """A server that answers the first request (the check) and then never again."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)

        def answer() -> None:
            data, peer = sock.recvfrom(65536)
            reply = {"jsonrpc": "2.0", "result": "OK", "id": json.loads(data)["id"]}
            sock.sendto(json.dumps(reply).encode(), peer)

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        yield
        thread.join(5)


@needs_loadgen
def test_a_server_that_stops_answering_exits_3(folder: Path, env: dict[str, str | None]) -> None:
    path = f"{folder}/once.sock"
    with answers_once(path):
        result = invoke(env, "-t", path, "--timeout", "1", "--duration", "0.1", "--runs", "1")
    assert result.exit_code == 3
    _, _, rows = table_rows(result.stdout)
    assert rows[0][1:6] == ["0", "0.0", "0.0", "0.0", "0"]  # nothing received
    assert result.stderr == (
        f"midgram: no reply from {path} during run 1: is the server busy or stuck? "
        "try a longer --timeout\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--pid", "999999999"), "no such process"),
        (("--inflight", "0"), "--inflight"),
        (("--duration", "0"), "--duration"),
        (("uptime", "a=1", "2"), "cannot be mixed"),
        (("-t", "udp:host"), "--target"),
        (("--dialect", "kamailio", "core.echo", "a=1"), "positional parameters only"),
    ],
)
def test_usage_errors_exit_2(
    args: tuple[str, ...], message: str, env: dict[str, str | None]
) -> None:
    result = invoke({**env, "MIDGRAM_TARGET": "@mg-bench-nobody"}, *args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_the_cli_default_timeout_is_the_library_one() -> None:
    assert TIMEOUT == DEFAULT_TIMEOUT
