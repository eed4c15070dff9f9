"""``midgram check``: a health probe for Nagios, Icinga, Kubernetes and systemd.

The engine is ``midgram.monitoring.check``. Here: options in, one status line on stdout,
and the exit status plugins use. A usage error is UNKNOWN (3), not click's 2, which a
monitoring system would read as CRITICAL; its status line says what is wrong.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import click

from midgram.cli.call import _one_target, one_target_options
from midgram.cli.clicktypes import Duration
from midgram.cli.complete import complete_method, complete_param
from midgram.cli.params import ParamsError, parse_words
from midgram.client.calls import AsyncClient
from midgram.monitoring.check import Check, Status, Verdict, run_check
from midgram.monitoring.thresholds import Range, RangeError

__all__ = ["check"]

_EPILOG: Final = """\b
Exit status (the Nagios plugin convention):
  0    OK
  1    WARNING: --warn's range alerts
  2    CRITICAL: --crit's range alerts, or the server did not answer,
       refused the call, or answered garbage or an error
  3    UNKNOWN: the check cannot be made as asked (a bad option,
       threshold or target, an unknown command or statistic)

\b
Ranges (alert when the value is):
  10     outside 0..10       10:     below 10
  ~:10   above 10            10:20   outside 10..20
  @10:20 inside 10..20

\b
Examples:
  midgram check -t /run/opensips/mi.sock
  midgram check -t /run/opensips/mi.sock --warn 50 --crit 200      (round trip, ms)
  midgram check --stat dialog:active_dialogs --warn 800 --crit 1000
  midgram check --stat shmem:free_size --crit 1048576:
  midgram check --wait 10s                         (systemd ExecStartPost)
  midgram check --dialect kamailio -t /run/kamailio/kamailio_rpc.sock"""


class _NagiosCommand(click.Command):
    """Usage errors are UNKNOWN (exit 3), with their status line on stdout."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.ClickException as exc:
            raise _unknown(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            raise _unknown(exc) from None


def _unknown(exc: click.ClickException) -> click.exceptions.Exit:
    """The status line on stdout (what Nagios shows), the error on stderr, exit 3."""
    message = exc.format_message()
    click.echo(Verdict(Status.UNKNOWN, message).line())
    click.echo(f"midgram: {message}", err=True)
    return click.exceptions.Exit(int(Status.UNKNOWN))


if TYPE_CHECKING:  # generic in click's stubs (8.2+), not at run time in older clicks
    _ParamType = click.ParamType[Range, Any]
else:
    _ParamType = click.ParamType


class _RangeType(_ParamType):
    name = "range"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> Range:
        if isinstance(value, Range):
            return value
        try:
            return Range.parse(str(value))
        except RangeError as exc:
            self.fail(str(exc), param, ctx)


@click.command(
    cls=_NagiosCommand, epilog=_EPILOG, context_settings={"ignore_unknown_options": True}
)
@click.argument("method", required=False, shell_complete=complete_method)
@click.argument("args", nargs=-1, type=click.UNPROCESSED, shell_complete=complete_param)
@one_target_options
@click.option(
    "--stat",
    metavar="NAME",
    help="Judge this statistic's value (group:name, e.g. dialog:active_dialogs) instead of "
    "the round trip; it is read with get_statistics (stats.fetchn for Kamailio).",
)
@click.option(
    "-w", "--warn", type=_RangeType(), help="WARNING when the value is outside this range."
)
@click.option(
    "-c", "--crit", type=_RangeType(), help="CRITICAL when the value is outside this range."
)
@click.option(
    "--wait",
    type=Duration("s"),
    default=0.0,
    help="Keep trying this long while the server cannot be reached or does not answer "
    "(a readiness check for a unit that is starting): 10s. Default: one attempt.",
)
@click.pass_context
def check(
    ctx: click.Context,
    *,
    method: str | None,
    args: tuple[str, ...],
    targets: tuple[str, ...],
    timeout: float,
    dialect: str,
    stat: str | None,
    warn: Range | None,
    crit: Range | None,
    wait: float,
) -> None:
    """Check that the server answers: METHOD (default: uptime) within --timeout, its round
    trip in milliseconds or a --stat against --warn and --crit. One status line with
    performance data on stdout, and a Nagios exit status (Kubernetes and systemd read any
    non-zero as a failure).

    ARGS are METHOD's params, written as for `midgram call`."""
    if stat is not None and method is not None:
        raise click.UsageError("give METHOD or --stat, not both (--stat makes its own call)")
    client = AsyncClient(_one_target(targets), timeout=timeout, dialect=dialect)
    probe = Check(method, _params(args), stat, warn, crit, wait)
    try:
        verdict = asyncio.run(run_check(client, probe))
    except TypeError as exc:  # e.g. named params in the kamailio dialect
        raise click.UsageError(str(exc)) from None
    click.echo(verdict.line())
    ctx.exit(int(verdict.status))


def _params(words: Sequence[str]) -> Any:
    try:
        return parse_words(words)
    except ParamsError as exc:
        raise click.UsageError(str(exc)) from None
