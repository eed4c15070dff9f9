"""``midgram bench``: load-test a server (midgram, OpenSIPS, Kamailio) with one command.

The work is ``midgram.client.loadtest``'s; this module has the options, the output and the exit
statuses, which follow ``midgram call``'s (``failures.py``).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Final

import click

from midgram.cli.call import _call_params, _fail, _one_target, one_target_options
from midgram.cli.complete import complete_method, complete_param
from midgram.cli.failures import EXIT_INTERRUPTED, EXIT_TIMEOUT, describe, exit_status
from midgram.cli.output import render
from midgram.errors import ClientError, ConfigError, LoadgenError

if TYPE_CHECKING:
    from midgram.client.loadtest import LoadTestResult, RunResult, Summary

__all__ = ["bench"]

EXIT_LOADGEN: Final = 1
#: loadtest.DEFAULT_TIMEOUT, spelled here: every `midgram` command imports this module, and
#: importing loadtest (dataclasses, subprocess, statistics) would cost each of them ~10 ms.
TIMEOUT: Final = 1.0
# Kamailio has no `uptime`; its dialect gets its own spelling of the cheapest command.
_DEFAULT_METHODS: Final = {"opensips": "uptime", "kamailio": "core.uptime"}

_EPILOG: Final = """\b
Exit status:
  0    ok (errors and timeouts during the runs are counted, not fatal)
  1    the check request got an error reply, or the load generator
       could not be built or run
  2    usage error (bad option, target or params; a request too
       large to send in one datagram)
  3    no reply: to the check request, or to any request of a whole run
  4    cannot reach the target (no socket, refused, permission denied)
  130  interrupted (Ctrl-C)"""


# --- output ---------------------------------------------------------------------------------


def _count(value: float) -> str:
    return f"{value:g}"  # a median of counts may end in .5


def _row(name: str, figures: Summary, with_cpu: bool) -> dict[str, str]:
    row = {
        "run": name,
        "req/s": f"{figures.rps:.0f}",
        "p50 us": f"{figures.p50_us:.1f}",
        "p99 us": f"{figures.p99_us:.1f}",
        "p99.9 us": f"{figures.p999_us:.1f}",
        "errors": _count(figures.errors),
        "timeouts": _count(figures.timeouts),
    }
    if with_cpu:
        cpu = figures.cpu_us_per_request
        row["CPU us/req"] = "-" if cpu is None else f"{cpu:.2f}"
    return row


def _title(result: LoadTestResult, method: str) -> str:
    runs = f"{len(result.runs)} run{'s' if len(result.runs) > 1 else ''}"
    text = (
        f"{method} on {result.target}: {result.inflight} in flight, {runs} of "
        f"{result.duration:g} s after {result.warmup:g} s of warm-up"
    )
    if result.pids:
        pids = ", ".join(map(str, result.pids))
        text += f"; CPU of pid{'s' if len(result.pids) > 1 else ''} {pids}"
    return text


def table(result: LoadTestResult, method: str) -> str:
    """The title, one row per run, and the medians."""
    with_cpu = bool(result.pids)
    rows = [_row(str(n), run.summary, with_cpu) for n, run in enumerate(result.runs, 1)]
    rows.append(_row("median", result.median, with_cpu))
    return f"{_title(result, method)}\n\n{render(rows, 'table')}"


def _run_doc(run: RunResult) -> dict[str, Any]:
    doc = {name: getattr(run, name) for name in run.__dataclass_fields__ if name != "raw"}
    doc["errors"] = run.errors
    return doc


def document(result: LoadTestResult, method: str) -> dict[str, Any]:
    """``--format json``: the options, every run in full, and the medians."""
    return {
        "target": result.target,
        "method": method,
        "request": result.request,
        "inflight": result.inflight,
        "duration_s": result.duration,
        "warmup_s": result.warmup,
        "pids": list(result.pids),
        "runs": [_run_doc(run) for run in result.runs],
        "median": vars(result.median),
    }


def _progress(runs: int) -> Any:
    """Each run's headline on stderr as it ends, on a terminal only: runs last seconds."""
    if not sys.stderr.isatty():
        return None

    def show(number: int, run: RunResult) -> None:
        click.echo(f"run {number} of {runs}: {run.rps:.0f} req/s", err=True)

    return show


# --- the command ----------------------------------------------------------------------------


def _measure(ctx: click.Context, target: str, method: str, **options: Any) -> LoadTestResult:
    """``load_test``; its errors become their line on stderr and the exit status."""
    from midgram.client.loadtest import load_test  # noqa: PLC0415 - see TIMEOUT

    try:
        return load_test(target, method, **options)
    except (ConfigError, TypeError) as exc:  # TypeError: params the dialect cannot send
        raise click.UsageError(str(exc)) from None
    except ClientError as exc:
        _fail(
            describe(
                exc,
                target=target,
                method=method,
                dialect=options["dialect"],
                params=options["params"],
            )
        )
        ctx.exit(exit_status(exc))
    except LoadgenError as exc:
        _fail(str(exc))
        ctx.exit(EXIT_LOADGEN)
    except KeyboardInterrupt:
        _fail("interrupted")
        ctx.exit(EXIT_INTERRUPTED)


@click.command(
    epilog=_EPILOG,
    context_settings={
        "ignore_unknown_options": True,
        # A request lost in a run of a few seconds must count as a timeout, not stall its
        # slot for the client's 5 s: bench's own --timeout default.
        "default_map": {"timeout": TIMEOUT},
    },
    help="""Load-test METHOD on a running server: requests/s, latency, errors.

Keeps --inflight requests in flight for --duration seconds (after --warmup seconds
not measured), --runs times, and shows each run and the medians. With --pid (the
server's main pid), also the server's CPU time per request, summed over the process
and its children. METHOD defaults to uptime; ARGS as for `midgram call`. The request
is sent once first, so a server that is not there or refuses it fails at once.

The requests come from a small C program built with the system compiler (cc, or
$CC) on first use, into ~/.cache/midgram.

\b
Examples:
  midgram bench
  midgram bench -t /run/opensips/mi.sock --pid "$(pidof -s opensips)"
  midgram bench get_statistics statistics:='["core:"]' --inflight 1 --runs 5
  midgram bench --dialect kamailio -t /run/kamailio/kamailio_rpc.sock -f json""",
)
@click.argument("method", required=False, shell_complete=complete_method)
@click.argument("args", nargs=-1, type=click.UNPROCESSED, shell_complete=complete_param)
@click.option(
    "-j",
    "--json",
    "json_params",
    metavar="PARAMS",
    help="The params as raw JSON (an array or an object); '-' reads them from stdin.",
)
@one_target_options
@click.option(
    "--inflight",
    type=click.IntRange(1, 4096),
    default=8,
    show_default=True,
    help="Requests kept in flight.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Seconds measured in each run.",
)
@click.option(
    "--warmup",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Seconds of load before each run's measure.",
)
@click.option(
    "--runs",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Runs, one after the other; the table ends with their medians.",
)
@click.option(
    "--pid",
    type=click.IntRange(min=1),
    help="The server's main pid: show its CPU per request (it and its children).",
)
@click.option(
    "-f",
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="table, or json (every figure of every run).",
)
@click.pass_context
def bench(
    ctx: click.Context,
    *,
    method: str | None,
    args: tuple[str, ...],
    json_params: str | None,
    targets: tuple[str, ...],
    timeout: float,
    dialect: str,
    inflight: int,
    duration: float,
    warmup: float,
    runs: int,
    pid: int | None,
    fmt: str,
) -> None:
    params = _call_params(args, json_params)
    target = _one_target(targets)
    method = method or _DEFAULT_METHODS[dialect]
    result = _measure(
        ctx,
        target,
        method,
        params=params,
        dialect=dialect,
        inflight=inflight,
        duration=duration,
        warmup=warmup,
        runs=runs,
        pid=pid,
        timeout=timeout,
        on_run=_progress(runs),
    )
    click.echo(table(result, method) if fmt == "table" else render(document(result, method), fmt))
    if (silent := result.silent_run) is not None:
        _fail(
            f"no reply from {target} during run {silent}: is the server busy or stuck? "
            "try a longer --timeout"
        )
        ctx.exit(EXIT_TIMEOUT)
