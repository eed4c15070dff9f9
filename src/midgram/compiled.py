"""The compiled modules midgram ships: built from C by ``pip install`` (setup.py), never at
run time. Each is optional: an install that could not build one runs without it, and says why.

- ``midgram.server._batchio``: batched datagram I/O for the workers (``midgram.server.batchio``);
- ``midgram.client._loadgen``: ``midgram bench``'s load generator (``midgram.client.loadtest``).
"""

from __future__ import annotations

import importlib.util

__all__ = ["why_not_loaded"]


def why_not_loaded(module: str, exc: ImportError) -> str:
    """Why ``module`` (``midgram.server._batchio``...) could not be imported (``exc``), in one line:
    not there at all (the install did not build it), or there but not loadable."""
    try:
        absent = importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        absent = False
    if absent:
        return (
            f"{module} was not built when midgram was installed: reinstall midgram with a C "
            "compiler and Python's headers present, e.g. apt-get install gcc python3-dev"
        )
    return f"{module} cannot be loaded: {exc}"
