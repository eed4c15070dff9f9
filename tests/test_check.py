"""``midgram check`` against real servers: its status line and Nagios exit statuses."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from kamailio import KAMAILIO, KAMAILIO_MISSING, kamailio_server
from servers import ROOT, ServerProcess, midgram_server, short_tmpdir

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
_LINE_RE = re.compile(r"MIDGRAM (OK|WARNING|CRITICAL|UNKNOWN) - [^|\n]+( \| [^\n]+)?")


def check(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "midgram", "check", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT / "tests"), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    # One status line on stdout, whatever happened: it is what Nagios shows.
    assert _LINE_RE.fullmatch(done.stdout.rstrip("\n")), done.stdout
    return done


def _count_calls(midgram: ServerProcess, times: int) -> None:
    for _ in range(times):
        assert midgram.call("big", {"size": 1})["result"] == "x"


def test_ok_by_default_uptime_within_the_timeout(midgram: ServerProcess) -> None:
    done = check("-t", midgram.target)
    assert done.returncode == OK
    assert re.fullmatch(
        r"MIDGRAM OK - uptime answered in [0-9.]+ ms \| rtt=[0-9.]+ms;;;0;\n", done.stdout
    )


def test_a_method_and_its_params(midgram: ServerProcess) -> None:
    done = check("-t", midgram.target, "big", "size:=3")
    assert done.returncode == OK
    assert done.stdout.startswith("MIDGRAM OK - big answered in")


def test_round_trip_thresholds(midgram: ServerProcess) -> None:
    # "@0:" alerts for any value from 0 up: every round trip.
    warned = check("-t", midgram.target, "--warn", "@0:")
    assert warned.returncode == WARNING
    assert "(warning: inside 0..inf)" in warned.stdout
    assert "rtt=" in warned.stdout
    assert ";@0:;" in warned.stdout  # the threshold in the performance data
    critical = check("-t", midgram.target, "--warn", "@0:", "--crit", "@0:")
    assert critical.returncode == CRITICAL
    assert check("-t", midgram.target, "--warn", "10000", "--crit", "20000").returncode == OK


def test_statistic_thresholds(midgram: ServerProcess) -> None:
    _count_calls(midgram, 2)
    calls = int(midgram.call("get_statistics", [["calls"]])["result"]["tests:calls"])
    assert calls >= 2
    ok = check("-t", midgram.target, "--stat", "tests:calls", "--warn", f"{calls + 100}")
    assert ok.returncode == OK
    assert ok.stdout.startswith(f"MIDGRAM OK - tests:calls is {calls} |")
    assert f"'tests:calls'={calls};{calls + 100};;;" in ok.stdout
    warned = check("-t", midgram.target, "--stat", "tests:calls", "--warn", "~:1")
    assert warned.returncode == WARNING
    assert "(warning: above 1)" in warned.stdout
    critical = check("-t", midgram.target, "--stat", "calls", "-w", "~:1", "-c", "~:1")
    assert critical.returncode == CRITICAL
    assert "(critical: above 1)" in critical.stdout


def test_unreachable_and_silent_servers_are_critical(midgram: ServerProcess) -> None:
    dead = f"{short_tmpdir()}/nobody.sock"
    done = check("-t", dead)
    assert done.returncode == CRITICAL
    assert done.stdout == (f"MIDGRAM CRITICAL - cannot reach {dead}: No such file or directory\n")
    slow = check("-t", midgram.target, "--timeout", "200ms", "slow", "seconds:=2")
    assert slow.returncode == CRITICAL
    assert f"no reply from {midgram.target} within 0.2 s" in slow.stdout


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["--warn", "10:5"], "above the end"),
        (["--crit", "ten"], "is not a threshold range"),
        (["no_such_command"], "error -32601"),
        (["--stat", "nosuch:stat"], "has no statistic 'nosuch:stat'"),
        (["uptime", "--stat", "core:timestamp"], "not both"),
        (["-t", "udp:host"], "--target"),
        (["--timeout", "soon"], "not a duration"),
    ],
)
def test_a_check_that_cannot_be_made_is_unknown(
    midgram: ServerProcess, args: list[str], why: str
) -> None:
    done = check("-t", midgram.target, *args) if "-t" not in args else check(*args)
    assert done.returncode == UNKNOWN, done.stdout + done.stderr
    assert done.stdout.startswith("MIDGRAM UNKNOWN - ")
    assert why in done.stdout


def test_wait_makes_it_a_readiness_check_for_a_server_that_is_starting(folder: Path) -> None:
    socket_path = f"{folder}/late.sock"
    waiting = subprocess.Popen(
        [sys.executable, "-m", "midgram", "check", "-t", socket_path, "--wait", "30s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        with midgram_server(socket=socket_path):
            out, _err = waiting.communicate(timeout=40)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.communicate()
    assert waiting.returncode == OK
    assert out.startswith("MIDGRAM OK - uptime answered in")


def test_without_wait_a_missing_server_fails_at_once() -> None:
    done = check("-t", f"{short_tmpdir()}/late.sock")
    assert done.returncode == CRITICAL


@pytest.mark.skipif(KAMAILIO is None, reason=KAMAILIO_MISSING)
def test_kamailio() -> None:
    with kamailio_server(modules=("kex",)) as kamailio:
        target = kamailio.target
        ok = check("--dialect", "kamailio", "-t", target)
        stat = check("--dialect", "kamailio", "-t", target, "--stat", "shmem:total_size")
        missing = check("--dialect", "kamailio", "-t", target, "--stat", "core:nosuch")
    assert ok.returncode == OK
    assert ok.stdout.startswith("MIDGRAM OK - core.uptime answered in")
    assert stat.returncode == OK
    assert re.match(r"MIDGRAM OK - shmem:total_size is [1-9][0-9]* \|", stat.stdout)
    assert missing.returncode == UNKNOWN
