"""Smoke test of the benchmark kit (bench/): it builds, it measures, its output has its shape.

Builds the C echo reflector with the system ``cc`` (bench/cbuild.py) and drives it with
midgram's load generator (compiled at install time) for a fraction of a second; never a timed
assertion (benchmarks are run on demand, not as tests).
"""

from __future__ import annotations

import importlib
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import harness
import pytest
from cbuild import BuildError, compiler
from toolchain import needs_ipv6, needs_loadgen


def _no_compiler() -> str | None:
    try:
        compiler()
    except BuildError as exc:
        return str(exc)
    return None


# The echo reflector is the bench's own C, built where the bench runs (a developer's machine).
NO_COMPILER = _no_compiler()
needs_cc = pytest.mark.skipif(NO_COMPILER is not None, reason=NO_COMPILER or "")

pytestmark = needs_loadgen

SHORT = {"duration": 0.25, "warmup": 0.05}
LATENCY_KEYS = {"mean", "p50", "p90", "p99", "p999", "max"}
COUNT_KEYS = {
    "sent",
    "received",
    "ok",
    "error_replies",
    "bad_replies",
    "late",
    "timeouts",
    "truncated",
    "send_errors",
    "send_eagain",
}


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mgbt", dir="/tmp") as tmp:  # short socket paths
        yield Path(tmp)


@pytest.fixture(scope="module")
def c_echo(workdir: Path) -> Iterator[harness.Server]:
    target = str(workdir / "echo.sock")
    spec = harness.ServerSpec(
        "echo_c", [str(harness.build("echo")), target], target, harness.REQUESTS["uptime"]
    )
    with harness.Server(spec) as server:
        yield server


def check_shape(result: dict[str, Any]) -> None:
    assert result.keys() >= COUNT_KEYS
    assert all(isinstance(result[k], int) and result[k] >= 0 for k in COUNT_KEYS)
    assert set(result["latency_us"]) == LATENCY_KEYS
    lat = result["latency_us"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"]
    assert lat["p999"] <= lat["max"] * 1.01  # percentiles are bucket midpoints (0.4 %)
    assert result["rps"] > 0
    assert result["received"] <= result["sent"]
    assert result["ok"] + result["error_replies"] == result["received"]
    assert set(result["reply_bytes"]) == {"min", "mean", "max"}
    assert result["duration_s"] > 0


@needs_cc
def test_the_echo_builds_without_warnings(capfd: pytest.CaptureFixture[str]) -> None:
    assert harness.build("echo", force=True).exists()  # a warning would be a BenchError
    assert capfd.readouterr().err == ""


def test_a_broken_source_is_a_bench_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "broken.c").write_text("int main(void) { return }\n")
    monkeypatch.setattr(harness, "BENCH_DIR", tmp_path)
    monkeypatch.setattr(harness, "BIN_DIR", tmp_path / "bin")
    if NO_COMPILER is None:
        with pytest.raises(harness.BenchError, match=r"on broken\.c"):
            harness.build("broken")
        assert list((tmp_path / "bin").iterdir()) == []  # no half-built file left
    monkeypatch.setenv("CC", str(tmp_path / "no-cc"))
    with pytest.raises(harness.BenchError, match=r"needs a C compiler \(.*/no-cc\)"):
        harness.build("broken")


@needs_cc
def test_loadgen_against_c_echo_unix(c_echo: harness.Server) -> None:
    result = harness.run_load(
        c_echo.target,
        harness.REQUESTS["uptime"],
        inflight=8,
        pids=c_echo.pids,
        label="smoke",
        **SHORT,
    )
    check_shape(result)
    assert result["label"] == "smoke"
    assert result["inflight"] == 8
    assert result["ok"] == result["received"] > 0
    assert result["timeouts"] == result["bad_replies"] == result["late"] == 0
    assert isinstance(result["server_cpu_us_per_req"], float)
    assert result["sample"].startswith('{"jsonrpc":"2.0","method":"uptime","id":')


@needs_cc
@pytest.mark.parametrize("host", ["127.0.0.1", pytest.param("[::1]", marks=needs_ipv6)])
def test_loadgen_against_c_echo_udp(host: str) -> None:
    """On port 0: the echo says which port it took, and Server.target is that address."""
    asked = f"udp:{host}:0"
    spec = harness.ServerSpec(
        "echo_c", [str(harness.build("echo")), asked], asked, harness.REQUESTS["uptime"]
    )
    with harness.Server(spec) as server:
        host_said, _, port = server.target.rpartition(":")
        assert (host_said, int(port) > 0) == (f"udp:{host}", True)
        result = harness.run_load(server.target, harness.REQUESTS["uptime"], inflight=4, **SHORT)
    check_shape(result)
    assert result["ok"] == result["received"] > 0
    assert result["server_cpu_us_per_req"] is None  # no pids given


@needs_cc
def test_loadgen_counts_error_and_bad_replies(c_echo: harness.Server) -> None:
    error = '{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found"},"id":%ID%}'
    result = harness.run_load(c_echo.target, error, inflight=2, **SHORT)
    assert result["error_replies"] == result["received"] > 0
    assert result["ok"] == 0
    plain = "400 Parse_error %ID%"  # OpenSIPS's plain-text error: no JSON, no id
    result = harness.run_load(
        c_echo.target, plain, inflight=2, timeout_ms=20, duration=0.1, warmup=0.0
    )
    assert result["received"] == 0
    assert result["bad_replies"] > 0
    assert result["timeouts"] > 0


def test_loadgen_counts_timeouts(workdir: Path) -> None:
    path = str(workdir / "mute.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as mute:  # bound, never answers
        mute.bind(path)
        result = harness.run_load(
            path, harness.REQUESTS["uptime"], inflight=3, timeout_ms=20, duration=0.1, warmup=0
        )
    assert result["received"] == 0
    assert result["timeouts"] >= 3
    assert result["sample"] == ""


def test_loadgen_rejects_a_template_without_id() -> None:
    with pytest.raises(harness.BenchError, match="%ID%"):
        harness.run_load("@nowhere", '{"method":"uptime"}', inflight=1, **SHORT)


@needs_cc
def test_a_scenario_end_to_end_against_the_echoes(workdir: Path) -> None:
    opts = harness.Options(runs=2, duration=0.15, warmup=0.02, servers=("echo_py", "echo_c"))
    report = harness.run_scenario(harness.SCENARIOS[0], opts, workdir)
    assert set(report["summary"]) == {"echo_py", "echo_c"}
    for summary in report["summary"].values():
        assert summary["runs"] == 2
        assert summary["rps"]["min"] <= summary["rps"]["median"] <= summary["rps"]["max"]
        assert summary["failures"]["timeouts"] == 0
    for info in report["servers"].values():
        assert info["memory"]
        assert all(p["rss_mb"] >= p["uss_mb"] > 0 for p in info["memory"])
    _check_markdown(report)


@needs_cc
def test_the_udp_scenario_serves_each_on_the_port_it_took(workdir: Path) -> None:
    """midgram and the echoes bind port 0 and say which port they took; each is measured
    there (the report's target)."""
    scenario = next(s for s in harness.SCENARIOS if s.transport == "udp")
    servers = ("midgram", "echo_py", "echo_c")
    opts = harness.Options(runs=1, duration=0.1, warmup=0.02, servers=servers)
    report = harness.run_scenario(scenario, opts, workdir)
    assert set(report["summary"]) == set(servers)
    for key in servers:
        assert report["summary"][key]["failures"]["timeouts"] == 0
        host, _, port = report["servers"][key]["target"].rpartition(":")
        assert (host, int(port) > 0) == ("udp:127.0.0.1", True), key
    assert len({report["servers"][key]["target"] for key in servers}) == len(servers)


def _check_markdown(report: dict[str, Any]) -> None:
    results = {
        "started": "now",
        "command": "test",
        "environment": harness.environment(),
        "options": {"runs": 2, "duration": 0.15, "warmup": 0.02},
        "scenarios": [report, {"scenario": {"name": "tracing"}, "skipped": "not yet"}],
    }
    text = harness.markdown(results)
    assert "| uptime | Python echo |" in text
    assert "| tracing | *not yet* |" in text


def _midgram_server_missing() -> str | None:
    try:
        importlib.import_module("midgram.server.wiring")
    except ImportError as exc:
        return f"midgram's server is not there yet: {exc}"
    return None


MIDGRAM_MISSING = _midgram_server_missing()


@pytest.mark.skipif(MIDGRAM_MISSING is not None, reason=MIDGRAM_MISSING or "")
def test_loadgen_against_midgram(workdir: Path) -> None:
    target = str(workdir / "midgram.sock")
    spec = harness.ServerSpec(
        "midgram",
        harness.midgram_serve_argv(target, 1),
        target,
        harness.REQUESTS["uptime"],
        expected_processes=2,
    )
    with harness.Server(spec) as server:
        result = harness.run_load(
            target, harness.REQUESTS["uptime"], inflight=8, pids=server.pids, **SHORT
        )
    check_shape(result)
    assert result["ok"] == result["received"] > 0
    assert result["timeouts"] == result["bad_replies"] == result["error_replies"] == 0
    assert '"result"' in result["sample"]
