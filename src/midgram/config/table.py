"""The parameter tables of the docs, rendered from ``PARAMETERS``. Sans-IO.

docs/parameters.md has every parameter; docs/tracing.md those of tracing. Each table stands
between two marker lines; tools/parameter_table.py writes them, and tests/test_readme.py
fails when a page's table is not the one rendered here.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from midgram.config.settings import PARAMETERS, Origin, Parameter

__all__ = ["END_MARKER", "PAGES", "TRACING_PARAMETERS", "markdown_table", "start_marker"]

#: The line after a table.
END_MARKER: Final = "<!-- parameters:end -->"

#: Those that say whether, where and how commands are traced.
TRACING_PARAMETERS: Final = tuple(
    p for p in PARAMETERS if p.name.startswith("trace_") or p.origin is Origin.PROTO_HEP
)
#: Each page under docs/ with a table, and the parameters in it.
PAGES: Final[Mapping[str, tuple[Parameter, ...]]] = MappingProxyType(
    {"parameters.md": PARAMETERS, "tracing.md": TRACING_PARAMETERS}
)

_HEADER: Final = ("parameter", "flag", "default", "from", "meaning")


def start_marker(page: str) -> str:
    """The line before the table of ``page`` (a name in ``PAGES``)."""
    return (
        f"<!-- parameters:start (generated for {page} from midgram.config.PARAMETERS: "
        "python tools/parameter_table.py) -->"
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{text}`"


def _row(parameter: Parameter) -> tuple[str, ...]:
    flags = [*parameter.flags]
    if parameter.off_flag is not None:
        flags.append(parameter.off_flag)
    meaning = parameter.description
    if parameter.flag_note is not None:
        meaning += f" (flag: {parameter.flag_note})"
    return (
        _code(parameter.name),
        ", ".join(map(_code, flags)),
        parameter.shown_default,
        parameter.origin.value,
        meaning,
    )


def markdown_table(page: str) -> str:
    """The table of ``page``, its marker lines included, one line a parameter."""
    rows = [_HEADER, ("---",) * len(_HEADER), *map(_row, PAGES[page])]
    lines = ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]
    return "\n".join([start_marker(page), *lines, END_MARKER]) + "\n"
