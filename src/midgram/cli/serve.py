"""``midgram serve``: the MI datagram daemon, its flags mirroring the module parameters."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from midgram.address import UnixAddress, parse_socket_name
from midgram.commands import Registry
from midgram.config import ALIASES, load_settings, load_toml, parse_opensips_cfg
from midgram.errors import ConfigError, MidgramError
from midgram.logs import printable
from midgram.runtime import OPENSIPS_LEVELS
from midgram.server import serve as run_server

__all__ = ["serve"]

LOG_FORMAT = "%(asctime)s midgram[%(process)d] %(levelname)s %(name)s: %(message)s"

_LEVEL_NAMES = {"debug", "info", "warning", "warn", "error", "critical", "notice", "err", "crit"}


def _setup_logging(level: str, log_file: str | None) -> None:
    handler: logging.Handler = (
        logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
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
    """A TOML file, or the modparam lines of an existing opensips.cfg. ConfigError for a
    file that cannot be read or used."""
    if path is None:
        return {}
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError("--config", path, exc.strerror or str(exc)) from exc
    if path.endswith(".toml"):
        try:
            text = data.decode()  # TOML is UTF-8 by definition
        except UnicodeDecodeError as exc:
            where = f"byte {data[exc.start]:#04x} at offset {exc.start}"
            raise ConfigError("TOML", "", f"not UTF-8 text ({where})") from None
        return dict(load_toml(text))
    # OpenSIPS reads its cfg as bytes: a Latin-1 comment is no error. Other bytes than
    # UTF-8 go through as surrogates and back out as the same bytes (a path, say).
    cfg = parse_opensips_cfg(data.decode(errors="surrogateescape"))
    warnings = list(cfg.warnings())
    if not cfg.params:
        warnings.append('no modparam("mi_datagram", ...) line found: nothing taken from it')
    for warning in warnings:
        click.echo(f"midgram: {path}: {warning}", err=True)
    return cfg.layer()


def _from_flag(parameter: str, flags: dict[str, Any]) -> bool:
    """Whether a command-line flag gave ``parameter`` (else the config file did)."""
    name = ALIASES.get(parameter, parameter)
    return flags.get(name) is not None


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
        layer = _config_layer(config_file)
        settings = load_settings(layer, flags)
    except ConfigError as exc:
        if config_file is None or _from_flag(exc.parameter, flags):
            raise click.UsageError(str(exc)) from exc
        # The file's own error: one line naming it, whatever the file holds.
        click.echo(f"midgram: {config_file}: {printable(str(exc))}", err=True)
        sys.exit(exc.code)
    _setup_logging(settings.log_level, log_file)
    registry = _load_registry(app)

    def ready(where: str) -> None:
        if pid_file:
            Path(pid_file).write_text(f"{os.getpid()}\n")
        click.echo(_how_to_call(where), err=True)

    try:
        status = run_server(settings, registry, on_ready=ready)
    except MidgramError as exc:
        click.echo(f"midgram: {exc}", err=True)
        sys.exit(exc.code)
    finally:
        if pid_file:
            Path(pid_file).unlink(missing_ok=True)
    sys.exit(status)
