"""What this install and machine have that some tests need, as markers that say why not.

- ``needs_native``, ``needs_loadgen``: midgram's compiled modules (``midgram.server._batchio``,
  ``midgram.client._loadgen``), which ``pip install -e .`` builds (``make test`` does it). A test
  marked so FAILS where its module is missing (conftest.py), with the reason: an install that
  did not build them is a broken one, not a reason to test less. Only a run that declares
  itself pure Python, with ``MIDGRAM_NATIVE=0`` in its environment, skips them instead.
- ``needs_ipv6``: an IPv6 loopback (``::1``).
- ``needs_socat``: socat, the raw datagram client of the README's examples (``.ci/run``
  installs it).
"""

from __future__ import annotations

import importlib
import os
import shutil
import socket

import pytest

from midgram.compiled import why_not_loaded
from midgram.server.batchio import ENV

#: The marker conftest.py acts on: ``needs_compiled(module)``.
needs_native = pytest.mark.needs_compiled("midgram.server._batchio")
needs_loadgen = pytest.mark.needs_compiled("midgram.client._loadgen")


def missing(module: str) -> str | None:
    """Why the compiled ``module`` cannot be imported, or None when it can."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        return why_not_loaded(module, exc)
    return None


def pure_python_run() -> bool:
    """The test run was started with ``MIDGRAM_NATIVE=0``: compiled modules are not expected."""
    return os.environ.get(ENV, "").strip() == "0"


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
