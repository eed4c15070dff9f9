"""The compiled modules midgram ships: built from C by ``pip install`` (setup.py), never at
run time. Each is optional: an install that could not build one runs without it, and says why.

- ``midgram._batchio``: batched datagram I/O for the workers (``midgram.batchio``);
- ``midgram._loadgen``: ``midgram bench``'s load generator (``midgram.loadtest``).
"""

from __future__ import annotations

__all__ = ["why_not_loaded"]


def why_not_loaded(module: str, exc: ImportError) -> str:
    """Why ``module`` (``midgram._batchio``...) could not be imported, in one line."""
    if isinstance(exc, ModuleNotFoundError) and exc.name == module:
        return (
            f"{module} was not built when midgram was installed: reinstall it where a C "
            "compiler and Python's headers are (gcc, python3-dev)"
        )
    return f"{module} cannot be loaded: {exc}"
