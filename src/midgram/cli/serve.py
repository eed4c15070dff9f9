"""``midgram serve``: the MI datagram daemon, its flags mirroring the module parameters."""

from __future__ import annotations

import importlib
import logging
import os
import shlex
import shutil
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, NoReturn, TypeVar

import click

from midgram.cli.clicktypes import Duration
from midgram.cli.failures import exit_status
from midgram.config import ALIASES, PARAMETERS, Kind, Parameter, load_settings, read_config
from midgram.engine.registry import Registry
from midgram.errors import ConfigError, ConfigFileError, MidgramError
from midgram.logs import LOG_FORMAT, formatter_for, logging_level, on_journal, printable
from midgram.server.files import LogFileHandler, PidFile
from midgram.server.wiring import importing_app
from midgram.server.wiring import serve as run_server
from midgram.wire.address import HostKind, UdpAddress, UnixAddress, parse_socket_name

__all__ = ["serve"]


def _setup_logging(level: str, log_file: str | None) -> None:
    handler: logging.Handler
    if log_file:
        handler = LogFileHandler(log_file)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter_for(sys.stderr))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging_level(level))


def _config_layer(path: str | None) -> dict[str, Any]:
    """A TOML file, or the modparam lines of an existing opensips.cfg (told by content).
    ConfigError for a file that cannot be read or used."""
    if path is None:
        return {}
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError("--config", path, exc.strerror or str(exc)) from exc
    found = read_config(data, path)
    for warning in found.warnings:
        click.echo(f"midgram: {path}: {warning}", err=True)
    return found.layer


def _from_flag(parameter: str, flags: dict[str, Any]) -> bool:
    """Whether a command-line flag gave ``parameter`` (else the config file did)."""
    name = ALIASES.get(parameter, parameter)
    return flags.get(name) is not None


def _load_registry(spec: str | None) -> Registry | None:
    """``--app module:attribute``: a Registry, or a function returning one. The current
    directory is on the import path first, as uvicorn and gunicorn put it."""
    if spec is None:
        return None
    module_name, _, attribute = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        with importing_app(spec):
            target = getattr(importlib.import_module(module_name), attribute or "mi")
    except (ImportError, AttributeError) as exc:
        raise click.BadParameter(f"cannot load {spec!r}: {exc}", param_hint="--app") from exc
    registry = target() if callable(target) and not isinstance(target, Registry) else target
    if not isinstance(registry, Registry):
        raise click.BadParameter(f"{spec!r} is not a midgram Registry", param_hint="--app")
    return registry


def _program() -> list[str]:
    """How to run this midgram again from a shell: ``midgram`` when that is this program on
    PATH, else the path it was started by (``make run`` starts ``.venv/bin/midgram``), or
    ``python -m midgram``."""
    started_as = sys.argv[0]
    if os.path.basename(started_as) == "__main__.py" or not os.path.isfile(started_as):
        return [sys.executable, "-m", "midgram"]
    on_path = shutil.which("midgram")
    if on_path is not None and os.path.samefile(on_path, started_as):
        return ["midgram"]
    return [os.path.abspath(started_as)]


def _opensips_cli(address: UnixAddress | UdpAddress) -> list[str] | str:
    """opensips-cli's options for the address, or why it cannot reach it: it binds its reply
    socket by path and sends UDP over IPv4 only."""
    if isinstance(address, UnixAddress):
        if address.abstract:
            return "opensips-cli cannot reach an abstract socket"
        return ["-o", f"datagram_unix_socket={address.path}"]
    host = address.host
    if address.host_kind is HostKind.NAME:  # what the server bound: the first address found
        host = str(socket.getaddrinfo(host, address.port, type=socket.SOCK_DGRAM)[0][4][0])
    if ":" in host:
        return "opensips-cli sends over IPv4 only"
    return ["-o", f"datagram_ip={host}", "-o", f"datagram_port={address.port}"]


def _how_to_call(where: str) -> str:
    """The banner: every command in it runs as shown when pasted into bash or zsh."""
    address = parse_socket_name(where)
    call = shlex.join([*_program(), "call", "uptime", "--target", where])
    opensips = _opensips_cli(address)
    if isinstance(opensips, str):
        other = f"            ({opensips})"
    else:
        command = ["opensips-cli", "-o", "communication_type=datagram", *opensips]
        other = f"       or:  {shlex.join([*command, '-x', 'mi', 'uptime'])}"
    return (
        f"midgram listening on {where}\n"
        f"  call it:  {call}\n"
        f"{other}\n"
        "  stop it:  Ctrl-C (or the MI command `kill`)"
    )


# \b keeps click from re-flowing the block.
EXIT_STATUS_HELP = """\b
Exit status:
  0    stopped cleanly (SIGTERM, Ctrl-C or the MI command `kill`)
  1    the workers kept dying at start-up
  2    a bad parameter, config file or --app
  4    the socket cannot be bound (another server listens there,
       permission denied, no such folder)"""


_CLICK_TYPES: Final[Mapping[Kind, object]] = MappingProxyType(
    {
        Kind.INTEGER: click.INT,
        Kind.SECONDS: Duration("s"),
        Kind.MILLISECONDS: Duration("ms", whole=True),
    }
)
F = TypeVar("F", bound=Callable[..., Any])


def _parameter_option(parameter: Parameter) -> Callable[[F], F]:
    """The option of one parameter, from its row of the table. Its default is None (an
    empty tuple when repeatable): "not given", so that the config file's value stands."""
    flags = parameter.flags
    if parameter.off_flag is not None:
        flags = (*flags[:-1], f"{flags[-1]}/{parameter.off_flag}")
    return click.option(
        *flags,
        parameter.name,
        type=_CLICK_TYPES.get(parameter.kind),
        multiple=parameter.kind is Kind.REPEATED,
        default=None,
        metavar=parameter.metavar,
        help=_help(parameter),
    )


def _help(parameter: Parameter) -> str:
    """``name: what it is.  [default: X]``, the config file's name first (the one that the
    docs, the logs and the errors use)."""
    note = "" if parameter.flag_note is None else f"; {parameter.flag_note}"
    text = f"{parameter.name}: {parameter.description}{note}."
    if parameter.shown_default == "none":  # nothing worth a line of its own
        return text
    return f"{text}  [default: {parameter.shown_default}]"


def _parameter_options(command: F) -> F:
    """An option for every parameter, in the table's order."""
    for parameter in reversed(PARAMETERS):
        command = _parameter_option(parameter)(command)
    return command


# Wider than click's 80 columns when the terminal is: one line less for most options.
@click.command(epilog=EXIT_STATUS_HELP, context_settings={"max_content_width": 100})
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    help="A TOML file, or an opensips.cfg (its mi_datagram and proto_hep modparams), told "
    "apart by content. Flags win over it.",
)
@_parameter_options
@click.option(
    "--app",
    metavar="MODULE:ATTRIBUTE",
    help="module:attribute of a Registry whose commands to serve too.",
)
@click.option("--log-file", type=click.Path(dir_okay=False), help="Log here (SIGHUP re-opens).")
@click.option(
    "--pid-file",
    type=click.Path(dir_okay=False),
    help="Write the supervisor's pid here once serving (removed on exit).",
)
def serve(
    config_file: str | None,
    app: str | None,
    log_file: str | None,
    pid_file: str | None,
    **given: Any,
) -> None:
    """Serve MI commands over a UNIX datagram socket or UDP, OpenSIPS-compatible.

    Every parameter can be given in the config file or as a flag (docs/parameters.md).
    """
    flags = {name: value for name, value in given.items() if value not in (None, ())}
    try:
        layer = _config_layer(config_file)
        settings = load_settings(layer, flags)
    except ConfigError as exc:
        if config_file is None or _from_flag(exc.parameter, flags):
            raise click.UsageError(str(exc)) from exc
        # The file's own error: one line naming it, whatever the file holds.
        text = str(exc) if isinstance(exc, ConfigFileError) else f"{config_file}: {exc}"
        click.echo(f"midgram: {printable(text)}", err=True)
        sys.exit(exit_status(exc))
    # Everything that can fail is opened here, before the server forks: a failed start
    # leaves nothing running and says what failed in one line.
    try:
        _setup_logging(settings.log_level, log_file)
        registry = _load_registry(app)
        pid = PidFile(pid_file) if pid_file else None
    except MidgramError as exc:
        _fail(exc)
    try:
        status = run_server(settings, registry, on_ready=lambda where: _ready(where, pid))
    except MidgramError as exc:
        _fail(exc)
    finally:
        if pid is not None:
            pid.close()
    sys.exit(status)


def _ready(where: str, pid: PidFile | None) -> None:
    if pid is not None:
        pid.write(os.getpid())
    if not on_journal(sys.stderr):  # how to call and stop it: for a person at a terminal
        click.echo(_how_to_call(where), err=True)


def _fail(exc: MidgramError) -> NoReturn:
    click.echo(f"midgram: {exc}", err=True)
    sys.exit(exit_status(exc))
