"""midgram: an OpenSIPS-compatible MI datagram server, library and client.

- ``Client``, ``AsyncClient``: call MI commands of midgram, OpenSIPS or Kamailio;
- ``Registry``: your own MI commands; ``Settings``, ``serve``, ``AsyncServer``: serve them;
- the errors of ``midgram.errors``, all under ``MidgramError``: ``midgram.ClientError``,
  ``midgram.ReplyTimeout``, ``midgram.ConfigError``...

The client, the server and the engine are imported when first used, so that ``import
midgram`` stays cheap (``midgram call`` pays for the client only); the errors cost nothing and
are here at once.
"""

from __future__ import annotations

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from midgram import errors as _errors
from midgram._version import __version__
from midgram.errors import *  # noqa: F403 - the errors are public as midgram.errors.__all__ says

if _TYPE_CHECKING:
    from midgram.client.calls import AsyncClient, Client
    from midgram.config.settings import Settings
    from midgram.engine.registry import Registry
    from midgram.server.asyncserver import AsyncServer
    from midgram.server.wiring import serve

__all__ = [
    "AsyncClient",
    "AsyncServer",
    "Client",
    "Registry",
    "Settings",
    "__version__",
    "serve",
]
__all__ += _errors.__all__

# Tracebacks and reprs name an error where users reach it, as httpx does: midgram.ReplyTimeout.
for _name in _errors.__all__:
    getattr(_errors, _name).__module__ = __name__
del _name

# The names imported on first use: name -> the module that defines it.
_LAZY = {
    "AsyncClient": "midgram.client.calls",
    "Client": "midgram.client.calls",
    "AsyncServer": "midgram.server.asyncserver",
    "serve": "midgram.server.wiring",
    "Registry": "midgram.engine.registry",
    "Settings": "midgram.config.settings",
}


def __getattr__(name: str) -> _Any:
    if name in _LAZY:
        return getattr(_importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'midgram' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names, the lazy ones included (not the helpers of this module)."""
    return sorted(__all__)
