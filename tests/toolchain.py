"""Whether this machine can build midgram's C code (the load generator, the batch I/O module).

``.ci/run`` machines have gcc and Python's headers; elsewhere the tests that need them skip,
saying why.
"""

from __future__ import annotations

import pytest

from midgram import native
from midgram.errors import BuildError


def _no_compiler() -> str | None:
    try:
        native.compiler()
    except BuildError as exc:
        return str(exc)
    return None


NO_COMPILER = _no_compiler()
needs_cc = pytest.mark.skipif(NO_COMPILER is not None, reason=NO_COMPILER or "")
