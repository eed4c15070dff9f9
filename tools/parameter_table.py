"""Write the parameter tables of docs/ (parameters.md, tracing.md) from
midgram.config.PARAMETERS.

    .venv/bin/python tools/parameter_table.py

Run it after declaring or changing a parameter (midgram.config.settings); tests/test_readme.py
fails until the pages hold the tables rendered from the declarations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from midgram.config.table import END_MARKER, PAGES, markdown_table

DOCS = Path(__file__).resolve().parents[1] / "docs"
#: What every start marker begins with, whatever it says after.
_START: Final = "<!-- parameters:start"


def with_table(text: str, page: str) -> str:
    """``text`` with the lines from the start marker to the end marker replaced."""
    start = text.index(_START)
    end = text.index("\n", text.index(END_MARKER, start)) + 1
    return text[:start] + markdown_table(page) + text[end:]


def main() -> None:
    for page in PAGES:
        path = DOCS / page
        path.write_text(with_table(path.read_text(), page))


if __name__ == "__main__":
    main()
