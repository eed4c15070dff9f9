"""How ``midgram call METHOD [ARGS...]`` turns words into JSON-RPC params (httpie's rule).

::

    name=text      named, the value is the string "text"
    name:=JSON     named, the value is JSON: limit:=5  on:=true  stats:='["core:"]'
    name[]=text    named, an array: statistics[]=all  (name[]:=JSON adds a JSON value)
    :=JSON         positional, JSON:        :=5  :='{"a":1}'
    word           positional, the string "word"

A name given more than once, or written ``name[]``, is an array of its values in the order
given: ``statistics=core: statistics=shmem:`` is ``{"statistics": ["core:", "shmem:"]}``.
The server says nothing about types (``which`` lists names), so this rule is the client's
and never a guess: one ``name=text`` is always a string.

A name is a letter or ``_`` followed by letters, digits, ``_``, ``-`` or ``.``; anything
else with an ``=`` in it (``sip:alice@example.com;transport=udp``) is a positional string.
To send a positional string that looks like ``name=value``, write it as JSON:
``:='"a=b"'``. Named and positional params cannot be mixed in one request.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Final

from midgram.wire.jsonrpc import Params

__all__ = ["PARAMS_HELP", "ParamsError", "parse_json_params", "parse_words"]

PARAMS_HELP: Final = (
    "name=text: a named string; name:=JSON: a named JSON value (limit:=5, "
    "stats:='[\"core:\"]'); name[]=text, or a name given more than once: an array "
    "(statistics[]=all); :=JSON: a positional JSON value; any other word: a positional "
    "string. Named and positional params cannot be mixed."
)

_NAMED_RE: Final = re.compile(r"([A-Za-z_][A-Za-z0-9_.-]*)(\[\])?(:?=)(.*)", re.DOTALL)
_JSON_PREFIX: Final = ":="


class ParamsError(ValueError):
    """Words that do not make valid params; the message says which word and why."""


def _json(word: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ParamsError(f"{word!r}: not valid JSON after ':=' ({exc})") from None


def _parse_word(word: str) -> tuple[str | None, bool, Any]:
    """(name or None for positional, whether it is written ``name[]``, value)."""
    if word.startswith(_JSON_PREFIX):
        return None, False, _json(word, word[len(_JSON_PREFIX) :])
    match = _NAMED_RE.fullmatch(word)
    if match is None:
        return None, False, word
    name, brackets, operator, value = match.groups()
    return name, bool(brackets), (_json(word, value) if operator == _JSON_PREFIX else value)


def parse_words(words: Sequence[str]) -> Params:
    """The params the words spell, or None for no words; ``ParamsError`` if they clash."""
    values: dict[str, list[Any]] = {}
    arrays: set[str] = set()
    positional: list[Any] = []
    for word in words:
        name, brackets, value = _parse_word(word)
        if name is None:
            positional.append(value)
            continue
        values.setdefault(name, []).append(value)
        if brackets or len(values[name]) > 1:
            arrays.add(name)
    if values and positional:
        raise ParamsError(
            "named (name=value) and positional params cannot be mixed in one request; "
            f"positional: {positional!r}, named: {sorted(values)!r}"
        )
    named = {name: found if name in arrays else found[0] for name, found in values.items()}
    return named or positional or None


def parse_json_params(text: str) -> Params:
    """``-j/--json``: a JSON array or object of params."""
    try:
        params = json.loads(text)
    except ValueError as exc:
        raise ParamsError(f"--json: not valid JSON ({exc})") from None
    if not isinstance(params, list | dict):
        raise ParamsError(f"--json: params must be a JSON array or object, not {text!r}")
    return params or None
