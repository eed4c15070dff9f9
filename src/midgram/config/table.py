"""The table of docs/parameters.md, rendered from ``PARAMETERS``. Sans-IO.

tools/parameter_table.py writes it into the page, between the markers; tests/test_readme.py
fails when the page's table is not the one rendered here.
"""

from __future__ import annotations

from typing import Final

from midgram.config.settings import PARAMETERS, Parameter

__all__ = ["END_MARKER", "START_MARKER", "markdown_table"]

#: The lines between which the table stands in docs/parameters.md.
START_MARKER: Final = (
    "<!-- parameters:start (generated from midgram.config.PARAMETERS: "
    "python tools/parameter_table.py) -->"
)
END_MARKER: Final = "<!-- parameters:end -->"

_HEADER: Final = ("parameter", "flag", "default", "from", "meaning")


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


def markdown_table() -> str:
    """The table, its markers included, one line a parameter, as the page holds it."""
    rows = [_HEADER, ("---",) * len(_HEADER), *map(_row, PARAMETERS)]
    lines = ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]
    return "\n".join([START_MARKER, *lines, END_MARKER]) + "\n"
