"""midgram.client.loadtest without a server: request text, the build cache, processes, results.

Runs against real servers are in test_cli_bench.py (``midgram bench``) and test_bench.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from midgram.client.codec import encode_request
from midgram.client.loadtest import (
    LoadTestResult,
    RunResult,
    process_tree,
    request_template,
    run_template,
)
from midgram.errors import ConfigError

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
