"""The ``midgram`` command: the only place in the package that prints or exits.

Each sub-command lives in its own module, imported only when that sub-command runs (or a
help lists them): ``midgram call`` does not load the server, and its cold start is what a
script calling it in a loop pays. That is why this module imports nothing: a plain ``midgram
call`` (``quickcall`` says which) is read and run without click, and everything else goes to
the click group (``group.cli``), the reference for every command line.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from midgram.cli.group import cli

__all__ = ["cli", "main"]

#: The variable click's completion scripts set when they ask for completions.
COMPLETE_VAR: Final = "_MIDGRAM_COMPLETE"


def main() -> None:
    if COMPLETE_VAR in os.environ:  # a TAB: answer as midgram's own scripts expect
        from midgram.cli.shells import register  # noqa: PLC0415 - only completion needs it

        register()
    else:
        from midgram.cli.quickcall import quick_call  # noqa: PLC0415 - click-free

        status = quick_call(sys.argv[1:])
        if status is not None:
            sys.exit(status)
    from midgram.cli.group import cli  # noqa: PLC0415 - click: ~15 ms

    cli(prog_name="midgram")


def __getattr__(name: str) -> Any:
    """``midgram.cli.cli``, the click group, imported when first asked for."""
    if name == "cli":
        from midgram.cli.group import cli  # noqa: PLC0415 - click, only when asked for

        return cli
    raise AttributeError(f"module 'midgram.cli' has no attribute {name!r}")
