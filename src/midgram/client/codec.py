"""The client's sans-IO half: dialects, request bytes, and reply bytes -> result or error.

No sockets and no clock: ``client.py`` does the I/O and asks this module what to send and
what a datagram it received means. The server side of the same protocol is ``protocol.py``.

A reply is decoded into a ``Response`` (or raises ``PlainTextError`` / ``BadReply``), and
``Response.answers(request_id)`` tells whether it is the reply the caller waits for: the id
must be the request's id exactly, with the one exception JSON-RPC makes for errors about a
request whose id could not be read (``"id": null``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

import orjson

from midgram.errors import BadReply, PlainTextError, RemoteError
from midgram.wire.jsonrpc import C_INT_MAX, MAX_DEPTH, JsonId, Params, nesting_depth

__all__ = [
    "DIALECTS",
    "MAX_REQUEST_ID",
    "Dialect",
    "Response",
    "check_params",
    "decode_response",
    "encode_request",
    "get_dialect",
    "make_params",
]

#: Request ids stay within a C int: OpenSIPS echoes a number as a C int
#: (docs/compatibility.md, difference 3).
MAX_REQUEST_ID: Final = C_INT_MAX

# "400 Parse_error", "500 Internal error": a status, a space, printable ASCII.
_PLAIN_TEXT_RE: Final = re.compile(rb"[1-6][0-9]{2} [ -~]*")
# orjson reads integers beyond 64 bits as floats, silently: below -2**63 (19 digits) and from
# 2**64 (20 digits). A run of 19 digits sends the reply to the exact, slower stdlib parser.
_LONG_NUMBER_RE: Final = re.compile(rb"[0-9]{19}")
# A result of MAX_DEPTH levels in its envelope object.
_DEEPEST: Final = MAX_DEPTH + 1
# How much of an unusable reply an error message quotes.
_QUOTE_MAX: Final = 80


@dataclass(frozen=True)
class Dialect:
    """How a server family spells the things a client needs beyond plain ``call``.

    ``list_method`` lists the command names; ``help_method`` describes one command;
    ``recipes_method`` lists a command's parameter-name lists (None: the server cannot say);
    ``named_params``: whether params may be an object; ``answers_notifications``: whether a
    request without an id still gets a reply (Kamailio answers them, OpenSIPS does not);
    ``answers_bad_json``: whether an unparsable request gets a reply at all.
    """

    name: str
    list_method: str
    help_method: str
    recipes_method: str | None
    named_params: bool
    answers_notifications: bool
    answers_bad_json: bool


DIALECTS: Final[Mapping[str, Dialect]] = MappingProxyType(
    {
        "opensips": Dialect(
            name="opensips",
            list_method="which",
            help_method="help",
            recipes_method="which",
            named_params=True,
            answers_notifications=False,
            answers_bad_json=True,
        ),
        # Kamailio jsonrpcs (golden/kamailio-5.6): "core.uptime"-style names, positional
        # params, an answer even to notifications, silence for invalid JSON.
        "kamailio": Dialect(
            name="kamailio",
            list_method="system.listMethods",
            help_method="system.methodHelp",
            recipes_method=None,
            named_params=False,
            answers_notifications=True,
            answers_bad_json=False,
        ),
    }
)


def get_dialect(name: str | Dialect) -> Dialect:
    """The dialect called ``name``; ValueError naming the known ones otherwise."""
    if isinstance(name, Dialect):
        return name
    try:
        return DIALECTS[name]
    except KeyError:
        known = ", ".join(DIALECTS)
        raise ValueError(f"unknown dialect {name!r}: use one of {known}") from None


def make_params(args: Sequence[Any], kwargs: Mapping[str, Any], dialect: Dialect) -> Params:
    """JSON-RPC params from a call's positional or named arguments (not both).

    None when there are none: the request then has no ``params`` member, which both
    OpenSIPS and Kamailio read as "no parameters".
    """
    if args and kwargs:
        raise TypeError(
            "give positional or named parameters, not both: "
            "a JSON-RPC request has either an array or an object of params"
        )
    if kwargs:
        if not dialect.named_params:
            raise TypeError(f"the {dialect.name} dialect takes positional parameters only")
        return dict(kwargs)
    return list(args) if args else None


def check_params(params: Params, dialect: Dialect) -> Params:
    """Validate explicit params (a list, a dict or None); empty ones become None."""
    if params is not None and not isinstance(params, list | dict):
        raise TypeError(f"params must be a list, a dict or None, not {type(params).__name__}")
    if isinstance(params, dict) and params and not dialect.named_params:
        raise TypeError(f"the {dialect.name} dialect takes positional parameters only")
    return params or None


def encode_request(method: str, params: Params, request_id: JsonId | None = None) -> bytes:
    """The request datagram; ``request_id=None`` makes a notification (no ``id`` member).

    Member order is ``jsonrpc, method, params, id``, as python-opensips and kamcli send it.
    TypeError for params that are not JSON (e.g. a set).
    """
    request: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params:
        request["params"] = params
    if request_id is not None:
        request["id"] = request_id
    try:
        return orjson.dumps(request)
    except TypeError:
        # orjson refuses integers beyond 64 bits, which the stdlib writes exactly.
        return json.dumps(request, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class Response:
    """A decoded JSON-RPC response: a result, or a ``RemoteError`` to raise."""

    id: JsonId
    has_id: bool
    result: Any = None
    error: RemoteError | None = None

    def answers(self, request_id: JsonId) -> bool:
        """True if this is the reply to ``request_id``.

        Types must match too (``True == 1`` in Python, not in JSON). A ``null`` id on an
        error is accepted: a server that could not read the request's id answers so.
        """
        if not self.has_id:
            return False
        if self.id is None:
            return self.error is not None
        return type(self.id) is type(request_id) and self.id == request_id

    def unwrap(self) -> Any:
        """The result, or raise the server's error."""
        if self.error is not None:
            raise self.error
        return self.result


def decode_response(data: bytes) -> Response:
    """Decode one reply datagram.

    Raises ``PlainTextError`` for OpenSIPS's ``400 Parse_error`` / ``500 Internal error``,
    and ``BadReply`` for anything that is not a JSON-RPC response. Invalid UTF-8 inside
    strings (OpenSIPS passes bytes through) is replaced with U+FFFD instead of failing.
    """
    body = _load(data)
    if type(body) is not dict:
        raise BadReply(f"reply is not a JSON-RPC response object: {_quote(data)}")
    has_result, has_error = "result" in body, "error" in body
    if has_result == has_error:
        raise BadReply(f"reply has neither or both of 'result' and 'error': {_quote(data)}")
    reply_id = body.get("id")
    if reply_id is not None and type(reply_id) not in (str, int, float):
        raise BadReply(f"reply has an id of the wrong type: {_quote(data)}")
    if has_result:
        return Response(reply_id, "id" in body, result=body["result"])
    return Response(reply_id, "id" in body, error=_remote_error(body["error"], data))


def _load(data: bytes) -> Any:
    """The reply's JSON value. No result midgram, OpenSIPS or Kamailio sends nests deeper
    than ``MAX_DEPTH`` (in its envelope, one level more): a deeper reply is refused before
    any recursive parse (the stdlib's would raise RecursionError) and before it reaches
    code that walks it recursively (the CLI's renderers)."""
    if data.count(b"[") + data.count(b"{") > _DEEPEST and nesting_depth(data) > _DEEPEST:
        raise BadReply(f"reply nested deeper than {MAX_DEPTH} levels: {_quote(data)}")
    if not _LONG_NUMBER_RE.search(data):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    stripped = data.strip()
    if _PLAIN_TEXT_RE.fullmatch(stripped):
        raise PlainTextError(stripped.decode("ascii"))
    try:
        # The stdlib keeps big integers exact and, decoding first, survives invalid UTF-8.
        return json.loads(data.decode("utf-8", "replace"))
    except ValueError as exc:
        raise BadReply(f"reply is not JSON ({exc}): {_quote(data)}") from exc


def _remote_error(error: Any, data: bytes) -> RemoteError:
    if type(error) is not dict:
        raise BadReply(f"reply's 'error' is not an object: {_quote(data)}")
    code, message = error.get("code"), error.get("message")
    if type(code) is not int or type(message) is not str:
        raise BadReply(f"reply's error has no integer code or string message: {_quote(data)}")
    return RemoteError(code, message, error.get("data"))


def _quote(data: bytes) -> str:
    text = repr(data[:_QUOTE_MAX])
    return text + f"... ({len(data)} bytes)" if len(data) > _QUOTE_MAX else text
