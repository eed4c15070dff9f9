"""How the CLI shows a result: ``json``, ``pretty``, ``yaml``, ``lines``, ``table``, ``raw``.

Each renderer takes a JSON value and returns text without a trailing newline. ``raw`` is the
reply datagram itself and is handled by the caller, which has the bytes (``raw_text``).

A server's strings never reach the terminal raw: an escape sequence in a result would drive
the terminal of whoever reads it. ``json`` and ``pretty`` write every character that is not
printable (DEL, the C1 controls, bidi marks; JSON itself escapes the C0 controls) as a
``\\uXXXX`` escape, which is the same JSON; ``yaml`` escapes them itself; ``lines`` and
``table`` write them as Python escapes (``\\x1b``), as ``midgram.logs.printable`` does, and
so do error messages. ``raw`` writes the reply's exact bytes to a pipe or a file, and on a
terminal escapes them but newlines and tabs.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, Final

import orjson

from midgram.logs import printable

__all__ = ["FORMATS", "auto_format", "raw_text", "render", "use_colour", "yaml_missing"]

FORMATS: Final = ("json", "pretty", "yaml", "lines", "table", "raw")
_INDENT: Final = "  "


def auto_format(explicit: str | None, *, tty: bool) -> str:
    """``--format`` when given; else ``pretty`` on a terminal and compact ``json`` in a pipe."""
    if explicit is not None:
        return explicit
    return "pretty" if tty else "json"


def use_colour(tty: bool) -> bool:
    """Colour on a terminal, unless NO_COLOR is set (no-color.org)."""
    return tty and not os.environ.get("NO_COLOR")


def yaml_missing() -> str | None:
    """Why ``--format yaml`` cannot work here, or None when PyYAML is installed."""
    if importlib.util.find_spec("yaml") is None:
        return "--format yaml needs PyYAML: pip install 'midgram[yaml]' (or pyyaml)"
    return None


def raw_text(reply: bytes, *, tty: bool) -> bytes | str:
    """``--format raw``: the reply's exact bytes, or on a terminal the text with what is
    not printable escaped (newlines and tabs kept: a pretty-printed reply stays readable)."""
    if not tty:
        return reply
    return printable(reply.decode(errors="backslashreplace"), keep="\n\t")


def _scalar(value: Any) -> str:
    """A leaf as text: strings bare, everything else as JSON; nothing unprintable."""
    return printable(value) if isinstance(value, str) else _compact(value)


def _json_text(text: str) -> str:
    """JSON text with what is not printable in its strings written as ``\\uXXXX`` (the same
    JSON value); the newlines of the layout stay."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == "\n" else _json_escape(c) for c in text)


def _json_escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000  # beyond the BMP: a surrogate pair, as JSON writes it
    return f"\\u{0xD800 | code >> 10:04x}\\u{0xDC00 | code & 0x3FF:04x}"


def _compact(value: Any) -> str:
    try:
        text = orjson.dumps(value).decode()
    except TypeError:  # integers beyond 64 bits
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return _json_text(text)


def _json(value: Any, colour: bool) -> str:
    return _compact(value)


# --- pretty ---------------------------------------------------------------------------------

_STYLES: Final[Mapping[type, dict[str, Any]]] = MappingProxyType(
    {
        str: {"fg": "green"},
        int: {"fg": "cyan"},
        float: {"fg": "cyan"},
        bool: {"fg": "magenta"},
        type(None): {"fg": "magenta"},
    }
)


def _style(text: str, **styles: Any) -> str:
    """``click.style``: click is imported by the first coloured output only (a terminal), not
    by a ``midgram call`` in a pipe (``quickcall``)."""
    import click  # noqa: PLC0415

    return click.style(text, **styles)


def _pretty(value: Any, colour: bool) -> str:
    if not colour:
        return _json_text(json.dumps(value, indent=2, ensure_ascii=False))
    return "".join(_coloured(value, 0))


def _coloured(value: Any, depth: int) -> Iterator[str]:
    pad, inner = _INDENT * depth, _INDENT * (depth + 1)
    if isinstance(value, dict) and value:
        yield "{\n"
        for index, (key, item) in enumerate(value.items()):
            key_text = _json_text(json.dumps(key, ensure_ascii=False))
            yield inner + _style(key_text, fg="blue", bold=True)
            yield ": "
            yield from _coloured(item, depth + 1)
            yield ",\n" if index < len(value) - 1 else "\n"
        yield pad + "}"
    elif isinstance(value, list) and value:
        yield "[\n"
        for index, item in enumerate(value):
            yield inner
            yield from _coloured(item, depth + 1)
            yield ",\n" if index < len(value) - 1 else "\n"
        yield pad + "]"
    else:
        text = _json_text(json.dumps(value, ensure_ascii=False))
        style = _STYLES.get(type(value))
        yield _style(text, **style) if style else text


# --- yaml -----------------------------------------------------------------------------------


def _yaml(value: Any, colour: bool) -> str:
    # Optional, and 20 ms to import: loaded only for --format yaml.
    yaml = importlib.import_module("yaml")

    # safe_dump: plain dicts and lists only, never python/object tags (opensips-cli's bug).
    text: str = yaml.safe_dump(value, sort_keys=False, allow_unicode=True, width=1_000_000)
    return text.removesuffix("\n...\n").rstrip("\n")


# --- lines ----------------------------------------------------------------------------------


def _flatten(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            name = printable(str(key))
            yield from _flatten(item, f"{path}.{name}" if path else name)
    elif isinstance(value, list) and value:
        for index, item in enumerate(value):
            yield from _flatten(item, f"{path}[{index}]")
    else:
        yield path, value


def _lines(value: Any, colour: bool) -> str:
    """One ``path: value`` per leaf (grep-able); a list of scalars is one value per line."""
    if isinstance(value, list) and not any(isinstance(item, dict | list) for item in value):
        return "\n".join(_scalar(item) for item in value)
    if not isinstance(value, dict | list):
        return _scalar(value)
    return "\n".join(f"{path}: {_scalar(leaf)}" for path, leaf in _flatten(value, ""))


# --- table ----------------------------------------------------------------------------------


def _rows_of(value: Any) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows: a list of objects, ``{"Name": [objects]}`` (as ``ps`` returns),
    an object (name and value columns), or a list of values (one column)."""
    if isinstance(value, dict) and len(value) == 1:
        (only,) = value.values()
        if _is_records(only):
            return _rows_of(only)
    if _is_records(value):
        columns: dict[str, None] = {}
        for record in value:
            columns.update(dict.fromkeys(record))
        return list(columns), [[record.get(name, "") for name in columns] for record in value]
    if isinstance(value, dict):
        return ["name", "value"], [[key, item] for key, item in value.items()]
    if isinstance(value, list):
        return ["value"], [[item] for item in value]
    return ["value"], [[value]]


def _is_records(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(r, dict) for r in value)


def _table(value: Any, colour: bool) -> str:
    columns, rows = _rows_of(value)
    columns = [printable(str(name)) for name in columns]
    cells = [[_scalar(cell) for cell in row] for row in rows]
    widths = [max(len(text) for text in column) for column in zip(columns, *cells, strict=True)]
    rule = "  ".join("-" * width for width in widths)
    header = "  ".join(name.ljust(width) for name, width in zip(columns, widths, strict=True))
    if colour:
        header = _style(header, bold=True)
    body = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in [header, rule, *body])


_RENDERERS: Final[Mapping[str, Callable[[Any, bool], str]]] = MappingProxyType(
    {"json": _json, "pretty": _pretty, "yaml": _yaml, "lines": _lines, "table": _table}
)


def render(value: Any, fmt: str, *, colour: bool = False) -> str:
    """``value`` in format ``fmt`` (any of ``FORMATS`` but ``raw``)."""
    return _RENDERERS[fmt](value, colour)
