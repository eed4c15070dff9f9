"""Parameter getters: how a JSON value becomes a handler's argument, as OpenSIPS's item.c
coerces it (docs/compatibility.md, "Parameter types and their errors").

A handler's annotation picks its getter (``coercer_for``): ``int`` accepts a number
(truncated toward zero) or a decimal string, ``str`` a string or a number printed as an
integer, ``bool`` OpenSIPS's ``0 n N`` / ``1 y Y``, and so on; a value it cannot take is
``InvalidParams`` with OpenSIPS's text.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final, TypeAlias

from midgram.errors import InvalidParams

__all__ = [
    "UNCHANGED",
    "Coercer",
    "coercer_for",
    "get_any",
    "get_array",
    "get_bool",
    "get_float",
    "get_int",
    "get_object",
    "get_str",
]

#: A getter: ``(value, parameter name) -> argument``, or InvalidParams naming the parameter.
Coercer: TypeAlias = Callable[[Any, str], Any]


def _bad_type(name: str) -> InvalidParams:
    return InvalidParams(f"Bad type for parameter '{name}'")


def _is_number(value: object) -> bool:
    return type(value) in (int, float)


def _valueint(value: float) -> int:
    """cJSON's valueint: truncated toward zero (Python ints need no saturation)."""
    if type(value) is int:
        return value
    if math.isnan(value) or math.isinf(value):
        raise OverflowError
    return int(value)


def _str2sint(text: str) -> int | None:
    """OpenSIPS str2sint: an optional sign then decimal digits; a lone sign is 0."""
    digits = text[1:] if text[:1] in "+-" else text
    if digits and not (digits.isascii() and digits.isdigit()):
        return None
    if not text:
        return None
    try:
        value = int(digits) if digits else 0
    except ValueError:  # beyond Python's int-string limit (4300 digits): not a number to us
        return None
    return -value if text[:1] == "-" else value


def get_int(value: Any, name: str) -> int:
    """A number (truncated) or a decimal string (``Bad type for parameter 'x'``)."""
    if _is_number(value):
        try:
            return _valueint(value)
        except OverflowError:
            raise _bad_type(name) from None
    if type(value) is str:
        parsed = _str2sint(value)
        if parsed is not None:
            return parsed
    raise _bad_type(name)


def get_str(value: Any, name: str) -> str:
    """A string, or a number printed as an integer (``1.9`` -> ``"1"``, as OpenSIPS)."""
    if type(value) is str:
        return value
    if _is_number(value):
        try:
            return str(_valueint(value))
        except OverflowError:
            raise _bad_type(name) from None
    raise _bad_type(name)


def get_float(value: Any, name: str) -> float:
    """A number, or a string holding one (Python's own float syntax, finite only)."""
    if _is_number(value):
        return float(value)
    if type(value) is str:
        try:
            number = float(value)
        except ValueError:
            raise _bad_type(name) from None
        if math.isfinite(number):
            return number
    raise _bad_type(name)


_BOOL_CHARS: Final = {"0": False, "n": False, "N": False, "1": True, "y": True, "Y": True}


def get_bool(value: Any, name: str) -> bool:
    """OpenSIPS's bool-like getter (``0 n N`` / ``1 y Y``), plus JSON true/false."""
    if type(value) is bool:
        return value
    if _is_number(value):
        return bool(value != 0)
    if type(value) is str and value in _BOOL_CHARS:
        return _BOOL_CHARS[value]
    raise _bad_type(name)


def get_array(value: Any, name: str) -> list[Any]:
    """A non-empty array (``Empty array in parameter 'x'``)."""
    if type(value) is not list:
        raise _bad_type(name)
    if not value:
        raise InvalidParams(f"Empty array in parameter '{name}'")
    return value


def get_object(value: Any, name: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise _bad_type(name)
    return value


def get_any(value: Any, name: str) -> Any:
    return value


def _array_of(item_getter: Coercer) -> Coercer:
    def get_items(value: Any, name: str) -> list[Any]:
        items = get_array(value, name)
        try:
            return [item_getter(item, name) for item in items]
        except InvalidParams:
            raise InvalidParams(f"Bad type for array item in parameter '{name}'") from None

    return get_items


_GETTERS: Final[Mapping[Any, Coercer]] = {
    int: get_int,
    str: get_str,
    float: get_float,
    bool: get_bool,
    list: get_array,
    dict: get_object,
    Any: get_any,
    object: get_any,
}


#: The type each getter hands on as it is: a value of exactly that type is the argument
#: itself, so a binder need not call the getter for it (the common call: a string for a
#: ``str`` parameter, a number for an ``int``). tests/test_commands.py holds each to it.
UNCHANGED: Final[Mapping[Coercer, type]] = MappingProxyType(
    {get_int: int, get_str: str, get_float: float, get_bool: bool, get_object: dict}
)


def coercer_for(annotation: Any) -> Coercer:
    """The getter for a handler parameter's annotation (``X | None`` means ``X``)."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        return coercer_for(args[0]) if len(args) == 1 else get_any
    if origin is list:
        item = _GETTERS.get(args[0]) if args else None
        return _array_of(item) if item in (get_int, get_str, get_float) else get_array
    if origin is dict:
        return get_object
    return _GETTERS.get(annotation, get_any)
