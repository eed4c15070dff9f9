"""The ``midgram`` command: the only place in the package that prints or exits.

Each sub-command lives in its own module, imported only when that sub-command runs (or a
help lists them): ``midgram call`` does not load the server, and its cold start is what a
script calling it in a loop pays. Library errors are mapped to exit codes in one place
(``failures.exit_status``), so every sub-command reports failures the same way.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any, Final

import click

__all__ = ["cli", "main"]

#: Sub-command name -> ``module:attribute`` of its click command.
COMMANDS: Final = {
    "bench": "midgram.cli.bench:bench",
    "call": "midgram.cli.call:call",
    "check": "midgram.cli.check:check",
    "completion": "midgram.cli.call:completion",
    "events": "midgram.cli.events:events",
    "exporter": "midgram.cli.exporter:exporter",
    "help": "midgram.cli.call:help_",
    "serve": "midgram.cli.serve:serve",
    "shell": "midgram.cli.call:shell",
    "which": "midgram.cli.call:which",
}


class LazyGroup(click.Group):
    """A group whose sub-commands are imported by name when first needed, and whose errors,
    click's own included, are ``midgram: ...`` lines like every other midgram error."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        run = functools.partial(super().main, args, prog_name, complete_var, False, **extra)
        if not standalone_mode:
            return run()
        try:
            status: Any = run()
        except click.ClickException as exc:
            _show(exc)
            sys.exit(exc.exit_code)
        except click.Abort as exc:
            from midgram.cli.failures import EXIT_INTERRUPTED  # noqa: PLC0415 - rarely needed

            interrupted = isinstance(exc.__cause__, KeyboardInterrupt)
            click.echo(f"midgram: {'interrupted' if interrupted else 'aborted'}", err=True)
            sys.exit(EXIT_INTERRUPTED if interrupted else 1)
        sys.exit(status if isinstance(status, int) else 0)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, attribute = COMMANDS[cmd_name].split(":")
            command = getattr(importlib.import_module(module), attribute)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """``--version``: one line, with whether native I/O is on (the server's start-up log says
    the same). batchio is imported only here: other commands do not pay for it."""
    if not value or ctx.resilient_parsing:
        return
    from midgram.server.batchio import version_line  # noqa: PLC0415

    click.echo(version_line())
    ctx.exit()


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version, Python's, and whether native I/O is on, and exit.",
)
def cli() -> None:
    """midgram: OpenSIPS-compatible MI datagram server, library and client."""


def _show(exc: click.ClickException) -> None:
    """click's error display, with the one prefix midgram uses everywhere."""
    ctx = exc.ctx if isinstance(exc, click.UsageError) else None
    if ctx is not None:
        hint = f"Try '{ctx.command_path} --help' for help.\n"
        click.echo(f"{ctx.get_usage()}\n{hint}", err=True, color=ctx.color)
    click.echo(f"midgram: {exc.format_message()}", err=True)


#: The variable click's completion scripts set when they ask for completions.
COMPLETE_VAR: Final = "_MIDGRAM_COMPLETE"


def main() -> None:
    if COMPLETE_VAR in os.environ:  # a TAB: answer as midgram's own scripts expect
        from midgram.cli.shells import register  # noqa: PLC0415 - only completion needs it

        register()
    cli(prog_name="midgram")
