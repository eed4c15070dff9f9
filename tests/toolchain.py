"""What this machine has that some tests need, as skip markers that say why it is missing.

- ``needs_cc``: a C compiler, for midgram's C code (the load generator, the batch I/O
  module); ``.ci/run`` machines have gcc and Python's headers.
- ``needs_ipv6``: an IPv6 loopback (``::1``).
- ``needs_socat``: socat, the raw datagram client of the README's examples (``.ci/run``
  installs it).
"""

from __future__ import annotations

import shutil
import socket

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


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback (::1) on this host")


SOCAT = shutil.which("socat")
needs_socat = pytest.mark.skipif(
    SOCAT is None, reason="socat is not installed (.ci/run installs it with apt-get)"
)
