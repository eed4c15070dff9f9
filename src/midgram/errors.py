"""The one exception tree of midgram, reachable from the package too (``midgram.ClientError``).

::

    MidgramError                    every error midgram raises on purpose
    +-- ConfigError                 a bad parameter value; .parameter, .value, .reason
    |   +-- AddressError            a socket_name / target that does not parse
    |   +-- ConfigFileError         a config file unusable as a whole; .parameter is its name
    +-- MIError                     a command's error reply: .code, .message, .data
    |   +-- InvalidParams           code -32602 "Invalid params" with a data text
    |   +-- ServerError             code -32000 "Server error" with a data text
    +-- ProtocolError               a datagram that is not a usable JSON-RPC request
    |   +-- ParseError              not JSON: code -32700 (plain "400 Parse_error" on the wire)
    |   +-- InvalidRequest          JSON, but not a valid request: code -32600; .reply_id
    +-- HepError                    a HEP packet that cannot be encoded or decoded
    +-- TransportError              a socket operation failed; .target
    |   +-- SocketInUse             another live server answers on that path
    +-- ClientError                 what a client call raises
    |   +-- RemoteError             the server answered with a JSON-RPC error: .code, .message,
    |   |                           .data
    |   +-- PlainTextError          the server answered "400 Parse_error" / "500 Internal
    |   |                           error"; .text, .status (400, 500)
    |   +-- ReplyTimeout            no reply within the timeout; .target, .timeout
    |   +-- ConnectError            cannot reach the target: no socket, refused, permission,
    |   |                           unresolvable host; .target, .reason, .errno
    |   +-- RequestTooLarge         the request does not fit in one datagram; .target, .size
    |   +-- BadReply                a reply that is truncated or not a JSON-RPC response
    +-- LoadgenError                ``midgram bench``'s load generator is not installed (it
                                    was not built at install time) or failed to run

``code`` is always a JSON-RPC (MI) error code, as sent on the wire: the one a handler's
``MIError`` answers with, the one the server answers a ``ProtocolError`` with, the one a
server answered a client with (``RemoteError``). No other error has one. Which exit status
the command line gives each error is the command line's business (``midgram.cli.failures``).
"""

from __future__ import annotations

import reprlib
from typing import ClassVar, Final

__all__ = [
    "AddressError",
    "BadReply",
    "ClientError",
    "ConfigError",
    "ConfigFileError",
    "ConnectError",
    "HepError",
    "InvalidParams",
    "InvalidRequest",
    "LoadgenError",
    "MIError",
    "MidgramError",
    "ParseError",
    "PlainTextError",
    "ProtocolError",
    "RemoteError",
    "ReplyTimeout",
    "RequestTooLarge",
    "ServerError",
    "SocketInUse",
    "TransportError",
]


class MidgramError(Exception):
    """Base of every error midgram raises on purpose."""


class ConfigError(MidgramError):
    """A configuration value is unusable. The message names the parameter and the value."""

    def __init__(self, parameter: str, value: object, reason: str) -> None:
        self.parameter = parameter
        self.value = value
        self.reason = reason
        super().__init__(f"bad value for {parameter!s}: {_shown(value)}: {reason}")


# A value from a config file may be anything: a 5000-digit number (whose repr() raises), a
# list nested hundreds deep. The message shows its start, on one line.
_REPR: Final = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 4, 200, 200
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = 8
# Beyond this many bits an integer is shown by its size (str() stops at 4300 digits).
_LONG_INT_BITS: Final = 256


def _shown(value: object) -> str:
    if isinstance(value, int) and value.bit_length() > _LONG_INT_BITS:
        digits = int(value.bit_length() * 0.30103) + 1
        return f"<an integer of about {digits} digits>"
    return _REPR.repr(value)


class AddressError(ConfigError):
    """A ``socket_name`` (or a client target) that does not follow the grammar."""


class ConfigFileError(ConfigError):
    """A configuration file that cannot be used as a whole (not valid TOML, no parameter in
    it): the message starts with the file's name."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(name, None, reason)
        self.args = (f"{name}: {reason}",)


class MIError(MidgramError):
    """An MI command error, sent as ``{"code":..,"message":..[,"data":..]}``.

    A handler raises it for a command-specific failure, e.g. ``MIError(404, "Not found")``.
    """

    def __init__(self, code: int, message: str, data: str | None = None) -> None:
        super().__init__(message if data is None else f"{message}: {data}")
        self.code = code
        self.message = message
        self.data = data


class InvalidParams(MIError):
    """-32602 ``Invalid params``; ``data`` says which parameter and why."""

    code = -32602

    def __init__(self, data: str) -> None:
        super().__init__(self.code, "Invalid params", data)


class ServerError(MIError):
    """-32000 ``Server error``; ``data`` says why (the handler itself failed)."""

    code = -32000

    def __init__(self, data: str) -> None:
        super().__init__(self.code, "Server error", data)


class ProtocolError(MidgramError):
    """A datagram that cannot be run as a JSON-RPC request; ``code`` is the JSON-RPC error
    code it is answered with."""

    code: ClassVar[int]


class ParseError(ProtocolError):
    """The datagram is not JSON (or is too large to have been read whole)."""

    code = -32700


class InvalidRequest(ProtocolError):
    """Valid JSON but not a valid JSON-RPC 2.0 request.

    ``reply_id`` is the id to answer with (``None`` when the request had none usable);
    ``method`` the method name when it was a string (for logs and traces).
    """

    code = -32600

    def __init__(
        self, reason: str, reply_id: str | int | float | None = None, method: str | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply_id = reply_id
        self.method = method


class HepError(MidgramError):
    """A HEP packet that does not decode (or a value that does not fit its chunk)."""


class TransportError(MidgramError):
    """A socket operation failed; ``target`` names the socket or address involved."""

    def __init__(self, message: str, target: str = "") -> None:
        super().__init__(message)
        self.target = target


class SocketInUse(TransportError):
    """Another live server already answers on the requested UNIX socket path."""


class ClientError(MidgramError):
    """Base of the errors a client call raises."""


class RemoteError(ClientError):
    """The server answered with a JSON-RPC error object."""

    def __init__(self, code: int, message: str, data: object = None) -> None:
        text = f"{code}: {message}" if data is None else f"{code}: {message} ({data})"
        super().__init__(text)
        self.code = code
        self.message = message
        self.data = data


class PlainTextError(ClientError):
    """The server answered with the plain-text ``400 Parse_error`` or ``500 Internal error``."""

    def __init__(self, text: str) -> None:
        super().__init__(f"server replied {text!r}")
        self.text = text
        status = text.split(" ", 1)[0]
        self.status = int(status) if status.isdigit() else 0


class ReplyTimeout(ClientError):
    """No reply arrived within the timeout."""

    def __init__(self, target: str, timeout: float, note: str = "") -> None:
        text = f"no reply from {target} within {timeout:g} s"
        super().__init__(f"{text} ({note})" if note else text)
        self.target = target
        self.timeout = timeout


class ConnectError(ClientError):
    """The target cannot be reached: no such socket, nobody listening, permission denied.

    ``reason`` says what failed (e.g. the strerror text); ``errno`` is the OS error number
    when there is one, so a caller can tell "no socket" from "permission denied".
    """

    def __init__(self, target: str, reason: str, errno: int | None = None) -> None:
        super().__init__(f"cannot reach {target}: {reason}")
        self.target = target
        self.reason = reason
        self.errno = errno


class RequestTooLarge(ClientError):
    """The client's own socket refused to send the request (EMSGSIZE): it does not fit in one
    datagram. Nothing was sent: a usage error, not the server's answer."""

    def __init__(self, target: str, size: int | None, reason: str) -> None:
        what = "the request" if size is None else f"the request ({size} bytes)"
        super().__init__(
            f"{what} is too large to send to {target} in one datagram ({reason}): send fewer "
            "or shorter params"
        )
        self.target = target
        self.size = size


class BadReply(ClientError):
    """A reply that is truncated, not JSON, or not a JSON-RPC response."""


class LoadgenError(MidgramError):
    """The load generator of ``midgram bench`` is not installed or did not run to the end."""
