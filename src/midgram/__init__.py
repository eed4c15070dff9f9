"""midgram: an OpenSIPS-compatible MI datagram server, library and client."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AsyncServer",
    "Client",
    "MIError",
    "Registry",
    "Settings",
    "__version__",
    "serve",
]

# The public names, imported on first use so that `import midgram` stays cheap for the CLI.
_LAZY = {
    "AsyncClient": "midgram.client",
    "Client": "midgram.client",
    "AsyncServer": "midgram.server",
    "serve": "midgram.server",
    "Registry": "midgram.commands",
    "Settings": "midgram.config",
    "MIError": "midgram.errors",
}

if TYPE_CHECKING:
    from midgram.client import AsyncClient, Client
    from midgram.commands import Registry
    from midgram.config import Settings
    from midgram.errors import MIError
    from midgram.server import AsyncServer, serve


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'midgram' has no attribute {name!r}")
