"""Load-test an MI datagram server: the engine of ``midgram bench`` (and of ``bench/``).

::

    from midgram.client.loadtest import load_test

    result = load_test("/run/app/mi.sock", "uptime", inflight=8, duration=5, runs=3, pid=1234)
    result.median.rps, result.median.p99_us, result.median.cpu_us_per_request

The requests are sent by a small C program, ``loadgen.c``, shipped inside the package. A
Python sender would be no faster than the Python servers it measures (a recvfrom and a
sendto cost it about what they cost the server), so its own limit would be reported as the
server's. The generator keeps N requests in flight with sendmmsg/recvmmsg, matches replies
by id, counts error replies and timeouts, and prints one JSON line (see the top of the file).

It is compiled when midgram is installed, as the extension module ``midgram.client._loadgen``
(``midgram.compiled``), and each run is a process of its own (``python -m
midgram.cli.loadgen``), as a standalone program's would be: the generator's CPU is its own,
and a stuck run is killed without harm to the caller.

Server CPU per request: given the server's pid, the generator reads utime+stime of that
process and its descendants (the tree as it is before the runs) from ``/proc`` at the start
and at the end of each measured window, so the warm-up is not counted.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from midgram.client.calls import Client
from midgram.client.codec import Dialect, check_params, encode_request, get_dialect
from midgram.compiled import why_not_loaded
from midgram.errors import ConfigError, LoadgenError
from midgram.wire.address import parse_target
from midgram.wire.jsonrpc import Params

__all__ = [
    "ID_MARK",
    "LoadTestResult",
    "RunResult",
    "Summary",
    "check_target",
    "load_test",
    "loadgen_command",
    "process_tree",
    "request_template",
    "run_once",
    "run_template",
]

log = logging.getLogger(__name__)

#: Where the generator writes each request's id in the request text.
ID_MARK: Final = "%ID%"
#: The generator's module (compiled) and the entry point that runs it in its own process.
_MODULE: Final = "midgram.client._loadgen"
_ENTRY: Final = "midgram.cli.loadgen"
#: Seconds a reply may take before it counts as a timeout. Shorter than the client's 5 s: in
#: a run of a few seconds a lost datagram must show up as a timeout, not as a stalled slot.
DEFAULT_TIMEOUT: Final = 1.0
# The generator's own limits (MAX_INFLIGHT, MAX_PIDS in loadgen.c).
_MAX_INFLIGHT: Final = 4096
_MAX_PIDS: Final = 256
# The generator stops by its own clock; a run this much longer than planned is stuck.
_STUCK_AFTER: Final = 30.0
# encode_request writes the id last: with id 0 the request ends so, and the mark goes there.
_ZERO_ID_TAIL: Final = ',"id":0}'


# --- the generator --------------------------------------------------------------------------


def loadgen_command() -> list[str]:
    """The command that runs the generator once (its options follow); ``LoadgenError`` when
    this install has no generator (it was not built when midgram was installed)."""
    try:
        from midgram.client import _loadgen  # noqa: F401, PLC0415 - checked here, used by the child
    except ImportError as exc:
        raise LoadgenError(why_not_loaded(_MODULE, exc)) from exc
    # -P: the caller's cwd is not put first on the child's path, so that a `midgram` folder
    # there cannot stand in for the installed package.
    return [sys.executable, "-P", "-m", _ENTRY]


# --- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunResult:
    """One run of the generator. Latencies in microseconds (histogram, 0.4 % resolution).

    ``received`` counts replies matched to their request in time; ``error_replies`` the JSON-RPC
    errors among them; ``bad_replies`` datagrams with no usable id (a plain-text
    ``400 Parse_error``, garbage); ``late`` replies after their request timed out.
    ``cpu_us_per_request`` is the server's (None without its pid). ``raw``: the generator's
    JSON line as it is, with a few more figures (reply sizes, the generator's own CPU).
    """

    rps: float
    p50_us: float
    p90_us: float
    p99_us: float
    p999_us: float
    mean_us: float
    max_us: float
    sent: int
    received: int
    ok: int
    error_replies: int
    bad_replies: int
    late: int
    timeouts: int
    send_errors: int
    duration_s: float
    cpu_us_per_request: float | None
    sample: str
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def errors(self) -> int:
        """Requests that got no good reply other than by timing out."""
        return self.error_replies + self.bad_replies + self.send_errors

    @property
    def summary(self) -> Summary:
        """The figures ``midgram bench`` shows for this run."""
        return Summary.of(self)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> RunResult:
        """From the generator's JSON line."""
        latency = doc["latency_us"]
        cpu = doc.get("server_cpu_us_per_req")
        return cls(
            rps=float(doc["rps"]),
            p50_us=float(latency["p50"]),
            p90_us=float(latency["p90"]),
            p99_us=float(latency["p99"]),
            p999_us=float(latency["p999"]),
            mean_us=float(latency["mean"]),
            max_us=float(latency["max"]),
            sent=int(doc["sent"]),
            received=int(doc["received"]),
            ok=int(doc["ok"]),
            error_replies=int(doc["error_replies"]),
            bad_replies=int(doc["bad_replies"]),
            late=int(doc["late"]),
            timeouts=int(doc["timeouts"]),
            send_errors=int(doc["send_errors"]),
            duration_s=float(doc["duration_s"]),
            cpu_us_per_request=None if cpu is None else float(cpu),
            sample=str(doc.get("sample", "")),
            raw=doc,
        )


@dataclass(frozen=True)
class Summary:
    """The figures ``midgram bench`` shows, for one run or as the median over runs."""

    rps: float
    p50_us: float
    p99_us: float
    p999_us: float
    errors: float
    timeouts: float
    cpu_us_per_request: float | None

    @classmethod
    def of(cls, run: RunResult) -> Summary:
        return cls(
            run.rps,
            run.p50_us,
            run.p99_us,
            run.p999_us,
            run.errors,
            run.timeouts,
            run.cpu_us_per_request,
        )

    @classmethod
    def median(cls, runs: Sequence[RunResult]) -> Summary:
        """Each figure's median over the runs (figures of different runs may mix)."""
        cpus = [r.cpu_us_per_request for r in runs if r.cpu_us_per_request is not None]
        return cls(
            statistics.median(r.rps for r in runs),
            statistics.median(r.p50_us for r in runs),
            statistics.median(r.p99_us for r in runs),
            statistics.median(r.p999_us for r in runs),
            statistics.median(r.errors for r in runs),
            statistics.median(r.timeouts for r in runs),
            statistics.median(cpus) if cpus else None,
        )


@dataclass(frozen=True)
class LoadTestResult:
    """A load test: what was sent where, each run, and the medians."""

    target: str
    request: str
    inflight: int
    duration: float
    warmup: float
    pids: tuple[int, ...]
    runs: tuple[RunResult, ...]

    @property
    def median(self) -> Summary:
        return Summary.median(self.runs)

    @property
    def silent_run(self) -> int | None:
        """The number (from 1) of the first run that received no reply at all, if any."""
        return next((i for i, run in enumerate(self.runs, 1) if run.received == 0), None)


# --- requests, targets, processes -----------------------------------------------------------


def request_template(
    method: str, params: Params = None, dialect: str | Dialect = "opensips"
) -> str:
    """The request as the generator sends it, with ``%ID%`` where each request's id goes.

    The bytes are those of midgram's client (``rpc.encode_request``). TypeError for params the
    dialect cannot send; ``ConfigError`` for a request that holds ``%ID%`` itself.
    """
    params = check_params(params, get_dialect(dialect))
    text = encode_request(method, params, 0).decode()
    if ID_MARK in text:
        raise ConfigError("request", text, f"{ID_MARK} is where the load generator puts the id")
    return text.removesuffix(_ZERO_ID_TAIL) + f',"id":{ID_MARK}}}'


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (from ``/proc/*/stat``), parents first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue  # gone since the listing
        # The command name may hold spaces and parentheses: fields count from the last ")".
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(sorted(children.get(pid, ()), reverse=True))
    return tree


def _server_pids(pid: int | None) -> tuple[int, ...]:
    if pid is None:
        return ()
    if pid <= 0 or not os.path.exists(f"/proc/{pid}/stat"):
        raise ConfigError("pid", pid, "no such process (its CPU is read from /proc)")
    pids = process_tree(pid)
    if len(pids) > _MAX_PIDS:
        raise ConfigError("pid", pid, f"{len(pids)} processes; at most {_MAX_PIDS} are read")
    return tuple(pids)


def check_target(
    target: str,
    method: str,
    params: Params = None,
    *,
    dialect: str | Dialect = "opensips",
    timeout: float = DEFAULT_TIMEOUT,
) -> Any:
    """Send the request once with midgram's client and return its result.

    A target that is not there, or a request it refuses, fails here with the client's own
    error (``ConnectError``, ``ReplyTimeout``, ``RemoteError``...) instead of a run of timeouts.
    """
    return Client(target, timeout=timeout, dialect=dialect).request(method, params)


def _check_options(inflight: int, duration: float, warmup: float, timeout: float) -> None:
    if not 1 <= inflight <= _MAX_INFLIGHT:
        raise ConfigError("inflight", inflight, f"must be 1 to {_MAX_INFLIGHT}")
    if not duration > 0:
        raise ConfigError("duration", duration, "must be more than 0 seconds")
    if not warmup >= 0:
        raise ConfigError("warmup", warmup, "must be 0 seconds or more")
    if not timeout > 0:
        raise ConfigError("timeout", timeout, "must be more than 0 seconds")


# --- running --------------------------------------------------------------------------------


def run_once(
    target: str,
    request: str,
    *,
    inflight: int = 8,
    duration: float = 5.0,
    warmup: float = 1.0,
    pids: Sequence[int] = (),
    timeout: float = DEFAULT_TIMEOUT,
    label: str = "",
) -> RunResult:
    """One run of the generator: ``request`` (any text, ``%ID%`` where the id goes) sent to
    ``target`` with ``inflight`` requests in flight, measured for ``duration`` seconds after
    ``warmup``; the server's CPU is read for ``pids`` (all of them, not their children)."""
    _check_options(inflight, duration, warmup, timeout)
    if ID_MARK not in request:
        raise ConfigError("request", request, f"needs {ID_MARK} where the id goes")
    argv = [*loadgen_command(), "-t", str(parse_target(target)), "-r", request]
    argv += ["-c", str(inflight), "-d", str(duration), "-w", str(warmup)]
    argv += ["-T", str(timeout * 1000), "-l", label]
    if pids:
        argv += ["-p", ",".join(map(str, pids))]
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=duration + warmup + timeout + _STUCK_AFTER,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise LoadgenError("the load generator did not finish in time") from exc
    if proc.returncode != 0:
        why = proc.stderr.strip() or f"exit status {proc.returncode}"
        raise LoadgenError(f"the load generator failed: {why}")
    return RunResult.from_json(json.loads(proc.stdout.strip().splitlines()[-1]))


OnRun = Callable[[int, RunResult], None]


@dataclass(frozen=True)
class _Plan:
    """The options of a load test, checked when made."""

    inflight: int
    duration: float
    warmup: float
    runs: int
    timeout: float

    def __post_init__(self) -> None:
        _check_options(self.inflight, self.duration, self.warmup, self.timeout)
        if self.runs < 1:
            raise ConfigError("runs", self.runs, "must be 1 or more")


def _runs(
    target: str, request: str, plan: _Plan, pids: tuple[int, ...], on_run: OnRun | None
) -> LoadTestResult:
    results = []
    for number in range(1, plan.runs + 1):
        result = run_once(
            target,
            request,
            inflight=plan.inflight,
            duration=plan.duration,
            warmup=plan.warmup,
            pids=pids,
            timeout=plan.timeout,
            label=f"run {number}",
        )
        results.append(result)
        if on_run is not None:
            on_run(number, result)
    return LoadTestResult(
        target, request, plan.inflight, plan.duration, plan.warmup, pids, tuple(results)
    )


def run_template(
    target: str,
    request: str,
    *,
    inflight: int = 8,
    duration: float = 5.0,
    warmup: float = 1.0,
    runs: int = 3,
    pid: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    on_run: OnRun | None = None,
) -> LoadTestResult:
    """``runs`` runs of a request given as text (``%ID%`` where the id goes), unchecked.

    With ``pid``, the CPU per request of that process and its descendants. ``on_run(number,
    result)`` is called after each run.
    """
    target = str(parse_target(target))
    plan = _Plan(inflight, duration, warmup, runs, timeout)
    return _runs(target, request, plan, _server_pids(pid), on_run)


def load_test(
    target: str,
    method: str = "uptime",
    params: Params = None,
    *,
    dialect: str | Dialect = "opensips",
    inflight: int = 8,
    duration: float = 5.0,
    warmup: float = 1.0,
    runs: int = 3,
    pid: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    on_run: OnRun | None = None,
) -> LoadTestResult:
    """Load-test ``method`` with ``params`` on the server at ``target``.

    The request is sent once with midgram's client first (``check_target``): the client's
    errors say when the server is not there or refuses the request. Then ``runs`` runs of
    ``inflight`` requests in flight for ``duration`` seconds after ``warmup``. ``timeout``:
    seconds before a request counts as unanswered. Raises ``ConfigError`` for a bad option,
    ``LoadgenError`` when the generator is not installed or fails, a ``ClientError`` when the
    check fails.
    """
    target = str(parse_target(target))
    plan = _Plan(inflight, duration, warmup, runs, timeout)
    request = request_template(method, params, dialect)
    pids = _server_pids(pid)
    check_target(target, method, params, dialect=dialect, timeout=timeout)
    return _runs(target, request, plan, pids, on_run)
