"""Errors as the CLI reports them: an exit status and one line for stderr.

``exit_status`` is the one place that maps midgram's errors to exit statuses, for every
sub-command (the library's errors carry none: their ``code`` is a JSON-RPC code). ``describe``
says a client error in one line, for ``call``, ``which``, ``help`` and ``shell``.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import stat
from types import MappingProxyType
from typing import Any, Final

from midgram.client.codec import get_dialect
from midgram.errors import (
    BadReply,
    ClientError,
    ConfigError,
    ConnectError,
    PlainTextError,
    RemoteError,
    ReplyTimeout,
    RequestTooLarge,
    TransportError,
)
from midgram.wire.address import UnixAddress, parse_target
from midgram.wire.jsonrpc import Params

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_STATUS_HELP",
    "EXIT_TIMEOUT",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "STATUS_NAMES",
    "describe",
    "exit_status",
]

EXIT_OK: Final = 0
#: The server answered with an error; for ``serve``, a failure after the start.
EXIT_ERROR: Final = 1
#: A bad option, parameter, config file, target or request: nothing was done.
EXIT_USAGE: Final = 2
EXIT_TIMEOUT: Final = 3
#: The target cannot be reached; for ``serve``, the socket cannot be bound.
EXIT_UNREACHABLE: Final = 4
EXIT_INTERRUPTED: Final = 130

# \b keeps click from re-flowing the block.
EXIT_STATUS_HELP: Final = """\b
Exit status:
  0    ok
  1    the server answered with an error (or an unusable reply)
  2    usage error (bad option, target or params; a request too
       large to send in one datagram)
  3    no reply within --timeout
  4    cannot reach the target (no socket, refused, permission denied)
  130  interrupted (Ctrl-C)
With several --target, the worst status of all targets."""

# Most specific first: the first class an error is an instance of decides; any other error
# is EXIT_ERROR.
_EXIT_STATUSES: Final[tuple[tuple[type[BaseException], int], ...]] = (
    (ReplyTimeout, EXIT_TIMEOUT),
    (ConnectError, EXIT_UNREACHABLE),
    (TransportError, EXIT_UNREACHABLE),
    (ConfigError, EXIT_USAGE),  # AddressError (a bad target) and ConfigFileError too
    (RequestTooLarge, EXIT_USAGE),
)
STATUS_NAMES: Final = MappingProxyType(
    {EXIT_OK: "ok", EXIT_ERROR: "error", EXIT_TIMEOUT: "timeout", EXIT_UNREACHABLE: "unreachable"}
)


def exit_status(exc: BaseException) -> int:
    """The exit status for an error (``EXIT_STATUS_HELP`` and ``serve``'s help list them)."""
    for kind, status in _EXIT_STATUSES:
        if isinstance(exc, kind):
            return status
    return EXIT_ERROR


# --- one-line error descriptions -------------------------------------------------------------

_UNIX_HINTS: Final = MappingProxyType(
    {
        errno.ENOENT: "no socket at {where}: is the server running? is the path right?",
        errno.ENOTDIR: "no socket at {where}: is the path right?",
        errno.EACCES: "permission denied on {where}: run as a user who may write to the socket "
        "(the server's unix_socket_mode/user/group)",
        errno.EPERM: "permission denied on {where}: run as a user who may write to the socket "
        "(the server's unix_socket_mode/user/group)",
        errno.EPROTOTYPE: "{where} is not a datagram socket: is it another program's socket?",
    }
)
_UDP_HINTS: Final = MappingProxyType(
    {
        errno.ECONNREFUSED: "no server listens on {where}: is it running? is the port right?",
        errno.ENETUNREACH: "{where} is unreachable: check the address (and the route)",
        errno.EHOSTUNREACH: "{where} is unreachable: check the address (and the route)",
        errno.EADDRNOTAVAIL: "cannot send to {where}: is that address family enabled here?",
        errno.EAFNOSUPPORT: "cannot send to {where}: is that address family enabled here?",
    }
)
_REMOTE_HINTS: Final = MappingProxyType(
    {
        -32601: "{run} `{list}` for the server's commands",
        -32602: "{run} `{recipes} {method}` for the parameters it takes",
        -32001: "use one of the names the server lists",
    }
)


def _refused_unix(address: UnixAddress) -> str:
    """ECONNREFUSED on a UNIX target: what is really there, said as it is."""
    where = str(address)
    if address.abstract:
        return (
            f"no server listens on the abstract socket {where}: is it running? is the name right?"
        )
    try:
        mode = os.stat(address.path).st_mode
    except OSError:
        mode = 0
    if stat.S_ISDIR(mode):
        return f"{where} is a folder, not a socket: give the socket's path in it"
    if stat.S_ISREG(mode):
        return f"{where} is a regular file, not a socket: is the path right?"
    if stat.S_ISSOCK(mode):
        return (
            f"no server listens on {where}: is it running? (the socket file was left by a "
            "server that stopped)"
        )
    return f"no server listens on {where}: is it running? is the path right?"


def _connect_hint(exc: ConnectError) -> str:
    address = parse_target(exc.target)
    if isinstance(address, UnixAddress) and exc.errno == errno.ECONNREFUSED:
        return _refused_unix(address)
    hints = _UNIX_HINTS if isinstance(address, UnixAddress) else _UDP_HINTS
    template = hints.get(exc.errno or 0)
    if template is None:
        return f"cannot reach {exc.target}: {exc.reason}"
    return template.format(where=exc.target)


_BAD_TYPE_RE: Final = re.compile(r"Bad type for parameter '([^']*)'")


def _bad_type_hint(data: object, params: Params) -> str | None:
    """For ``Bad type for parameter 'x'``: the form that sends what the server wanted."""
    match = _BAD_TYPE_RE.fullmatch(str(data))
    if match is None:
        return None
    name = match.group(1)
    value = params.get(name) if isinstance(params, dict) else None
    if not isinstance(value, str):
        return (
            f"{name} takes another type: {name}=text sends a string, {name}[]=text an array, "
            f"{name}:=5 a number"
        )
    hint = (
        f"{name}={value} sends a string: if {name} takes an array, write "
        f"{shlex.quote(f'{name}[]={value}')} (or give {name}=… once per value)"
    )
    if _json_scalar(value):
        hint += f"; a number or true/false: {name}:={value}"
    return hint


def _json_scalar(text: str) -> bool:
    try:
        value: Any = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, int | float | bool)


def _spelling(dialect: str, in_shell: bool) -> dict[str, str]:
    """How a hint says to list commands or show one's parameters: as a midgram command, or
    as a line to type in ``midgram shell`` (its own dialect's commands)."""
    if not in_shell:
        return {"run": "run", "list": "midgram which", "recipes": "midgram which"}
    spelled = get_dialect(dialect)
    recipes = spelled.recipes_method or spelled.help_method
    return {"run": "type", "list": spelled.list_method, "recipes": recipes}


def _remote_line(exc: RemoteError, method: str, params: Params, spelling: dict[str, str]) -> str:
    text = f"{method}: error {exc.code}: {exc.message}"
    if exc.data is not None:
        text += f" ({exc.data})"
    template = _REMOTE_HINTS.get(exc.code)
    if template is None and exc.message.lower() == "method not found":  # Kamailio's 500
        template = _REMOTE_HINTS[-32601]
    hint = _bad_type_hint(exc.data, params) if exc.code == -32602 else None
    if hint is None and template is not None:
        hint = template.format(method=method, **spelling)
    return f"{text}: {hint}" if hint else text


def _plain_text_line(exc: PlainTextError, target: str) -> str:
    why = {
        400: "it could not parse the request (larger than its socket_buf_size?)",
        500: "it could not build the reply (larger than its socket_buf_size?)",
    }.get(exc.status, "an OpenSIPS plain-text error")
    return f"{target} replied {exc.text!r}: {why}"


def describe(
    exc: ClientError,
    *,
    target: str = "the server",
    method: str = "",
    dialect: str = "opensips",
    params: Params = None,
    in_shell: bool = False,
) -> str:
    """One line for stderr: what went wrong, then what to check (``params``: what was sent,
    for a hint that shows the right form; ``in_shell``: hints say what to type in ``midgram
    shell`` rather than which command to run)."""
    if isinstance(exc, ConnectError):
        return _connect_hint(exc)
    if isinstance(exc, ReplyTimeout):
        longer = "start the shell with a longer --timeout" if in_shell else "try a longer --timeout"
        why = f"is the server busy or stuck? {longer}"
        if dialect == "kamailio":
            why += " (Kamailio sends nothing back when a reply is too big)"
        return f"{exc}: {why}"
    if isinstance(exc, RemoteError):
        return _remote_line(exc, method, params, _spelling(dialect, in_shell))
    if isinstance(exc, PlainTextError):
        return _plain_text_line(exc, target)
    if isinstance(exc, BadReply):
        return f"{exc}: is this an MI datagram server? is --dialect right?"
    return str(exc)
