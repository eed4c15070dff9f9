"""midgram's benchmark harness: midgram against reference servers, in the same run.

Every scenario starts midgram and its references (the bare Python echo loop, the C echo
reflector and, where it has a counterpart command, Kamailio's jsonrpcs datagram server), then
drives them in turn (A B C A B C ...) with midgram's load generator (``midgram.client.loadtest``
runs it, as for ``midgram bench``; it is compiled when midgram is installed), ``--runs``
times each.
Figures are medians with their spread; ratios compare servers measured in the same invocation,
never absolute numbers, because on a small machine the server competes with its load generator.

Per run: requests/s, latency p50/p99/p99.9, server CPU microseconds per request (utime+stime
of the server's whole process tree over the measured window, read by the generator), and after
the runs each server process's memory (RSS, and USS: the Private_* lines of smaps_rollup).
Besides: the wall time of a cold ``midgram call uptime`` against ``opensips-cli -x mi uptime``,
and the start-up time of ``midgram serve`` until its socket answers.

Writes ``results.json``, ``results.md`` and ``chart.png`` under ``bench/results/<stamp>/``
(``bench/results/latest`` points at the newest). Run ``python bench/run.py --help``.
``main(argv)`` is the entry point; ``load_test`` drives one server of a user's own.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from cbuild import BuildError, compile_c
from kamailio_ref import kamailio_binary, kamailio_config

import midgram
from midgram.client import loadtest
from midgram.client.loadtest import process_tree
from midgram.errors import MidgramError
from midgram.server.batchio import version_line

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
BIN_DIR = BENCH_DIR / "bin"
RESULTS_DIR = BENCH_DIR / "results"
BASELINE = BENCH_DIR / "BASELINE.md"
PYTHON = sys.executable
VENV_BIN = Path(PYTHON).parent

#: The size of the reply-60k scenario's reply, and of its bare loop's (echo_py --reply-size).
BLOB_SIZE = 60000
REQUESTS: dict[str, str] = {
    "uptime": '{"jsonrpc":"2.0","method":"uptime","id":%ID%}',
    "which": '{"jsonrpc":"2.0","method":"which","id":%ID%}',
    "blob": (
        '{"jsonrpc":"2.0","method":"bench_blob","params":{"size":' + str(BLOB_SIZE) + '},"id":%ID%}'
    ),
    "named": (
        '{"jsonrpc":"2.0","method":"bench_named",'
        '"params":{"user":"alice","count":3,"enabled":true},"id":%ID%}'
    ),
}
KAMAILIO_REQUEST = '{"jsonrpc":"2.0","method":"core.uptime","id":%ID%}'

# The bar of issue 5, on the base scenario, against the Python echo loop of the same run.
BAR_SCENARIO = "uptime"
BAR_REFERENCE = "echo_py"
BAR = {"rps": (">=", 0.65), "cpu": ("<=", 1.6), "p99": ("<=", 2.0)}
GENERATOR_HEADROOM = 1.5  # the C echo must run this much faster than midgram
WORKER_USS_LIMIT_MB = 8.0

SERVER_ORDER = ("midgram", "minimal_py", "echo_py", "echo_py_hep", "echo_c", "kamailio")
SERVER_TITLES = {
    "midgram": "midgram",
    "minimal_py": "minimal Python MI loop",
    "echo_py": "Python echo",
    "echo_py_hep": "Python echo + 2 UDP copies",
    "echo_c": "C echo",
    "kamailio": "Kamailio jsonrpcs",
}


class BenchError(Exception):
    """The benchmark cannot go on (a missing compiler, a server that does not start...)."""


# --- the C programs -------------------------------------------------------------------------


def build(name: str, *, force: bool = False) -> Path:
    """``bench/NAME.c``'s binary, built into ``bench/bin/`` with the system compiler."""
    try:
        return compile_c(BENCH_DIR / f"{name}.c", BIN_DIR, force=force)
    except BuildError as exc:
        raise BenchError(str(exc)) from exc


def check_loadgen() -> None:
    """The load generator must be installed (midgram built it at install time)."""
    try:
        loadtest.loadgen_command()
    except MidgramError as exc:
        raise BenchError(str(exc)) from exc


# --- addresses and the readiness probe ------------------------------------------------------


#: A UDP target on the port the kernel chooses: midgram and the echo servers bind it and say
#: which port they took (``listening on udp:HOST:PORT``), which ``Server`` reads.
ANY_UDP = "udp:127.0.0.1:0"
_LISTENING_ON = re.compile(r"listening on (udp:\S+)")


def kamailio_port() -> int:
    """A UDP port free now, for Kamailio, which cannot bind port 0 (its listen takes 0 for
    5060, jsonrpcs refuses it). Another program may take it before Kamailio binds it: then
    Kamailio exits, and its runs are skipped with the reason (its last lines)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _sockaddr(target: str) -> tuple[int, Any]:
    if target.startswith("udp:"):
        rest = target[4:]
        if rest.startswith("["):
            host, _, port = rest[1:].partition("]:")
            return socket.AF_INET6, (host, int(port))
        host, _, port = rest.rpartition(":")
        return socket.AF_INET, (host, int(port))
    path = target.removeprefix("unix:")
    return socket.AF_UNIX, ("\0" + path[1:] if path.startswith("@") else path)


def probe(target: str, request: str, timeout: float) -> bytes | None:
    """One request; the reply, or None when the server is not answering (yet)."""
    family, address = _sockaddr(target)
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        if family == socket.AF_UNIX:
            s.bind("")  # autobind: an abstract reply address of our own
        s.settimeout(timeout)
        try:
            s.sendto(request.replace("%ID%", "0").encode(), address)
            data, _ = s.recvfrom(70000)
        except OSError:
            return None
        return data


# --- processes: tree, CPU, memory -----------------------------------------------------------


def memory_of(pid: int) -> dict[str, float] | None:
    """RSS, PSS and USS (Private_*) in MB, from /proc/PID/smaps_rollup."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    kb: dict[str, int] = {}
    for line in lines[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            kb[key] = int(parts[0])
    uss = sum(v for k, v in kb.items() if k.startswith("Private_"))
    return {
        "rss_mb": round(kb.get("Rss", 0) / 1024, 2),
        "pss_mb": round(kb.get("Pss", 0) / 1024, 2),
        "uss_mb": round(uss / 1024, 2),
    }


# --- servers --------------------------------------------------------------------------------


@dataclass
class ServerSpec:
    """How to start one server for one scenario."""

    key: str
    argv: list[str]
    target: str
    request: str
    expected_processes: int | None = None  # wait for this many before measuring
    env: dict[str, str] | None = None
    files: dict[str, str] = field(default_factory=dict)  # written before start


class Server:
    """A started server: its process tree, readiness, stop, and its stderr (last lines)."""

    def __init__(self, spec: ServerSpec) -> None:
        self.spec = spec
        #: Where it listens: the spec's target, with the port it took for port 0.
        self.target = spec.target
        self.proc: subprocess.Popen[bytes] | None = None
        self.output: deque[str] = deque(maxlen=60)
        self._new_output = threading.Event()
        self.startup_s: float | None = None
        self.pids: list[int] = []
        self._pump_thread: threading.Thread | None = None

    def start(self, timeout: float = 20.0) -> Server:
        for path, text in self.spec.files.items():
            Path(path).write_text(text)
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            self.spec.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=self.spec.env,
            start_new_session=True,
        )
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()
        self._wait_ready(t0 + timeout)
        self.startup_s = time.perf_counter() - t0
        self._wait_processes(t0 + timeout)
        return self

    def _pump(self) -> None:
        assert self.proc is not None
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.output.append(raw.decode(errors="replace").rstrip())
            self._new_output.set()
        self._new_output.set()

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            tail = "\n".join(self.output)
            raise BenchError(
                f"{self.spec.key} exited ({self.proc.returncode}) before answering:\n{tail}"
            )

    def _wait_ready(self, deadline: float) -> None:
        """Probe until a reply comes; between failed sends, wait for the server's next output."""
        while True:
            self._check_alive()
            if self._port_known() and probe(self.target, self.spec.request, 0.05) is not None:
                return
            if time.perf_counter() > deadline:
                raise BenchError(f"{self.spec.key} did not answer on {self.target}")
            self._new_output.wait(0.02)
            self._new_output.clear()

    def _port_known(self) -> bool:
        """A server started on port 0 can be called once it has said which port it took."""
        if not self.target.endswith(":0"):
            return True
        for line in list(self.output):
            said = _LISTENING_ON.search(line)
            if said:
                self.target = said[1]
                return True
        return False

    def _wait_processes(self, deadline: float) -> None:
        assert self.proc is not None
        want = self.spec.expected_processes
        while True:
            self.pids = process_tree(self.proc.pid)
            if want is None or len(self.pids) >= want:
                return
            self._check_alive()
            if time.perf_counter() > deadline:
                raise BenchError(f"{self.spec.key}: {len(self.pids)} processes, not {want}")
            # each probe is answered by a worker, so it paces the wait on real work
            probe(self.target, self.spec.request, timeout=0.02)

    def memory(self) -> list[dict[str, Any]]:
        out = []
        for pid in self.pids:
            mem = memory_of(pid)
            if mem is not None:
                role = "main" if self.proc is not None and pid == self.proc.pid else "child"
                out.append({"pid": pid, "role": role, **mem})
        return out

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)  # the group we started, by its id
                self.proc.wait(timeout)
        if self._pump_thread is not None:
            self._pump_thread.join(timeout)  # EOF once every process of the group is gone
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- the load generator ---------------------------------------------------------------------


def run_load(
    target: str,
    request: str,
    *,
    inflight: int,
    duration: float,
    warmup: float,
    pids: Sequence[int] = (),
    label: str = "",
    timeout_ms: float = 1000.0,
) -> dict[str, Any]:
    """One run of the load generator (``midgram.client.loadtest``); its JSON line, parsed."""
    try:
        result = loadtest.run_once(
            target,
            request,
            inflight=inflight,
            duration=duration,
            warmup=warmup,
            pids=pids,
            timeout=timeout_ms / 1000,
            label=label,
        )
    except MidgramError as exc:
        raise BenchError(str(exc)) from exc
    return dict(result.raw)


# --- scenarios ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    request: str = "uptime"
    transport: str = "unix"
    children: int = 1
    inflight: int = 8
    pretty: bool = False
    app: bool = False
    kamailio: bool = True
    trace: bool = False  # midgram traces every command to a local UDP sink (HEP3)
    acl: tuple[str, ...] = ()  # midgram's acl rules (docs/security.md)
    available: bool = True
    note: str = ""


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("uptime", "uptime, UNIX, 1 child, 8 in flight (the bar)"),
    Scenario("which", "which (the command list)", request="which", kamailio=False),
    Scenario("reply-60k", "a 60 KB reply", request="blob", app=True, kamailio=False),
    Scenario("named", "3 named params", request="named", app=True, kamailio=False),
    Scenario("udp", "uptime over UDP", transport="udp"),
    Scenario("children-2", "uptime, children_count 2", children=2),
    Scenario("pretty", "uptime, pretty printing on", pretty=True),
    Scenario("inflight-1", "uptime, 1 in flight", inflight=1),
    Scenario("inflight-64", "uptime, 64 in flight", inflight=64),
    Scenario("children-2-64", "uptime, children_count 2, 64 in flight", children=2, inflight=64),
    Scenario(
        "tracing",
        "uptime, HEP tracing of every command to a local UDP sink",
        trace=True,
        kamailio=False,
    ),
    Scenario(
        "acl",
        "uptime, with an acl rule guarding kill and log_level (uptime stays open)",
        acl=("kill, log_level: root",),
        kamailio=False,
    ),
)


def midgram_serve_argv(
    target: str,
    children: int,
    *,
    pretty: bool = False,
    app: bool = False,
    trace_to: str | None = None,
    acl: Sequence[str] = (),
) -> list[str]:
    argv = [PYTHON, "-m", "midgram", "serve", "--socket", target, "--children", str(children)]
    argv += ["--log-level", "warning"]
    if pretty:
        argv.append("--pretty")
    if app:
        argv += ["--app", "app:mi"]
    if trace_to is not None:
        argv += ["--trace-to", trace_to]
    for rule in acl:
        argv += ["--acl", rule]
    return argv


def trace_sink(stack: contextlib.ExitStack) -> str:
    """A bound UDP socket that never reads, open as long as ``stack``: the collector of the
    tracing scenario. What it does not read the kernel drops, after the server has paid for
    building and sending each packet."""
    sink = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sink.bind(("127.0.0.1", 0))
    return f"udp:127.0.0.1:{sink.getsockname()[1]}"


def _env_with_bench_path() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH_DIR), env.get("PYTHONPATH", "")) if p)
    return env


def _target(scenario: Scenario, workdir: Path, key: str) -> str:
    if scenario.transport == "udp":
        return f"udp:127.0.0.1:{kamailio_port()}" if key == "kamailio" else ANY_UDP
    return str(workdir / f"{key}.sock")


def server_specs(
    scenario: Scenario, workdir: Path, wanted: Sequence[str], *, trace_to: str | None = None
) -> list[ServerSpec]:
    """midgram and the references this scenario compares it with, in run order."""
    request = REQUESTS[scenario.request]
    n = scenario.children
    specs = []
    if "midgram" in wanted:
        target = _target(scenario, workdir, "midgram")
        specs.append(
            ServerSpec(
                "midgram",
                midgram_serve_argv(
                    target,
                    n,
                    pretty=scenario.pretty,
                    app=scenario.app,
                    trace_to=trace_to,
                    acl=scenario.acl,
                ),
                target,
                request,
                expected_processes=n + 1,
                env=_env_with_bench_path(),
            )
        )
    plain_uptime = scenario.request == "uptime" and not (scenario.pretty or scenario.trace)
    if "minimal_py" in wanted and plain_uptime:
        target = _target(scenario, workdir, "minimal_py")
        specs.append(
            ServerSpec(
                "minimal_py",
                [PYTHON, str(BENCH_DIR / "minimal_py.py"), "-n", str(n), target],
                target,
                request,
                expected_processes=1 if n == 1 else n + 1,
            )
        )
    if "echo_py" in wanted:
        target = _target(scenario, workdir, "echo_py")
        # For the big reply, the bare loop sends as much (issue 16: the 60 KB reply's bar).
        sized = ["--reply-size", str(BLOB_SIZE)] if scenario.request == "blob" else []
        specs.append(
            ServerSpec(
                "echo_py",
                [PYTHON, str(BENCH_DIR / "echo_py.py"), "-n", str(n), *sized, target],
                target,
                request,
                expected_processes=1 if n == 1 else n + 1,
            )
        )
    if "echo_py" in wanted and trace_to is not None:
        # What a bare loop pays for tracing: each request sent to the sink before and after
        # its reply (issue 16: tracing's bar is against echo_py; this is its floor).
        target = _target(scenario, workdir, "echo_py_hep")
        specs.append(
            ServerSpec(
                "echo_py_hep",
                [PYTHON, str(BENCH_DIR / "echo_py.py"), "--copies-to", trace_to, target],
                target,
                request,
                expected_processes=1,
            )
        )
    if "echo_c" in wanted:
        target = _target(scenario, workdir, "echo_c")
        specs.append(
            ServerSpec(
                "echo_c",
                [str(build("echo")), "-n", str(n), target],
                target,
                request,
                expected_processes=1 if n == 1 else n + 1,
            )
        )
    kamailio = kamailio_binary()
    if "kamailio" in wanted and scenario.kamailio and kamailio is not None:
        target = _target(scenario, workdir, "kamailio")
        rundir = workdir / "kamailio"
        rundir.mkdir(exist_ok=True)
        cfg = rundir / "kamailio.cfg"
        text = kamailio_config(rundir, target, kamailio_port(), workers=n, pretty=scenario.pretty)
        specs.append(
            ServerSpec(
                "kamailio",
                [kamailio, "-DD", "-E", "-f", str(cfg), "-P", f"{rundir}/pid", "-w", f"{rundir}"],
                target,
                KAMAILIO_REQUEST,
                files={str(cfg): text},
            )
        )
    return specs


# --- statistics -----------------------------------------------------------------------------


def spread(values: Sequence[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


METRICS: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "rps": lambda r: float(r["rps"]),
    "p50_us": lambda r: float(r["latency_us"]["p50"]),
    "p99_us": lambda r: float(r["latency_us"]["p99"]),
    "p999_us": lambda r: float(r["latency_us"]["p999"]),
    "cpu_us_per_req": lambda r: r.get("server_cpu_us_per_req"),
    "loadgen_cpu_us_per_req": lambda r: r.get("loadgen_cpu_us_per_req"),
}
FAILURES = ("error_replies", "bad_replies", "timeouts", "late", "truncated", "send_errors")


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": len(runs)}
    for name, get in METRICS.items():
        values = [v for v in (get(r) for r in runs) if v is not None]
        if values:
            out[name] = spread(values)
    out["failures"] = {k: sum(int(r.get(k, 0)) for r in runs) for k in FAILURES}
    out["reply_bytes"] = runs[-1]["reply_bytes"]["mean"] if runs else None
    return out


def ratios(mine: list[dict[str, Any]], ref: list[dict[str, Any]]) -> dict[str, Any]:
    """midgram / reference: ratio of medians, and the spread of the run-by-run (paired) ratio."""
    out: dict[str, Any] = {}
    for key, metric in (("rps", "rps"), ("cpu", "cpu_us_per_req"), ("p99", "p99_us")):
        get = METRICS[metric]
        pairs = [
            (a, b)
            for a, b in ((get(x), get(y)) for x, y in zip(mine, ref, strict=False))
            if a and b
        ]
        if not pairs:
            continue
        a_med = statistics.median(a for a, _ in pairs)
        b_med = statistics.median(b for _, b in pairs)
        paired = [a / b for a, b in pairs]
        out[key] = {
            "ratio": a_med / b_med,
            "paired_min": min(paired),
            "paired_max": max(paired),
        }
    return out


# --- the suite ------------------------------------------------------------------------------


@dataclass
class Options:
    runs: int = 3
    duration: float = 1.5
    warmup: float = 0.3
    scenarios: tuple[str, ...] = ()
    servers: tuple[str, ...] = SERVER_ORDER
    cli_reps: int = 5
    startup_reps: int = 5
    profile: float = 0.0
    micro: bool = True
    out_dir: Path | None = None
    write_baseline: bool = False
    quiet: bool = False


def log(opts: Options, text: str) -> None:
    if not opts.quiet:
        print(text, file=sys.stderr, flush=True)


def run_scenario(scenario: Scenario, opts: Options, workdir: Path) -> dict[str, Any]:
    if not scenario.available:
        log(opts, f"-- {scenario.name}: {scenario.note}")
        return {"scenario": asdict(scenario), "skipped": scenario.note}
    notes = []
    if "midgram" in opts.servers and (why := midgram_missing()):
        notes.append(f"midgram skipped: {why}")
        opts = replace(opts, servers=tuple(s for s in opts.servers if s != "midgram"))
    if "kamailio" in opts.servers and scenario.kamailio and kamailio_binary() is None:
        notes.append("Kamailio not installed (apt-get install kamailio): its column is skipped")
    with contextlib.ExitStack() as stack:
        trace_to = trace_sink(stack) if scenario.trace else None
        specs = server_specs(scenario, workdir, opts.servers, trace_to=trace_to)
        log(opts, f"-- {scenario.name}: {scenario.title} ({', '.join(s.key for s in specs)})")
        runs: dict[str, list[dict[str, Any]]] = {s.key: [] for s in specs}
        infos: dict[str, Any] = {}
        started: list[Server] = []
        for spec in specs:
            try:
                server = stack.enter_context(Server(spec))
            except BenchError as exc:
                if spec.key == "midgram":
                    raise
                notes.append(f"{spec.key} skipped: {exc}")
                log(opts, f"   {spec.key} skipped: {exc}")
                continue
            started.append(server)
        for rep in range(opts.runs):
            for server in started:  # interleaved: A B C A B C ...
                result = run_load(
                    server.target,
                    server.spec.request,
                    inflight=scenario.inflight,
                    duration=opts.duration,
                    warmup=opts.warmup,
                    pids=server.pids,
                    label=f"{scenario.name}/{server.spec.key}/{rep}",
                )
                runs[server.spec.key].append(result)
                log(
                    opts,
                    f"   {server.spec.key:9} run {rep + 1}: {result['rps']:>10.0f} req/s"
                    f"  p99 {result['latency_us']['p99']:>7.1f} us"
                    f"  cpu {result['server_cpu_us_per_req'] or 0:>6.2f} us/req",
                )
        for server in started:
            infos[server.spec.key] = {
                "argv": server.spec.argv,
                "target": server.target,
                "startup_s": server.startup_s,
                "processes": len(server.pids),
                "memory": server.memory(),
            }
    summary = {key: summarise(r) for key, r in runs.items() if r}
    mine = runs.get("midgram", [])
    ratio = {key: ratios(mine, r) for key, r in runs.items() if key != "midgram" and r and mine}
    for key, s in summary.items():
        if any(s["failures"][k] for k in ("error_replies", "bad_replies", "timeouts")):
            notes.append(f"{key}: failures {s['failures']}")
    return {
        "scenario": asdict(scenario),
        "summary": summary,
        "ratios": ratio,
        "servers": infos,
        "runs": runs,
        "notes": notes,
    }


def measure_startup(opts: Options, workdir: Path) -> dict[str, Any]:
    """Wall time from spawning ``midgram serve`` (and the Python echo) to a first reply."""
    times: dict[str, list[float]] = {"midgram": [], "echo_py": []}
    for rep in range(opts.startup_reps):
        for key, samples in times.items():
            target = str(workdir / f"start-{key}-{rep}.sock")
            if key == "midgram":
                argv = midgram_serve_argv(target, 1)
            else:
                argv = [PYTHON, str(BENCH_DIR / "echo_py.py"), target]
            with Server(ServerSpec(key, argv, target, REQUESTS["uptime"])) as server:
                assert server.startup_s is not None
                samples.append(server.startup_s)
    return {key: spread(v) for key, v in times.items()}


def midgram_missing() -> str | None:
    """Why ``midgram serve`` cannot run here (its server not written yet), or None."""
    proc = subprocess.run(
        [PYTHON, "-c", "import midgram.server.wiring"], capture_output=True, text=True, check=False
    )
    if proc.returncode == 0:
        return None
    return "its server does not import yet: " + (proc.stderr.strip().splitlines() or ["?"])[-1]


def midgram_call_available() -> bool:
    proc = subprocess.run(
        [*_midgram_cli(), "call", "--help"], capture_output=True, text=True, check=False
    )
    return proc.returncode == 0


def _midgram_cli() -> list[str]:
    script = VENV_BIN / "midgram"
    return [str(script)] if script.exists() else [PYTHON, "-m", "midgram"]


INTERPRETER_ONLY = "python -c pass"  # the floor: starting the interpreter


OPENSIPS_CLI = "opensips-cli -x mi uptime"
OPENSIPS_MI = "opensips-mi uptime"  # python-opensips's one-shot client


def _compiled_midgram() -> None:
    """Byte-compile midgram's modules, as installing a wheel does: an editable install run
    with PYTHONDONTWRITEBYTECODE would otherwise compile every module at every cold call,
    while the references (installed by pip) start from their .pyc files."""
    compileall.compile_dir(str(Path(midgram.__file__).parent), quiet=1)


def measure_cli(opts: Options, workdir: Path) -> dict[str, Any]:
    """Cold-process wall time of one ``uptime`` call: midgram call vs python-opensips's
    opensips-mi and opensips-cli, in turn, and the ratio of each round's pair."""
    target = str(workdir / "cli.sock")
    opensips_cli = shutil.which("opensips-cli", path=str(VENV_BIN)) or shutil.which("opensips-cli")
    opensips_mi = shutil.which("opensips-mi", path=str(VENV_BIN)) or shutil.which("opensips-mi")
    commands: dict[str, list[str] | None] = {
        INTERPRETER_ONLY: [PYTHON, "-c", "pass"],
        "midgram call uptime": [*_midgram_cli(), "call", "uptime", "--target", target]
        if midgram_call_available()
        else None,
        OPENSIPS_MI: None
        if opensips_mi is None
        else [opensips_mi, "-t", "datagram", "-ds", target, "uptime"],
        OPENSIPS_CLI: None
        if opensips_cli is None
        else [
            *(opensips_cli, "-o", "communication_type=datagram"),
            *("-o", f"datagram_unix_socket={target}", "-x", "mi", "uptime"),
        ],
    }
    out: dict[str, Any] = {"commands": {}, "notes": []}
    for name, argv in commands.items():
        if argv is None:
            why = (
                "pending: `midgram call` does not exist yet"
                if name.startswith("midgram")
                else f"{name.split()[0]} not installed"
            )
            out["notes"].append(f"{name}: {why}")
    _compiled_midgram()
    spec = ServerSpec("midgram", midgram_serve_argv(target, 1), target, REQUESTS["uptime"])
    times: dict[str, list[float]] = {name: [] for name, argv in commands.items() if argv}
    failed: set[str] = set()
    with Server(spec):
        for _ in range(opts.cli_reps + 1):  # the first round warms the caches: not counted
            for name, samples in times.items():
                argv = commands[name]
                if argv is None or name in failed:
                    continue
                t0 = time.perf_counter()
                proc = subprocess.run(argv, capture_output=True, text=True, check=False)
                elapsed = time.perf_counter() - t0
                silent = not proc.stdout.strip() and name != INTERPRETER_ONLY
                if proc.returncode != 0 or silent:
                    failed.add(name)
                    why = (proc.stderr.strip() or proc.stdout.strip())[-300:]
                    out["notes"].append(f"{name}: failed ({proc.returncode}): {why}")
                    continue
                samples.append(elapsed)
    times = {name: v[1:] for name, v in times.items()}
    out["commands"] = {name: spread(v) for name, v in times.items() if v and name not in failed}
    mine = times.get("midgram call uptime") if "midgram call uptime" not in failed else None
    for key, reference in (("ratio", OPENSIPS_CLI), ("ratio_mi", OPENSIPS_MI)):
        theirs = times.get(reference) if reference not in failed else None
        if mine and theirs and len(mine) == len(theirs):
            out[key] = statistics.median(a / b for a, b in zip(mine, theirs, strict=True))
    return out


# --- profile --------------------------------------------------------------------------------


def measure_micro(request: str = "uptime") -> dict[str, float]:
    """bench/micro.py in its own process: each stage of the sans-IO path, in microseconds."""
    proc = subprocess.run(
        [PYTHON, str(BENCH_DIR / "micro.py"), "--request", request, "--json"],
        capture_output=True,
        text=True,
        check=False,
        env=_env_with_bench_path(),
    )
    if proc.returncode != 0:
        raise BenchError(f"micro.py failed: {proc.stderr.strip()[-500:]}")
    result: dict[str, float] = json.loads(proc.stdout)
    return result


def profile_worker(opts: Options, workdir: Path) -> dict[str, Any]:
    """The worker of the base scenario, profiled while the generator drives it: perf (CPU
    samples by library and symbol: the kernel's share is the syscalls) and py-spy (by Python
    line and function), each during a run of its own."""
    target = str(workdir / "profile.sock")
    spec = ServerSpec(
        "midgram", midgram_serve_argv(target, 1), target, REQUESTS["uptime"], expected_processes=2
    )
    out: dict[str, Any] = {}
    with Server(spec) as server:
        out["perf"] = _perf_profile(server, opts.profile, workdir)
        out["py-spy"] = _py_spy_profile(server, opts.profile, workdir)
    return out


def _profile_load(server: Server, seconds: float) -> dict[str, Any]:
    return run_load(
        server.target,
        server.spec.request,
        inflight=8,
        duration=seconds,
        warmup=0.0,
        pids=server.pids,
    )


def _perf_profile(server: Server, seconds: float, workdir: Path) -> dict[str, Any]:
    perf = shutil.which("perf")
    if perf is None:
        return {"skipped": "perf not installed (apt-get install linux-perf)"}
    data = workdir / "perf.data"
    record = subprocess.Popen(
        [perf, "record", "-F", "2000", "-p", str(server.pids[-1]), "-o", str(data)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    load = _profile_load(server, seconds)
    record.send_signal(signal.SIGINT)
    _, err = record.communicate(timeout=60)
    if not data.exists():
        return {"skipped": f"perf record failed: {err.strip()[-300:]}"}
    cpu = load["server_cpu_us_per_req"]
    out: dict[str, Any] = {"load": load}
    for key, sort in (("by_library", "dso"), ("by_symbol", "dso,sym")):
        argv = [perf, "report", "-i", str(data), "--no-children", "--sort", sort]
        report = subprocess.run(
            [*argv, "--stdio", "-g", "none"], capture_output=True, text=True, check=False
        )
        rows = []
        for line in report.stdout.splitlines():
            share, _, name = line.strip().partition("%")
            if line.startswith("#") or not name:
                continue
            with contextlib.suppress(ValueError):
                fraction = float(share) / 100
                frame = " ".join(name.split())
                rows.append({"frame": frame, "share": fraction, "us_per_req": fraction * cpu})
        out[key] = rows[:20]
    return out


def _py_spy_profile(server: Server, seconds: float, workdir: Path) -> dict[str, Any]:
    py_spy = shutil.which("py-spy", path=str(VENV_BIN)) or shutil.which("py-spy")
    if py_spy is None:
        return {"skipped": "py-spy not installed (pip install py-spy)"}
    raw = workdir / "profile.txt"
    spy = subprocess.Popen(
        [
            *(py_spy, "record", "--pid", str(server.pids[-1]), "--rate", "1000"),
            *("--nonblocking", "--duration", str(max(1, int(seconds)))),
            *("--format", "raw", "--output", str(raw)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    load = _profile_load(server, seconds + 1.0)
    _, err = spy.communicate(timeout=seconds + 60)
    if spy.returncode != 0 or not raw.exists():
        return {"skipped": f"py-spy failed: {err.strip()[-500:]}"}
    return {"load": load, **aggregate_profile(raw.read_text(), load["server_cpu_us_per_req"])}


def _function(frame: str) -> str:
    """``serve (worker.py:131)`` -> ``serve (worker.py)``."""
    head, sep, line = frame.rpartition(":")
    return f"{head})" if sep and line.rstrip(")").isdigit() else frame


def aggregate_profile(text: str, cpu_us_per_req: float | None, top: int = 40) -> dict[str, Any]:
    """Sample shares from py-spy's raw (collapsed) stacks: self time per line (the statement
    that was running: a recvfrom line is the syscall), inclusive time per function."""
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + count  # by line
        for function in {_function(frame) for frame in frames}:  # by function
            incl_counts[function] = incl_counts.get(function, 0) + count

    def rows(counts: dict[str, int]) -> list[dict[str, Any]]:
        ordered = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
        return [
            {
                "frame": frame,
                "share": n / total,
                "us_per_req": None if cpu_us_per_req is None else n / total * cpu_us_per_req,
            }
            for frame, n in ordered
        ]

    return {"samples": total, "self": rows(self_counts), "inclusive": rows(incl_counts)}


# --- reports --------------------------------------------------------------------------------


def _fmt_spread(s: dict[str, float] | None, digits: int = 0) -> str:
    if not s:
        return "-"
    return f"{s['median']:,.{digits}f} ({s['min']:,.{digits}f}-{s['max']:,.{digits}f})"


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def bar_verdict(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's bar, generator headroom and memory per extra worker, from the results."""
    by_name = {s["scenario"]["name"]: s for s in results["scenarios"]}
    verdict: dict[str, Any] = {}
    base = by_name.get(BAR_SCENARIO)
    if base and "ratios" in base and BAR_REFERENCE in base["ratios"]:
        r = base["ratios"][BAR_REFERENCE]
        checks = {}
        for key, (op, limit) in BAR.items():
            if key in r:
                value = r[key]["ratio"]
                ok = value >= limit if op == ">=" else value <= limit
                checks[key] = {"value": value, "limit": f"{op} {limit}", "pass": ok}
        verdict["bar"] = checks
        summary = base["summary"]
        if "echo_c" in summary and "midgram" in summary:
            headroom = summary["echo_c"]["rps"]["median"] / summary["midgram"]["rps"]["median"]
            verdict["generator_headroom"] = {
                "c_echo_over_midgram": headroom,
                "limit": f">= {GENERATOR_HEADROOM}",
                "pass": headroom >= GENERATOR_HEADROOM,
            }
    if base and "minimal_py" in base.get("summary", {}) and "echo_py" in base["summary"]:
        cpu = base["summary"]["minimal_py"].get("cpu_us_per_req")
        echo = base["summary"]["echo_py"].get("cpu_us_per_req")
        rps = base["summary"]["minimal_py"]["rps"]["median"]
        if cpu and echo:
            verdict["wall"] = {
                "rps": rps / base["summary"]["echo_py"]["rps"]["median"],
                "cpu": cpu["median"] / echo["median"],
            }
    two = by_name.get("children-2")
    if base and two and "servers" in two and "midgram" in two["servers"]:

        def total_pss(s: dict[str, Any]) -> float:
            return float(sum(p["pss_mb"] for p in s["servers"]["midgram"]["memory"]))

        # A worker's USS is what exists only because of it (its copy-on-write copies and its
        # own allocations). The supervisor's USS is no guide: it grows as the workers dirty
        # the pages they shared with it. The PSS total splits shared pages fairly.
        workers = [p["uss_mb"] for p in two["servers"]["midgram"]["memory"] if p["role"] != "main"]
        verdict["extra_worker_uss_mb"] = {
            "worker_uss_mb": workers,
            "added_total_pss_mb": total_pss(two) - total_pss(base),
            "limit": f"<= {WORKER_USS_LIMIT_MB}",
            "pass": bool(workers) and max(workers) <= WORKER_USS_LIMIT_MB,
        }
    return verdict


def _md_header(results: dict[str, Any]) -> list[str]:
    env = results["environment"]
    opts = results["options"]
    return [
        f"# midgram benchmark, {results['started']}",
        "",
        f"`{results['command']}`  ",
        f"{env.get('midgram', 'midgram')}  ",  # what ran, and whether native I/O was on
        f"{env['cpus']} CPUs ({env['cpu_model']}), Linux {env['kernel']}, Python "
        f"{env['python']}, net.unix.max_dgram_qlen={env['max_dgram_qlen']}; "
        f"{opts['runs']} runs x {opts['duration']} s (+{opts['warmup']} s warm-up) per server, "
        "interleaved. Figures: median (min-max). CPU: server utime+stime over the measured "
        "window, all its processes. Ratios: midgram / reference, ratio of medians.",
        "",
    ]


def _pass(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _md_verdict(verdict: dict[str, Any]) -> list[str]:
    if not any(verdict.values()):
        return []
    lines = ["## The bar (issue 5)", ""]
    names = {"rps": "throughput", "cpu": "CPU/request", "p99": "p99 latency"}
    for key, c in verdict.get("bar", {}).items():
        lines.append(
            f"- {names[key]} vs Python echo: **{c['value']:.2f}x** (bar {c['limit']}): "
            f"{_pass(c['pass'])}"
        )
    if "generator_headroom" in verdict:
        g = verdict["generator_headroom"]
        lines.append(
            f"- generator headroom: C echo at **{g['c_echo_over_midgram']:.2f}x** midgram's "
            f"rate ({g['limit']}): {_pass(g['pass'])}"
        )
    if "wall" in verdict:
        w = verdict["wall"]
        lines.append(
            f"- for scale, the minimal Python MI loop (bench/minimal_py.py) vs Python echo: "
            f"throughput {w['rps']:.2f}x, CPU/request {w['cpu']:.2f}x"
        )
    if "extra_worker_uss_mb" in verdict:
        m = verdict["extra_worker_uss_mb"]
        workers = ", ".join(f"{w:.1f}" for w in m["worker_uss_mb"])
        lines.append(
            f"- unique memory (USS) of each worker with children_count 2: **{workers} MB** "
            f"(bar {m['limit']} MB): {_pass(m['pass'])}; the whole tree's PSS grew by "
            f"{m['added_total_pss_mb']:.1f} MB from 1 to 2 workers"
        )
    return [*lines, ""]


def _md_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "## Throughput, latency, CPU",
        "",
        "| scenario | server | req/s | p50 us | p99 us | p99.9 us | CPU us/req "
        "| req/s ratio | CPU ratio | p99 ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in results["scenarios"]:
        name = s["scenario"]["name"]
        if "skipped" in s:
            lines.append(f"| {name} | *{s['skipped']}* | | | | | | | | |")
            continue
        for key in SERVER_ORDER:
            if key not in s["summary"]:
                continue
            m = s["summary"][key]
            r = s["ratios"].get(key, {})
            cells = [f"{r[k]['ratio']:.2f}" if k in r else "" for k in ("rps", "cpu", "p99")]
            lines.append(
                f"| {name} | {SERVER_TITLES[key]} | {_fmt_spread(m.get('rps'))} "
                f"| {_fmt(m['p50_us']['median'])} | {_fmt(m['p99_us']['median'])} "
                f"| {_fmt(m['p999_us']['median'])} "
                f"| {_fmt_spread(m.get('cpu_us_per_req'), 2)} | {' | '.join(cells)} |"
            )
    lines += [
        "",
        "Ratio columns, on a reference's row: midgram / that reference (req/s: higher is "
        "better for midgram; CPU and p99: lower is better).",
        "",
    ]
    notes = [
        f"{s['scenario']['name']}: {n}" for s in results["scenarios"] for n in s.get("notes", [])
    ]
    if notes:
        lines += ["Notes:", "", *[f"- {n}" for n in notes], ""]
    return lines


def _md_memory(results: dict[str, Any]) -> list[str]:
    lines = [
        "## Memory after the runs (MB)",
        "",
        "| scenario | server | processes | RSS per process | USS per process | USS total |",
        "|---|---|---|---|---|---|",
    ]
    for s in results["scenarios"]:
        for key in SERVER_ORDER:
            info = s.get("servers", {}).get(key)
            if not info:
                continue
            mem = info["memory"]
            rss = ", ".join(f"{p['rss_mb']:.1f}" for p in mem)
            uss = ", ".join(f"{p['uss_mb']:.1f}" for p in mem)
            total = sum(p["uss_mb"] for p in mem)
            lines.append(
                f"| {s['scenario']['name']} | {SERVER_TITLES[key]} | {info['processes']} "
                f"| {rss} | {uss} | {total:.1f} |"
            )
    return [*lines, ""]


def _md_cold(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if "pending" in results:
        lines += [f"Not measured: {results['pending']}", ""]
    if "startup" in results:
        lines += ["## Start-up until the socket answers (s)", ""]
        lines += [f"- {key}: {_fmt_spread(v, 3)}" for key, v in results["startup"].items()]
        lines.append("")
    if "cli" in results:
        cli = results["cli"]
        lines += ["## One cold `uptime` call, wall time (s)", ""]
        lines += [f"- `{name}`: {_fmt_spread(v, 3)}" for name, v in cli["commands"].items()]
        if "ratio_mi" in cli:
            lines.append(
                f"- midgram call / opensips-mi, median of paired rounds: "
                f"**{cli['ratio_mi']:.2f}x** (bar <= 0.5, issue 16): "
                f"{_pass(cli['ratio_mi'] <= 0.5)}"
            )
        if "ratio" in cli:
            lines.append(
                f"- midgram call / opensips-cli, median of paired rounds: "
                f"**{cli['ratio']:.2f}x** (target <= 0.5): {_pass(cli['ratio'] <= 0.5)}"
            )
        lines += [f"- {n}" for n in cli["notes"]]
        lines.append("")
    return lines


def _md_micro(micro: dict[str, float] | None) -> list[str]:
    if not micro:
        return []
    base = micro.get("nothing", 0.0)  # the cost of calling the timed lambda itself
    by_lambda = (
        *("json", "decode", "lookup", "handler", "encode", "fits", "handle", "answer", "native"),
        "stats",
    )
    lines = [
        "## In-process cost of each stage, uptime (bench/micro.py, us, best of 5)",
        "",
        "| stage | us |",
        "|---|---|",
    ]
    lines += [
        f"| {name} | {us - base if name in by_lambda else us:.3f} |"
        for name, us in micro.items()
        if name != "nothing"
    ]
    return [*lines, ""]


def _md_rows(title: str, rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"| % | us/req | {title} |", "|---|---|---|"]
    lines += [
        f"| {row['share'] * 100:.1f} | {_fmt(row['us_per_req'], 2)} | `{row['frame']}` |"
        for row in rows
    ]
    return [*lines, ""]


def _md_profile(prof: dict[str, Any] | None) -> list[str]:
    if not prof:
        return []
    lines = ["## Profile of the worker (base scenario)", ""]
    perf = prof.get("perf", {})
    if "skipped" in perf:
        lines += [f"perf skipped: {perf['skipped']}", ""]
    elif perf:
        load = perf["load"]
        lines += [
            f"perf, CPU samples of the worker: {load['server_cpu_us_per_req']:.2f} us CPU/request"
            f" ({load['rps']:,.0f} req/s under perf). The kernel's share is the syscalls and the "
            "wake-ups they cause; libpython's is the interpreter running midgram's code.",
            "",
            *_md_rows("library", perf["by_library"]),
            *_md_rows("library and symbol", perf["by_symbol"][:15]),
        ]
    spy = prof.get("py-spy", {})
    if "skipped" in spy:
        lines += [f"py-spy skipped: {spy['skipped']}", ""]
    elif spy:
        load = spy["load"]
        lines += [
            f"py-spy, {spy['samples']} samples at {load['server_cpu_us_per_req']:.2f} us "
            f"CPU/request ({load['rps']:,.0f} req/s under py-spy). py-spy counts a thread that "
            "is runnable but not running (preempted in a syscall) as busy: its syscall lines are "
            "inflated; take the syscalls' cost from perf's kernel share.",
            "",
            *_md_rows("line (self)", spy["self"][:25]),
            *_md_rows(
                "function (inclusive; the wrappers around the loop left out)",
                [row for row in spy["inclusive"] if row["share"] < 0.985],
            ),
        ]
    return lines


def markdown(results: dict[str, Any]) -> str:
    return "\n".join(
        [
            *_md_header(results),
            *_md_verdict(results.get("verdict", {})),
            *_md_table(results),
            *_md_memory(results),
            *_md_cold(results),
            *_md_micro(results.get("micro")),
            *_md_profile(results.get("profile")),
        ]
    )


def chart(results: dict[str, Any], path: Path) -> str | None:
    """Throughput and p99 per scenario and server; None, or why there is no chart."""
    try:
        import matplotlib  # noqa: PLC0415 (optional: pip install 'midgram[bench]')

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return "matplotlib not installed (pip install -e '.[bench]'): no chart"
    done = [s for s in results["scenarios"] if s.get("summary")]
    names = [s["scenario"]["name"] for s in done]
    keys = [k for k in SERVER_ORDER if any(k in s["summary"] for s in done)]
    if not keys:
        return "no scenario measured: no chart"
    fig, axes = plt.subplots(2, 1, figsize=(max(8.0, 1.3 * len(names)), 8), sharex=True)
    width = 0.8 / max(1, len(keys))
    for i, key in enumerate(keys):
        xs = [j + (i - (len(keys) - 1) / 2) * width for j in range(len(names))]
        for ax, metric in zip(axes, ("rps", "p99_us"), strict=True):
            med, lo, hi = [], [], []
            for s in done:
                m = s["summary"].get(key, {}).get(metric)
                med.append(m["median"] if m else 0.0)
                lo.append(m["median"] - m["min"] if m else 0.0)
                hi.append(m["max"] - m["median"] if m else 0.0)
            ax.bar(xs, med, width, yerr=[lo, hi], capsize=2, label=SERVER_TITLES[key])
    axes[0].set_ylabel("requests/s (median, min-max)")
    axes[1].set_ylabel("p99 latency, us")
    axes[1].set_yscale("log")
    axes[1].set_xticks(range(len(names)))
    axes[1].set_xticklabels(names, rotation=30, ha="right")
    axes[0].legend(ncol=len(keys), fontsize="small")
    axes[0].set_title(f"midgram vs references, {results['started']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def environment() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    qlen = "?"
    with contextlib.suppress(OSError):
        qlen = Path("/proc/sys/net/unix/max_dgram_qlen").read_text().strip()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "midgram": version_line(),
        "max_dgram_qlen": qlen,
        "kamailio": kamailio_binary(),
    }


def write_results(results: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "md": out_dir / "results.md"}
    paths["json"].write_text(json.dumps(results, indent=1) + "\n")
    why = chart(results, out_dir / "chart.png")
    if why is None:
        paths["png"] = out_dir / "chart.png"
    else:
        results.setdefault("notes", []).append(why)
    paths["md"].write_text(markdown(results))
    latest = RESULTS_DIR / "latest"
    if out_dir.parent == RESULTS_DIR:
        with contextlib.suppress(OSError):
            if latest.is_symlink() or latest.exists():
                latest.unlink()
            latest.symlink_to(out_dir.name)
    return paths


def run_suite(opts: Options, command: str) -> dict[str, Any]:
    check_loadgen()
    build("echo")
    chosen = [s for s in SCENARIOS if not opts.scenarios or s.name in opts.scenarios]
    unknown = set(opts.scenarios) - {s.name for s in SCENARIOS}
    if unknown:
        raise BenchError(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    started = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    results: dict[str, Any] = {
        "started": started,
        "command": command,
        "environment": environment(),
        "options": {k: v for k, v in asdict(opts).items() if k != "out_dir"},
        "scenarios": [],
    }
    with tempfile.TemporaryDirectory(prefix="mgb") as tmp:
        workdir = Path(tmp)
        for scenario in chosen:
            results["scenarios"].append(run_scenario(scenario, opts, workdir))
        missing = midgram_missing() if "midgram" in opts.servers else "not selected"
        if missing:
            results["pending"] = f"start-up, cold call and profile of midgram: {missing}"
            log(opts, f"-- {results['pending']}")
        if not missing and opts.startup_reps > 0:
            log(opts, "-- start-up of midgram serve")
            results["startup"] = measure_startup(opts, workdir)
        if not missing and opts.cli_reps > 0:
            log(opts, "-- cold uptime call: midgram call vs opensips-mi and opensips-cli")
            results["cli"] = measure_cli(opts, workdir)
        if not missing and opts.micro:
            log(opts, "-- in-process cost of each stage (bench/micro.py)")
            try:
                results["micro"] = measure_micro()
            except BenchError as exc:  # it follows midgram's internals: never fatal
                results["pending"] = f"bench/micro.py: {exc}"
        if not missing and opts.profile > 0:
            log(opts, f"-- profile: py-spy on the worker for {opts.profile:g} s")
            results["profile"] = profile_worker(opts, workdir)
    results["verdict"] = bar_verdict(results)
    return results


# --- one server of the user's own ------------------------------------------------------------


def load_test(
    target: str,
    request: str,
    *,
    inflight: int = 8,
    duration: float = 5.0,
    warmup: float = 1.0,
    runs: int = 3,
    pid: int | None = None,
) -> dict[str, Any]:
    """Drive a server that is already running; CPU per request when its ``pid`` is given.

    ``request`` is raw text (``%ID%`` where the id goes); ``midgram bench`` does the same from
    a method and params.
    """
    try:
        result = loadtest.run_template(
            target, request, inflight=inflight, duration=duration, warmup=warmup, runs=runs, pid=pid
        )
    except MidgramError as exc:
        raise BenchError(str(exc)) from exc
    raw = [dict(run.raw) for run in result.runs]
    return {"target": target, "request": request, "summary": summarise(raw), "runs": raw}


# --- command line ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmark midgram against the Python echo loop, the C echo and Kamailio, "
        "in the same run.",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per server (default 3)")
    parser.add_argument("--duration", type=float, default=1.5, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=0.3, help="seconds of warm-up per run")
    parser.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only these (repeatable): {', '.join(s.name for s in SCENARIOS)}",
    )
    parser.add_argument(
        "--servers",
        default=",".join(SERVER_ORDER),
        help=f"servers to run (comma-separated; default {','.join(SERVER_ORDER)})",
    )
    parser.add_argument("--cli-reps", type=int, default=5, help="cold CLI calls (0: skip)")
    parser.add_argument("--startup-reps", type=int, default=5, help="start-ups (0: skip)")
    parser.add_argument(
        "--profile", type=float, default=0.0, metavar="SECONDS", help="py-spy the worker"
    )
    parser.add_argument("--no-micro", action="store_true", help="skip the in-process stage costs")
    parser.add_argument("--out", type=Path, help="results folder (default bench/results/STAMP)")
    parser.add_argument(
        "--write-baseline", action="store_true", help="also write bench/BASELINE.md"
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS_JSON",
        help="no run: write the Markdown, chart (and --write-baseline) again from a results.json",
    )
    parser.add_argument("-q", "--quiet", action="store_true")
    user = parser.add_argument_group("load-test a server of your own (no references)")
    user.add_argument("--target", help="its socket: PATH, @abstract or udp:HOST:PORT")
    user.add_argument(
        "--request", default=REQUESTS["uptime"], help="the request, %%ID%% where the id goes"
    )
    user.add_argument("--inflight", type=int, default=8)
    user.add_argument("--pid", type=int, help="its main pid, for CPU per request")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.target:
            report = load_test(
                args.target,
                args.request,
                inflight=args.inflight,
                duration=args.duration,
                warmup=args.warmup,
                runs=args.runs,
                pid=args.pid,
            )
            print(json.dumps(report["summary"], indent=1))
            return 0
        opts = Options(
            runs=args.runs,
            duration=args.duration,
            warmup=args.warmup,
            scenarios=tuple(args.scenario),
            servers=tuple(r for r in args.servers.split(",") if r),
            cli_reps=args.cli_reps,
            startup_reps=args.startup_reps,
            profile=args.profile,
            micro=not args.no_micro,
            out_dir=args.out,
            write_baseline=args.write_baseline,
            quiet=args.quiet,
        )
        command = "python bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
        if args.render:
            results = json.loads(args.render.read_text())
            results["verdict"] = bar_verdict(results)
            out_dir = opts.out_dir or args.render.resolve().parent
        else:
            results = run_suite(opts, command.strip())
            stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            out_dir = opts.out_dir or RESULTS_DIR / stamp
        paths = write_results(results, out_dir)
        if opts.write_baseline:
            previous = BASELINE.read_text() if BASELINE.exists() else ""
            BASELINE.write_text(baseline_text(results, previous))
            paths["baseline"] = BASELINE
        print(paths["md"].read_text())
        for kind, path in paths.items():
            print(f"{kind}: {path}", file=sys.stderr)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    return 0


ANALYSIS_MARK = "## Analysis (written by hand; --write-baseline keeps it)"


def baseline_text(results: dict[str, Any], previous: str = "") -> str:
    """The generated summary, then the hand-written analysis of the previous BASELINE.md."""
    head = (
        "# midgram performance baseline\n\n"
        f"Measured {results['started']} by `python bench/run.py --write-baseline` "
        "(`make bench BENCH_ARGS=--write-baseline`); update it when performance changes. "
        "Ratios against references measured in the same run are what to compare across "
        "machines, not absolute figures.\n\n"
    )
    body = markdown(results).split("\n", 1)[1].lstrip("\n")
    kept = previous[previous.index(ANALYSIS_MARK) :] if ANALYSIS_MARK in previous else ""
    return head + body + ("\n" + kept if kept else "")


__all__ = [
    "REQUESTS",
    "SCENARIOS",
    "BenchError",
    "Options",
    "Scenario",
    "Server",
    "ServerSpec",
    "build",
    "load_test",
    "main",
    "probe",
    "run_load",
    "run_suite",
]

if __name__ == "__main__":
    sys.exit(main())
