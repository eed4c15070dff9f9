"""Write the parameter table of docs/parameters.md from midgram.config.PARAMETERS.

    .venv/bin/python tools/parameter_table.py

Run it after declaring or changing a parameter (midgram.config.settings); tests/test_readme.py
fails until the page holds the table rendered from the declarations.
"""

from __future__ import annotations

from pathlib import Path

from midgram.config.table import END_MARKER, START_MARKER, markdown_table

PAGE = Path(__file__).resolve().parents[1] / "docs" / "parameters.md"


def with_table(page: str) -> str:
    """``page`` with the text from the start marker to the end marker's line replaced."""
    start = page.index(START_MARKER.split(" ", 2)[1])
    start = page.rindex("\n", 0, start) + 1
    end = page.index("\n", page.index(END_MARKER)) + 1
    return page[:start] + markdown_table() + page[end:]


def main() -> None:
    PAGE.write_text(with_table(PAGE.read_text()))


if __name__ == "__main__":
    main()
