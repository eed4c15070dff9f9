"""``midgram call | which | help | shell | completion``: the client side of the CLI.

Client errors become one line on stderr (what happened, then a hint) and an exit status,
both decided in ``failures.py``. ``call`` reads its command line here and hands it to
``calling.run_call``, which ``quickcall`` shares.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

import click
from click.shell_completion import get_completion_class

from midgram.cli.calling import CallOptions, CallUsageError, canonical_targets, fail, run_call
from midgram.cli.clicktypes import Duration
from midgram.cli.complete import complete_method, complete_param
from midgram.cli.failures import (
    EXIT_INTERRUPTED,
    EXIT_STATUS_HELP,
    describe,
    exit_status,
)
from midgram.cli.output import FORMATS, render, yaml_missing
from midgram.cli.params import ParamsError, parse_json_params, parse_words
from midgram.cli.profiles import profile_option, profile_targets
from midgram.cli.shells import register as register_shells
from midgram.client.calls import DEFAULT_TIMEOUT, Client
from midgram.client.codec import DIALECTS
from midgram.errors import AddressError, ClientError
from midgram.local import default_target
from midgram.logs import printable
from midgram.wire.jsonrpc import Params

__all__ = ["call", "completion", "help_", "one_target_options", "shell", "target_options", "which"]

F = TypeVar("F", bound=Callable[..., Any])


_fail = fail  # for the other sub-commands (bench)


# --- shared options --------------------------------------------------------------------------


_TARGET_HELP: Final = "The server: /path, @abstract, udp:host:port or 'udp:[v6]:port'."
_SEVERAL_HELP: Final = {
    True: "Repeat it to call several servers at once.",
    False: "One server (`midgram call` takes several).",
}


def target_options(func: F) -> F:
    """--target (repeatable: several servers), --timeout and --dialect."""
    return _with_target_options(func, several=True)


def one_target_options(func: F) -> F:
    """The same for a command that talks to one server (``which``, ``help``, ``shell``,
    ``bench``): a second target is a usage error, and its help says so."""
    return _with_target_options(func, several=False)


def _with_target_options(func: F, *, several: bool) -> F:
    """--target, --timeout and --dialect, with their environment variables."""
    options = (
        profile_option,
        click.option(
            "-t",
            "--target",
            "targets",
            multiple=True,  # even for one: a second is refused, not silently dropped
            envvar="MIDGRAM_TARGET",
            metavar="TARGET",
            help=f"{_TARGET_HELP} {_SEVERAL_HELP[several]} Default: $MIDGRAM_TARGET, else "
            f"the server's default socket ({default_target()}).",
        ),
        click.option(
            "--timeout",
            type=Duration("s", positive=True),
            default=DEFAULT_TIMEOUT,
            show_default=True,
            envvar="MIDGRAM_TIMEOUT",
            help="How long to wait for a reply: 2.5s or 500ms; a bare number is seconds.",
        ),
        click.option(
            "--dialect",
            type=click.Choice(list(DIALECTS)),
            default="opensips",
            show_default=True,
            envvar="MIDGRAM_DIALECT",
            help="opensips (also midgram) or kamailio (jsonrpcs: core.uptime, positional params).",
        ),
    )
    for option in reversed(options):
        func = option(func)
    return func


def _targets(targets: Sequence[str]) -> list[str]:
    """The targets as canonical texts; a usage error (exit 2) for one that does not parse."""
    try:
        return canonical_targets([*targets, *profile_targets()])
    except AddressError as exc:
        raise click.BadParameter(str(exc), param_hint="--target") from None


def _one_target(targets: Sequence[str]) -> str:
    texts = _targets(targets)
    if len(texts) > 1:
        command = click.get_current_context().info_name
        raise click.BadParameter(
            f"`midgram {command}` talks to one server, and got {len(texts)} "
            f"({', '.join(texts)}): give one (`midgram call` calls several)",
            param_hint="--target",
        )
    return texts[0]


def _check_format(fmt: str | None) -> None:
    if fmt == "yaml" and (why := yaml_missing()):
        raise click.UsageError(why)


def _checked_format(fmt: str | None) -> str | None:
    _check_format(fmt)
    return fmt


# --- call ------------------------------------------------------------------------------------


def _call_params(words: Sequence[str], json_params: str | None) -> Params:
    try:
        if json_params is not None:
            if words:
                raise ParamsError("give params either as words or with --json, not both")
            text = sys.stdin.read() if json_params == "-" else json_params
            return parse_json_params(text)
        return parse_words(words)
    except ParamsError as exc:
        raise click.UsageError(str(exc)) from None


@click.command(
    epilog=EXIT_STATUS_HELP,
    context_settings={"ignore_unknown_options": True},
    help="""Call METHOD on the server and print its result.

\b
ARGS, read as httpie reads them:
  name=text     a named string
  name:=JSON    a named JSON value: limit:=5  stats:='["core:"]'
  name[]=text   a named array: 'statistics[]=all' (quoted for zsh)
  :=JSON        a positional JSON value: :=5  :='{"a":1}'
  other words   positional strings

A name given more than once is an array too: statistics=core: statistics=shmem:.
Named and positional params cannot be mixed. A word that starts with `-` (like `-1`)
is a param when midgram has no such option; put `--` before the params to be sure.

\b
Examples:
  midgram call uptime
  midgram call log_level level:=-1
  midgram call get_statistics statistics:='["core:"]'
  midgram call -t 'udp:[::1]:8080' which uptime
  midgram call --dialect kamailio -t /run/kamailio/kamailio_rpc.sock core.echo a :=1""",
)
@click.argument("method", shell_complete=complete_method)
@click.argument("args", nargs=-1, type=click.UNPROCESSED, shell_complete=complete_param)
@click.option(
    "-j",
    "--json",
    "json_params",
    metavar="PARAMS",
    help="The params as raw JSON (an array or an object); '-' reads them from stdin.",
)
@target_options
@click.option(
    "-f",
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    help="Output: json (compact), pretty (colour on a terminal), yaml, lines (path: value), "
    "table, raw (the reply datagram). Default: pretty on a terminal, json in a pipe.",
)
@click.option("--dry-run", is_flag=True, help="Print the request and send nothing.")
@click.option("-v", "--verbose", is_flag=True, help="Show request and reply bytes and timing.")
@click.pass_context
def call(
    ctx: click.Context,
    *,
    method: str,
    args: tuple[str, ...],
    json_params: str | None,
    targets: tuple[str, ...],
    timeout: float,
    dialect: str,
    fmt: str | None,
    dry_run: bool,
    verbose: bool,
) -> None:
    options = CallOptions(
        method,
        _call_params(args, json_params),
        _targets(targets),
        timeout,
        dialect,
        _checked_format(fmt),
        dry_run,
        verbose,
    )
    try:
        ctx.exit(run_call(options))
    except CallUsageError as exc:
        raise click.UsageError(str(exc)) from None


# --- which, help -----------------------------------------------------------------------------


def _run_sync(ctx: click.Context, client: Client, method: str, work: Callable[[], Any]) -> Any:
    """Run a blocking client call; errors become their line on stderr and exit status."""
    try:
        return work()
    except ClientError as exc:
        _fail(describe(exc, target=client.target, method=method, dialect=client.dialect.name))
        ctx.exit(exit_status(exc))
    except KeyboardInterrupt:
        _fail("interrupted")
        ctx.exit(EXIT_INTERRUPTED)


def _usage_lines(command: str, recipes: list[list[str]]) -> str:
    words = ([command, *(f"{name}=…" for name in recipe)] for recipe in recipes)
    return "\n".join(" ".join(printable(word) for word in line) for line in words)


@click.command(epilog=EXIT_STATUS_HELP)
@click.argument("command", required=False, shell_complete=complete_method)
@one_target_options
@click.option(
    "-f",
    "--format",
    "fmt",
    type=click.Choice(FORMATS[:-1]),
    help="json, pretty, yaml, lines or table; default: one name (or recipe) per line.",
)
@click.pass_context
def which(
    ctx: click.Context,
    *,
    command: str | None,
    targets: tuple[str, ...],
    timeout: float,
    dialect: str,
    fmt: str | None,
) -> None:
    """List the server's commands, or the parameters COMMAND takes."""
    _check_format(fmt)
    client = Client(_one_target(targets), timeout=timeout, dialect=dialect)
    if command is None:
        names = _run_sync(ctx, client, client.dialect.list_method, client.methods)
        click.echo(render(names, fmt or "lines"))
        return
    if client.dialect.recipes_method is None:
        raise click.UsageError(
            f"the {dialect} dialect cannot list a command's parameters: "
            f"try `midgram help {command} --dialect {dialect}`"
        )
    recipes = _run_sync(ctx, client, command, lambda: client.recipes(command))
    click.echo(render(recipes, fmt) if fmt else _usage_lines(command, recipes))


def _help_text(command: str, info: Any, recipes: list[list[str]] | None) -> str:
    if not isinstance(info, dict):
        return printable(f"{command}: {info}", keep="\n\t")
    lines = [f"{command}: {info.get('Help', '')}"]
    lines += [f"{key.lower()}: {value}" for key, value in info.items() if key != "Help"]
    if recipes:
        lines += ["usage:", *(f"  {line}" for line in _usage_lines(command, recipes).split("\n"))]
    return printable("\n".join(lines), keep="\n\t")


@click.command("help", epilog=EXIT_STATUS_HELP)
@click.argument("command", shell_complete=complete_method)
@one_target_options
@click.option(
    "-f",
    "--format",
    "fmt",
    type=click.Choice(FORMATS[:-1]),
    help="json, pretty, yaml, lines or table: the server's help result as it is.",
)
@click.pass_context
def help_(
    ctx: click.Context,
    *,
    command: str,
    targets: tuple[str, ...],
    timeout: float,
    dialect: str,
    fmt: str | None,
) -> None:
    """Show the server's help for COMMAND, and how to call it."""
    _check_format(fmt)
    client = Client(_one_target(targets), timeout=timeout, dialect=dialect)
    info = _run_sync(ctx, client, command, lambda: client.help(command))
    if fmt:
        click.echo(render(info, fmt))
        return
    recipes = None
    if client.dialect.recipes_method is not None:
        recipes = _run_sync(ctx, client, command, lambda: client.recipes(command))
    click.echo(_help_text(command, info, recipes))


# --- shell, completion -----------------------------------------------------------------------


@click.command(epilog=EXIT_STATUS_HELP)
@one_target_options
@click.option(
    "-f",
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    help="How results are shown: json, pretty, yaml, lines, table, or raw (the reply "
    "datagram, as `midgram call -f raw`). Default: pretty on a terminal, json otherwise.",
)
@click.pass_context
def shell(
    ctx: click.Context,
    *,
    targets: tuple[str, ...],
    timeout: float,
    dialect: str,
    fmt: str | None,
) -> None:
    """An interactive prompt, with history and live completion.

    Type `METHOD [ARGS...]` (ARGS as for `midgram call`); TAB completes command and
    parameter names from the live server. Reads commands from stdin when it is not a
    terminal. `.help` lists the shell's own commands; Ctrl-D or `exit` leaves."""
    # prompt_toolkit takes ~0.1 s to import: only the shell pays for it.
    from midgram.cli.shell import Shell  # noqa: PLC0415

    _check_format(fmt)
    client = Client(_one_target(targets), timeout=timeout, dialect=dialect)
    ctx.exit(Shell(client, fmt).run())


_SHELLS: Final = ("bash", "zsh", "fish")


@click.command()
@click.argument("shell_name", metavar="[bash|zsh|fish]", required=False)
@click.pass_context
def completion(ctx: click.Context, shell_name: str | None) -> None:
    """Print the completion script for bash, zsh or fish.

    Sub-commands and options complete, and so do the live server's command and parameter
    names (asked with `which`, cached a few seconds).

    \b
    bash:  eval "$(midgram completion bash)"          (in ~/.bashrc)
    zsh:   eval "$(midgram completion zsh)"           (in ~/.zshrc)
    fish:  midgram completion fish > ~/.config/fish/completions/midgram.fish
    """
    register_shells()
    name = shell_name or os.path.basename(os.environ.get("SHELL", "")) or "bash"
    cls = get_completion_class(name) if name in _SHELLS else None
    if cls is None:
        raise click.BadParameter(f"{name!r}: use one of {', '.join(_SHELLS)}")
    root = ctx.find_root()
    prog = root.info_name or "midgram"
    var = "_{}_COMPLETE".format(prog.replace("-", "_").replace(".", "_").upper())
    click.echo(cls(root.command, {}, prog, var).source())
