"""Sans-IO JSON-RPC 2.0 as OpenSIPS's MI speaks it: bytes in, values out; values in, bytes out.

No sockets, no clock. ``decode_request`` turns a datagram into a ``Request`` or a
``Notification`` (or raises ``ParseError`` / ``InvalidRequest``), from ``parse_request``,
the one statement of what a valid request is (both dispatch paths call it, and use the call
flat); the ``encode_*`` functions
build replies byte-compatible with OpenSIPS 3.6 (member order ``jsonrpc, result|error, id``,
compact or cJSON's "formatted" layout), and ``reply_fits`` applies OpenSIPS's size rule.

Why orjson: it is the fastest JSON codec for CPython (a Rust extension, several times faster
than the stdlib in both directions on MI-sized documents), it is strict RFC 8259 by design
(no NaN, no trailing junk, no single quotes: docs/compatibility.md, difference 2), and its
string escaping is byte-identical to cJSON's (``\\u00xx`` lower-case for control bytes,
``/``, DEL and UTF-8 raw). The pretty format is cJSON's own and needs a small encoder of our
own (``_pretty``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, Final, NamedTuple, TypeAlias

import orjson

from midgram.errors import InvalidRequest, ParseError

__all__ = [
    "ALWAYS_FITS_MARGIN",
    "C_INT_MAX",
    "C_INT_MIN",
    "DEFAULT_BUF_SIZE",
    "INTERNAL_ERROR_REPLY",
    "MAX_BUF_SIZE",
    "MAX_DEPTH",
    "NO_ID",
    "PARSE_ERROR_REPLY",
    "Call",
    "JsonId",
    "Notification",
    "Params",
    "Request",
    "TooDeep",
    "decode_request",
    "encode_error",
    "encode_result",
    "encode_value",
    "nesting_depth",
    "parse_request",
    "reply_fits",
]

JsonId: TypeAlias = str | int | float | None
Params: TypeAlias = list[Any] | dict[str, Any] | None

#: OpenSIPS's datagram buffer: the largest request read and reply sent (socket_buf_size).
DEFAULT_BUF_SIZE: Final = 65457
#: The largest ``socket_buf_size`` a server takes, so the largest reply a client may get.
MAX_BUF_SIZE: Final = 1 << 20
#: The plain-text replies mi_datagram sends where a JSON-RPC reply cannot be made.
PARSE_ERROR_REPLY: Final = b"400 Parse_error"
INTERNAL_ERROR_REPLY: Final = b"500 Internal error"

#: The deepest value midgram encodes or reads in a reply: orjson's own limit (it refuses a
#: 255th level), which the pure-Python encoders keep too, so that no value is encoded by one
#: path and refused by another and none runs into Python's recursion limit. Requests may nest
#: deeper: orjson parses up to 1024 levels (OpenSIPS's old cJSON has no limit at all), and a
#: deeper request is a parse error.
MAX_DEPTH: Final = 254

_NON_STR_KEYS: Final = orjson.OPT_NON_STR_KEYS
_dumps: Final = orjson.dumps


class TooDeep(TypeError):
    """A value nested deeper than ``MAX_DEPTH``: it cannot be encoded."""

    def __init__(self) -> None:
        super().__init__(f"nested deeper than {MAX_DEPTH} levels")


# Messages are immutable NamedTuples rather than frozen dataclasses: they are built for every
# datagram, and a frozen dataclass's __init__ (object.__setattr__ per field) costs about
# 0.8 us against 0.35 us for a NamedTuple (measured on CPython 3.11).


class Request(NamedTuple):
    """A call that expects a reply. ``params`` is None when absent or empty (OpenSIPS rule)."""

    method: str
    params: Params
    id: JsonId


class Notification(NamedTuple):
    """A call without an ``id`` member: it is answered only if it is invalid."""

    method: str
    params: Params


def decode_request(data: bytes) -> Request | Notification:
    """One datagram as a ``Request`` or a ``Notification``: ``parse_request``'s call, typed."""
    method, params, req_id = parse_request(data)
    if req_id is NO_ID:
        return Notification(method, params)
    return Request(method, params, req_id)


#: The id of a notification: it has no ``id`` member (an explicit null is an id).
NO_ID: Final[Any] = object()

#: A valid call, flat: method, params (None when absent or empty) and id (NO_ID when none).
Call: TypeAlias = tuple[str, Params, Any]

_PARAMS_TYPE: Final = "'params' must be an array or an object"
_loads: Final = orjson.loads


def parse_request(data: bytes) -> Call:
    """What a valid request is, stated once: the one parse and check both dispatch paths
    (``Dispatcher.handle`` and its fast path ``Dispatcher.answer``) make.

    Raises ``ParseError`` for anything that is not exactly one JSON value (strict RFC 8259;
    surrounding whitespace is fine, as kamcli sends a trailing newline), and
    ``InvalidRequest``, with the id to answer with, for JSON that is not a valid JSON-RPC 2.0
    request: OpenSIPS's parse_mi_request checks (docs/compatibility.md, "Request
    validation"), with differences 3 and 4 applied. Every datagram comes through here, so
    the common request (a string or integer id, every member there) costs one parse, one
    subscript per member and no other call.
    """
    try:
        obj = _loads(data)
    except orjson.JSONDecodeError as exc:
        obj, data = _parse_to_nul(data, exc)
    if type(obj) is not dict:
        raise InvalidRequest("a request must be a JSON object (batches are not supported)")
    try:  # subscripts: cheaper than get() where the members are there, as they usually are
        version = obj["jsonrpc"]
        method = obj["method"]
        req_id = obj["id"]
    except KeyError:
        version = obj.get("jsonrpc")
        method = obj.get("method")
        req_id = obj.get("id", NO_ID)
    if type(req_id) is not int and type(req_id) is not str:
        req_id = _other_id(req_id, method, data)
    if version != "2.0":
        raise _invalid("'jsonrpc' must be \"2.0\"", req_id, method)
    if type(method) is not str:
        raise _invalid("'method' must be a string", req_id, None)
    if "params" not in obj:
        return method, None, req_id
    params = obj["params"]
    if type(params) is not list and type(params) is not dict:
        raise _invalid(_PARAMS_TYPE, req_id, method)  # null included
    return method, params or None, req_id  # empty counts as absent (OpenSIPS)


def _parse_to_nul(data: bytes, error: orjson.JSONDecodeError) -> tuple[Any, bytes]:
    """Like OpenSIPS, which reads the datagram as a C string, a request ends at a NUL byte:
    the JSON before it and that text, or ``ParseError``. Only a datagram orjson refused pays
    for the search (JSON text holds no raw NUL byte, so no datagram with one parses whole)."""
    nul = data.find(b"\0")
    if nul >= 0:
        data = data[:nul]
        try:
            return _loads(data), data
        except orjson.JSONDecodeError as again:
            error = again
    raise ParseError(str(error)) from error


def _other_id(req_id: Any, method: Any, data: bytes) -> Any:
    """An id that is not a string or an integer: none (a notification), null, a number
    orjson read as a float (made exact), or one that makes the request invalid."""
    if req_id is NO_ID or req_id is None:
        return req_id
    if type(req_id) is float:
        return _exact_id(data, req_id)
    raise _invalid("'id' must be a string, a number or null", NO_ID, method)


def _invalid(why: str, req_id: Any, method: Any) -> InvalidRequest:
    """The error for an invalid request: answered with its id (null when it has none usable),
    and naming its method when that is a string (for logs and traces)."""
    reply_id = None if req_id is NO_ID else req_id
    return InvalidRequest(why, reply_id, method if type(method) is str else None)


def _exact_id(data: bytes, parsed: float) -> JsonId:
    """orjson reads integers beyond 64 bits as floats; the stdlib keeps them exact.

    Only float ids pay for this, and the reply id stays the request's id exactly
    (docs/compatibility.md, difference 3). Only the id's own text is parsed again, found by
    ``_member_text`` without recursion: however deep the rest of the request is nested, this
    cannot fail.
    """
    text = _member_text(data, "id")
    try:
        value = json.loads(text) if text is not None else parsed
    except ValueError:  # pragma: no cover - orjson read this very text as a number
        return parsed
    return value if type(value) in (int, float) else parsed


# One JSON string, or one structural character: all that the scanners below look at (what
# lies between, numbers and literals, never changes the structure).
_TOKEN_RE: Final = re.compile(rb'"(?:[^"\\]|\\.)*"|[][{}:,]', re.DOTALL)


def _tokens(data: bytes) -> Iterator[re.Match[bytes]]:
    return _TOKEN_RE.finditer(data)


def nesting_depth(data: bytes) -> int:
    """How deep the arrays and objects of a JSON text nest (0 for a scalar), counted
    without recursion or parsing, in one pass: for texts whose parse could recurse."""
    depth = deepest = 0
    for match in _tokens(data):
        char = match.group()[:1]
        if char in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif char in (b"]", b"}"):
            depth -= 1
    return deepest


def _member_text(data: bytes, name: str) -> bytes | None:
    """The text of member ``name`` of the top-level object (the last one, as a dict keeps),
    for JSON that orjson accepted; found in one pass, without recursion."""
    depth = 0
    key: bytes | None = None  # the key of the top-level member being read
    value_start = 0
    found = None
    for match in _tokens(data):
        token = match.group()
        char = token[:1]
        if depth == 1 and char in (b",", b"}"):
            if key is not None and _key_is(key, name):
                found = data[value_start : match.start()]
            key = None
        if char in (b"[", b"{"):
            depth += 1
        elif char in (b"]", b"}"):
            depth -= 1
        elif depth == 1 and char == b'"' and key is None:
            key = token
        elif depth == 1 and char == b":":
            value_start = match.end()
    return found


def _key_is(token: bytes, name: str) -> bool:
    if b"\\" not in token:
        return token[1:-1] == name.encode()
    return bool(json.loads(token) == name)


# --- encoding -----------------------------------------------------------------------------


def encode_value(value: Any, *, pretty: bool = False, depth: int = 0) -> bytes:
    """One JSON value, compact or in cJSON's formatted layout (nested ``depth`` levels deep).

    Raises TypeError for a value that is not JSON (e.g. a set).
    """
    if pretty:
        laid_out = _pretty_objects(value, depth)
        return laid_out if laid_out is not None else _pretty(_normalise(value), depth).encode()
    try:
        return _dumps(value)
    except TypeError:
        return _encode_unusual(value)


def _encode_unusual(value: Any) -> bytes:
    """What plain orjson refuses: non-string keys (an option that doubles orjson's time, so
    only paid for here) and integers beyond 64 bits (our own encoder)."""
    try:
        return _dumps(value, option=_NON_STR_KEYS)
    except TypeError:
        return _compact(value).encode()


def encode_result(result: Any, req_id: JsonId, *, pretty: bool = False) -> bytes:
    """``{"jsonrpc":"2.0","result":...,"id":...}``. TypeError if result is not JSON."""
    if pretty:
        # The envelope is an object too: laid out with the result in one go when it can be.
        whole = _pretty_objects({"jsonrpc": "2.0", "result": result, "id": req_id}, 0)
        if whole is not None:
            return whole
        return _pretty_envelope("result", encode_value(result, pretty=True, depth=1), req_id)
    try:
        # One orjson call for the whole envelope: it keeps the member order, and it is the
        # fastest way to build the reply (a third cheaper than joining the parts).
        return _dumps({"jsonrpc": "2.0", "result": result, "id": req_id})
    except TypeError:
        body = _encode_unusual(result)
    return b'{"jsonrpc":"2.0","result":' + body + b',"id":' + _id(req_id) + b"}"


def encode_error(
    code: int, message: str, data: str | None, req_id: JsonId, *, pretty: bool = False
) -> bytes:
    """``{"jsonrpc":"2.0","error":{"code":..,"message":..[,"data":..]},"id":...}``."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data:
        error["data"] = data
    if pretty:
        return _pretty_envelope("error", _pretty(error, 1).encode(), req_id)
    if type(req_id) is not int:
        return _dumps({"jsonrpc": "2.0", "error": error, "id": req_id})
    return b'{"jsonrpc":"2.0","error":' + _dumps(error) + b',"id":' + _id(req_id) + b"}"


def _pretty_envelope(member: str, value: bytes, req_id: JsonId) -> bytes:
    return (
        b'{\n\t"jsonrpc":\t"2.0",\n\t"'
        + member.encode()
        + b'":\t'
        + value
        + b',\n\t"id":\t'
        + _id(req_id)
        + b"\n}"
    )


def _id(req_id: JsonId) -> bytes:
    if type(req_id) is int:
        return str(req_id).encode()  # any size, where orjson stops at 64 bits
    return _dumps(req_id)


def reply_fits(reply: bytes, req_id: JsonId, bufsize: int, *, pretty: bool = False) -> bool:
    """Would OpenSIPS's cJSON have printed this reply into a ``bufsize`` buffer?

    cJSON_PrintPreallocated reserves room before it prints each value; the reservation for
    the ``id`` (printed last) is the binding one: 21 bytes for an integral number, 64 for
    any other number, the quoted length + 1 for a string and 5 for null. The whole text
    also needs a byte for its NUL terminator. So with a one-digit numeric id the largest
    reply is ``bufsize - 19`` bytes, and with a string id ``bufsize - 1``
    (docs/compatibility.md, "The size rule").
    """
    size = len(reply)
    if size <= bufsize - ALWAYS_FITS_MARGIN:
        return True  # the fast path: even the largest reservation fits
    if size + 1 > bufsize:
        return False
    id_text = _id(req_id)
    suffix = 2 if pretty else 1  # "\n}" or "}"
    id_offset = size - suffix - len(id_text)
    return id_offset + _id_reservation(req_id, id_text) <= bufsize


#: A reply at least this far below the buffer size fits whatever its id: the largest
#: reservation (64, a non-integral number id) plus the NUL terminator.
ALWAYS_FITS_MARGIN: Final = 64 + 1
#: A C int's range: what OpenSIPS stores a number in (cJSON's ``valueint`` saturates to it).
C_INT_MIN: Final = -(2**31)
C_INT_MAX: Final = 2**31 - 1


def _id_reservation(req_id: JsonId, id_text: bytes) -> int:
    if req_id is None:
        return 5
    if type(req_id) is str:
        return len(id_text) + 1
    assert isinstance(req_id, int | float)
    integral = float(req_id).is_integer() and C_INT_MIN <= req_id <= C_INT_MAX
    return 21 if integral else 64


# --- the pure-Python encoders: cJSON's formatted layout, and compact for huge integers -----


#: orjson's indented layout, the start of ``_pretty_objects``; non-string keys as ``_normalise``.
_INDENTED: Final = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS


def _pretty_objects(value: Any, depth: int) -> bytes | None:
    """``_pretty``'s fast path, for a value without arrays (most replies: ``uptime``,
    ``get_statistics``, ``ps`` rows...): orjson's indented text, re-laid as cJSON lays it out,
    with tabs and a tab after each key's colon; None when it does not apply.

    In that text, a raw newline and ``": `` are layout only (a string escapes its newlines and
    quotes), so two replaces at C speed re-lay it; the indentation is replaced deepest first,
    so a shallower one never matches inside a deeper one already re-laid.
    """
    try:
        text = orjson.dumps(value, option=_INDENTED)
    except TypeError:  # huge integers, too deep: _pretty says which
        return None
    # Left to _pretty: an array that is not empty (cJSON writes it on one line, orjson one
    # item a line), an empty object (cJSON opens a line in it), and an escaped quote before
    # ": " (in a string, where it is not layout; or a key ending in a backslash). Looked for
    # in the text: a string holding one only sends the value to _pretty, slower, not different.
    # (A one-byte search is memchr, several times faster than a longer one: it goes first.)
    if (b"[" in text and b"[\n" in text) or b"{}" in text or (b"\\" in text and b'\\": ' in text):
        return None
    text = text.replace(b'": ', b'":\t')
    deepest = 1
    while b"\n" + b"  " * (deepest + 1) in text:
        deepest += 1
    for level in range(deepest, 0, -1):
        text = text.replace(b"\n" + b"  " * level, b"\n" + b"\t" * (level + depth))
    if depth:
        text = text.replace(b"\n}", b"\n" + b"\t" * depth + b"}")
    return text


def _normalise(value: Any) -> Any:
    """Turn anything orjson can serialise (dataclasses, enums, tuples...) into plain JSON types,
    so the pretty encoder accepts exactly what the compact one does."""
    try:
        return orjson.loads(orjson.dumps(value, option=_NON_STR_KEYS))
    except TypeError:
        return value  # huge integers: plain types already, or _pretty raises TypeError


def _scalar(value: Any) -> str:
    if value is None or value is True or value is False or type(value) in (str, float):
        return orjson.dumps(value).decode()
    if type(value) is int:
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _key(key: Any) -> str:
    return orjson.dumps(key if type(key) is str else str(key)).decode()


def _pretty(value: Any, depth: int, level: int = 1) -> str:
    """cJSON formatted output: objects one member a line, tab-indented; arrays on one line.

    ``depth`` is the indentation, ``level`` how deep ``value`` is (TooDeep past MAX_DEPTH)."""
    if type(value) is dict:
        _check_level(level)
        if not value:
            return "{\n" + "\t" * depth + "}"
        indent = "\t" * (depth + 1)
        members = [
            f"{indent}{_key(k)}:\t{_pretty(v, depth + 1, level + 1)}" for k, v in value.items()
        ]
        return "{\n" + ",\n".join(members) + "\n" + "\t" * depth + "}"
    if type(value) in (list, tuple):
        _check_level(level)
        return "[" + ", ".join(_pretty(item, depth + 1, level + 1) for item in value) + "]"
    return _scalar(value)


def _compact(value: Any, level: int = 1) -> str:
    if type(value) is dict:
        _check_level(level)
        return "{" + ",".join(f"{_key(k)}:{_compact(v, level + 1)}" for k, v in value.items()) + "}"
    if type(value) in (list, tuple):
        _check_level(level)
        return "[" + ",".join(_compact(item, level + 1) for item in value) + "]"
    return _scalar(value)


def _check_level(level: int) -> None:
    if level > MAX_DEPTH:
        raise TooDeep
