"""midgram.loadtest without a server: request text, the build cache, processes, results.

Runs against real servers are in test_cli_bench.py (``midgram bench``) and test_bench.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from midgram import loadtest
from midgram.errors import ConfigError, LoadgenError
from midgram.loadtest import (
    LoadTestResult,
    RunResult,
    cache_dir,
    compile_program,
    process_tree,
    request_template,
    run_template,
)
from midgram.rpc import encode_request


def _no_compiler() -> str | None:
    try:
        loadtest.compiler()
    except LoadgenError as exc:
        return str(exc)
    return None


NO_COMPILER = _no_compiler()
needs_cc = pytest.mark.skipif(NO_COMPILER is not None, reason=NO_COMPILER or "")


# --- the request ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "params"),
    [("uptime", None), ("which", ["uptime"]), ("get_statistics", {"statistics": ["core:"]})],
)
def test_the_request_is_the_clients_with_the_id_marked(method: str, params: Any) -> None:
    template = request_template(method, params)
    assert template.endswith(',"id":%ID%}')
    assert template.replace("%ID%", "12").encode() == encode_request(method, params, 12)


def test_request_errors() -> None:
    with pytest.raises(TypeError, match="positional parameters only"):
        request_template("core.echo", {"a": 1}, "kamailio")
    with pytest.raises(ConfigError, match="%ID%"):
        request_template("echo", ["%ID%"])


# --- the build cache ------------------------------------------------------------------------


def test_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "midgram"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/is/ignored")
    assert cache_dir() == tmp_path / "home" / ".cache" / "midgram"


def test_no_compiler(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-cc"))
    with pytest.raises(LoadgenError, match=r"needs a C compiler .*: apt-get install gcc"):
        loadtest.build_loadgen(directory=tmp_path)


@needs_cc
def test_binaries_are_keyed_by_source_and_compiler(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    source = tmp_path / "prog.c"
    source.write_text("int main(void) { return 0; }\n")
    first = compile_program(source, tmp_path / "out")
    assert first.name.startswith("prog-")
    assert subprocess.run([first], check=False).returncode == 0
    built = first.stat().st_mtime_ns
    assert compile_program(source, tmp_path / "out") == first  # cached: not built again
    assert first.stat().st_mtime_ns == built
    monkeypatch.setenv("CC", f"{loadtest.compiler()[0]} -DOTHER")
    assert compile_program(source, tmp_path / "out") != first  # another compiler line
    monkeypatch.delenv("CC")
    source.write_text("int main(void) { return 3; }\n")  # an upgrade
    second = compile_program(source, tmp_path / "out")
    assert second != first
    assert subprocess.run([second], check=False).returncode == 3
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")) == []


@needs_cc
def test_a_compile_error_is_a_loadgen_error(tmp_path: Path) -> None:
    source = tmp_path / "broken.c"
    source.write_text("int main(void) { return }\n")
    with pytest.raises(LoadgenError, match=r"failed on broken\.c"):
        compile_program(source, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["broken.c"]  # no half-built file left


# --- processes and options ------------------------------------------------------------------


def test_process_tree_holds_the_children() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        tree = process_tree(os.getpid())
        assert tree[0] == os.getpid()
        assert child.pid in tree
        assert process_tree(child.pid) == [child.pid]
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("inflight", 0),
        ("inflight", 5000),
        ("duration", 0),
        ("warmup", -1),
        ("runs", 0),
        ("timeout", 0),
        ("pid", 999_999_999),
    ],
)
def test_options_are_checked_before_anything_runs(option: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=option):
        run_template("@mg-loadtest-nobody", '{"id":%ID%}', **{option: value})


# --- results --------------------------------------------------------------------------------


def _run(rps: float, received: int, cpu: float | None = None, errors: int = 0) -> RunResult:
    latency = {"mean": 10.0, "p50": 9.0, "p90": 12.0, "p99": 20.0, "p999": 30.0, "max": 40.0}
    counts = dict.fromkeys(("late", "timeouts", "bad_replies", "send_errors"), 0)
    doc = {
        "rps": rps,
        "latency_us": latency,
        "sent": received,
        "received": received,
        "ok": received - errors,
        "error_replies": errors,
        **counts,
        "duration_s": 1.0,
        "server_cpu_us_per_req": cpu,
    }
    return RunResult.from_json(doc)


def test_medians_and_a_silent_run() -> None:
    runs = (_run(100, 100, 5.0), _run(300, 300, 7.0, errors=2), _run(200, 200, 6.0, errors=1))
    result = LoadTestResult("@x", "{}", 8, 1.0, 0.0, (1,), runs)
    median = result.median
    assert (median.rps, median.errors, median.cpu_us_per_request) == (200, 1, 6.0)
    assert runs[1].summary.errors == 2
    assert result.silent_run is None
    silent = LoadTestResult("@x", "{}", 8, 1.0, 0.0, (), (runs[0], _run(0, 0)))
    assert silent.silent_run == 2
    assert silent.median.cpu_us_per_request == 5.0
