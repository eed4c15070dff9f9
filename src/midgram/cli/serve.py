"""``midgram serve``: the MI datagram daemon, its flags mirroring the module parameters."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from midgram.address import UnixAddress, parse_socket_name
from midgram.commands import Registry
from midgram.config import load_settings, load_toml, parse_opensips_cfg
from midgram.errors import ConfigError, MidgramError
from midgram.files import LogFileHandler, PidFile
from midgram.runtime import OPENSIPS_LEVELS
from midgram.server import serve as run_server

__all__ = ["serve"]

LOG_FORMAT = "%(asctime)s midgram[%(process)d] %(levelname)s %(name)s: %(message)s"

_LEVEL_NAMES = {"debug", "info", "warning", "warn", "error", "critical", "notice", "err", "crit"}


def _setup_logging(level: str, log_file: str | None) -> None:
    handler: logging.Handler = (
        LogFileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_python_level(level))


def _python_level(level: str) -> int:
    aliases = {"warn": "WARNING", "notice": "INFO", "err": "ERROR", "crit": "CRITICAL"}
    text = level.strip()
    if text.lstrip("-").isdigit():
        return OPENSIPS_LEVELS[max(-3, min(4, int(text)))]
    return logging.getLevelName(aliases.get(text.lower(), text.upper()))  # type: ignore[no-any-return]


def _config_layer(path: str | None) -> dict[str, Any]:
    """A TOML file, or the modparam lines of an existing opensips.cfg."""
    if path is None:
        return {}
    text = Path(path).read_text()
    if path.endswith(".toml"):
        return dict(load_toml(text))
    cfg = parse_opensips_cfg(text)
    warnings = list(cfg.warnings())
    if not cfg.params:
        warnings.append('no modparam("mi_datagram", ...) line found: nothing taken from it')
    for warning in warnings:
        click.echo(f"midgram: {path}: {warning}", err=True)
    return cfg.layer()


def _load_registry(spec: str | None) -> Registry | None:
    """``--app module:attribute``: a Registry, or a function returning one."""
    if spec is None:
        return None
    module_name, _, attribute = spec.partition(":")
    try:
        target = getattr(importlib.import_module(module_name), attribute or "mi")
    except (ImportError, AttributeError) as exc:
        raise click.BadParameter(f"cannot load {spec!r}: {exc}", param_hint="--app") from exc
    registry = target() if callable(target) and not isinstance(target, Registry) else target
    if not isinstance(registry, Registry):
        raise click.BadParameter(f"{spec!r} is not a midgram Registry", param_hint="--app")
    return registry


def _how_to_call(where: str) -> str:
    address = parse_socket_name(where)
    if isinstance(address, UnixAddress) and not address.abstract:
        opensips = f"-o datagram_unix_socket={where}"
    elif isinstance(address, UnixAddress):
        opensips = "(opensips-cli cannot reach abstract sockets)"
    else:
        host = address.host
        opensips = f"-o datagram_ip={host} -o datagram_port={address.port}"
    return (
        f"midgram listening on {where}\n"
        f"  call it:  midgram call uptime --target {where}\n"
        f"       or:  opensips-cli -o communication_type=datagram {opensips} -x mi uptime\n"
        "  stop it:  Ctrl-C (or the MI command `kill`)"
    )


@click.command()
@click.option(
    "-s", "--socket", "socket_name", help="socket_name: a path, @abstract or udp:host:port."
)
@click.option("-c", "--children", "children_count", type=int, help="children_count (0: no fork).")
@click.option("--mode", "unix_socket_mode", help="unix_socket_mode, octal (default 0660).")
@click.option("--user", "unix_socket_user", help="unix_socket_user: owner of the socket file.")
@click.option("--group", "unix_socket_group", help="unix_socket_group: group of the socket file.")
@click.option("--timeout", "socket_timeout", type=int, help="socket_timeout in ms (default 2000).")
@click.option("--buf-size", "socket_buf_size", type=int, help="socket_buf_size (default 65457).")
@click.option("--pretty/--no-pretty", "pretty_printing", default=None, help="pretty_printing.")
@click.option("--json-errors/--plain-errors", default=None, help="JSON-RPC errors, not plain text.")
@click.option("--allow-from", multiple=True, help="CIDR allowed to send over UDP (repeatable).")
@click.option("--allow-any", is_flag=True, default=None, help="Accept UDP from any address.")
@click.option(
    "--trace-to",
    "trace_destination",
    metavar="DEST",
    help="trace_destination: trace commands as HEP3 to udp:HOST:PORT, or to a hep_id's name.",
)
@click.option("--trace-bwlist", metavar="LIST", help='trace_bwlist, e.g. "b: ps, which".')
@click.option(
    "--homer5/--no-homer5",
    "homer5_on",
    default=None,
    help="homer5_on: HOMER 5 text trace payloads (the default), or JSON.",
)
@click.option("--hep-capture-id", type=int, help="hep_capture_id in HEP packets (default 1).")
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    help="A TOML file, or an opensips.cfg (its mi_datagram and proto_hep modparams).",
)
@click.option("--app", help="module:attribute of a Registry whose commands to serve too.")
@click.option("--log-level", help="debug|info|warning|error|critical, or OpenSIPS -3..4.")
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
    allow_from: tuple[str, ...],
    **flags: Any,
) -> None:
    """Serve MI commands over a UNIX datagram socket or UDP, OpenSIPS-compatible."""
    flags["allow_from"] = allow_from or None
    try:
        settings = load_settings(_config_layer(config_file), flags)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
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
    click.echo(_how_to_call(where), err=True)


def _fail(exc: MidgramError) -> NoReturn:
    click.echo(f"midgram: {exc}", err=True)
    sys.exit(exc.code)
