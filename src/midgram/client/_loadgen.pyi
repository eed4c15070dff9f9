"""Types of the compiled module ``_loadgen.c`` (built at install time), midgram bench's load
generator. The docstrings are in the C source."""

from collections.abc import Sequence

def run(args: Sequence[str], /) -> str: ...
