"""Event notifications as event_datagram sends them, and ``raise_event``'s params. Sans-IO.

A notification is a JSON-RPC notification, one datagram a subscriber, the same bytes over UDP
and UNIX::

    {"jsonrpc":"2.0","method":"E_CALLS_HIGH"}                         (no params)
    {"jsonrpc":"2.0","method":"E_CALLS_HIGH","params":{"calls":120}}  (named)
    {"jsonrpc":"2.0","method":"E_CALLS_HIGH","params":["120"]}        (positional)

No ``id``, no spaces, no trailing newline; strings as cJSON writes them (``/`` and non-ASCII
as they are, control characters escaped). An object's members keep their order, duplicates
included, as OpenSIPS sends them: ``Members`` holds such an object.

``mi_event_params`` reads ``raise_event``'s ``params`` as OpenSIPS 3.6 does
(docs/events.md, "raise_event"), where OpenSIPS's own bugs aside (docs/compatibility.md,
differences 25 and 26). ``decode_notification`` reads a notification back, for listeners.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final, NamedTuple, TypeAlias

from midgram.errors import MIError
from midgram.wire.jsonrpc import C_INT_MAX, C_INT_MIN, MAX_DEPTH, encode_value, nesting_depth

__all__ = [
    "DEFAULT_EXPIRE",
    "MAX_EVENT_NAME",
    "EventParams",
    "Members",
    "Notice",
    "decode_notification",
    "encode_notification",
    "mi_event_params",
]

#: Seconds a subscription lasts when ``event_subscribe`` is given no ``expire``.
DEFAULT_EXPIRE: Final = 3600
#: The longest event name OpenSIPS publishes (``MAX_EVENT_NAME``).
MAX_EVENT_NAME: Final = 64


class Members(tuple[tuple[str, Any], ...]):
    """An object's members in order, a name possibly repeated (``{"a":"1","a":"2"}``)."""

    __slots__ = ()


#: A notification's params: none, an array, an object, or an object's members in order.
EventParams: TypeAlias = Sequence[Any] | Mapping[str, Any] | Members | None

_HEAD: Final = b'{"jsonrpc":"2.0","method":'


def encode_notification(event: str, params: EventParams = None) -> bytes:
    """The datagram every subscriber of ``event`` gets. ``TypeError`` for a value that is not
    JSON. An empty object or array sends no ``params`` member, as OpenSIPS does."""
    head = _HEAD + encode_value(event)
    if not params:
        return head + b"}"
    return head + b',"params":' + _encode_params(params) + b"}"


def _encode_params(params: Sequence[Any] | Mapping[str, Any] | Members) -> bytes:
    if isinstance(params, Members):
        return (
            b"{"
            + b",".join(encode_value(name) + b":" + encode_value(value) for name, value in params)
            + b"}"
        )
    if isinstance(params, Mapping):
        return encode_value(dict(params))
    if isinstance(params, str | bytes):
        raise TypeError("event params are an object or an array, not a string")
    return encode_value(list(params))


# --- raise_event's params ------------------------------------------------------------------

_BAD_PARAMS: Final = (400, "Bad Params")
_NO_PARAMS: Final = (400, "No Params")


def mi_event_params(value: Any) -> EventParams:
    """``raise_event``'s ``params``, as OpenSIPS reads them (``MIError`` 400 else):

    - an array: strings and numbers only, each sent as a string (a number as cJSON's
      ``valueint``: ``1.9`` is ``"1"``), as an array; ``[]`` sends no params;
    - a string (or a number, which OpenSIPS turns into one) holding a JSON object: its members
      in order, a string as a string, a number as ``valueint``, anything else as its JSON
      text; ``"{}"`` sends no params;
    - anything else (an object, null, true): ``400 No Params``.
    """
    if type(value) is list:
        return [_array_item(item) for item in value] or None
    if type(value) is str:
        return _json_object(value)
    if type(value) in (int, float):
        raise MIError(*_BAD_PARAMS)  # its text is a number, never an object
    raise MIError(*_NO_PARAMS)


def _array_item(item: Any) -> str:
    if type(item) is str:
        return item
    if type(item) in (int, float):
        return str(valueint(item))
    raise MIError(*_BAD_PARAMS)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _json_object(text: str) -> Members | None:
    try:
        parsed = json.loads(text, object_pairs_hook=Members, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise MIError(*_BAD_PARAMS) from None
    if not isinstance(parsed, Members):
        raise MIError(*_BAD_PARAMS)
    return Members((name, _member_value(value)) for name, value in parsed) or None


def _member_value(value: Any) -> Any:
    if type(value) is str:
        return value
    if type(value) in (int, float):
        return valueint(value)
    # What OpenSIPS means to send (its use-after-free sends garbage): the value's JSON text.
    return _json_text(value)


def _json_text(value: Any) -> str:
    if isinstance(value, Members):
        return "{" + ",".join(f"{_json_text(k)}:{_json_text(v)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_json_text(item) for item in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def valueint(number: float) -> int:
    """cJSON's ``valueint``: truncated toward zero, saturated to a C ``int``."""
    if isinstance(number, float):
        if math.isnan(number):
            return 0
        if math.isinf(number):
            return C_INT_MAX if number > 0 else C_INT_MIN
    return max(C_INT_MIN, min(C_INT_MAX, int(number)))


# --- reading a notification back ---------------------------------------------------------


class Notice(NamedTuple):
    """A notification as read back: the event's name and its params (None: none)."""

    event: str
    params: Any


# Params nested MAX_DEPTH levels, in their envelope object.
_DEEPEST: Final = MAX_DEPTH + 1


def decode_notification(data: bytes) -> Notice:
    """``ValueError`` for a datagram that is not an event notification.

    An object whose names are all empty (``{"":"a","":"b"}``: OpenSIPS 3.6 sends array params
    so, docs/compatibility.md, difference 25) is read as the array it was meant to be; any
    other repeated name keeps its last value.
    """
    # As deep as a reply may be: deeper params are not parsed (the parse, and the walk after
    # it, would recurse past Python's limit). Counting brackets first keeps it cheap.
    if data.count(b"[") + data.count(b"{") > _DEEPEST and nesting_depth(data) > _DEEPEST:
        raise ValueError(f"not parsed: nested deeper than {MAX_DEPTH} levels")
    try:
        body = json.loads(data.decode("utf-8", "replace"), object_pairs_hook=Members)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(body, Members):
        raise ValueError("not a JSON object")
    members = dict(body)
    if members.get("jsonrpc") != "2.0" or type(members.get("method")) is not str:
        raise ValueError("not a JSON-RPC notification (jsonrpc 2.0 and a method)")
    if "id" in members:
        raise ValueError("a request (it has an id), not a notification")
    return Notice(members["method"], _plain(members.get("params")))


def _plain(value: Any) -> Any:
    """Members as dicts, all the way down; all-empty names as an array."""
    if isinstance(value, Members):
        if value and all(name == "" for name, _ in value):
            return [_plain(item) for _, item in value]
        return {name: _plain(item) for name, item in value}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value
