"""midgram: an OpenSIPS-compatible MI datagram server, library and client."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from midgram._version import __version__

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
    "AsyncClient": "midgram.client.calls",
    "Client": "midgram.client.calls",
    "AsyncServer": "midgram.server.wiring",
    "serve": "midgram.server.wiring",
    "Registry": "midgram.engine.registry",
    "Settings": "midgram.config.settings",
    "MIError": "midgram.errors",
}

if TYPE_CHECKING:
    from midgram.client.calls import AsyncClient, Client
    from midgram.config.settings import Settings
    from midgram.engine.registry import Registry
    from midgram.errors import MIError
    from midgram.server.wiring import AsyncServer, serve


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'midgram' has no attribute {name!r}")
