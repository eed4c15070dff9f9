"""The server: ``serve`` (the pre-forked daemon: ``wiring``, ``supervisor``) and
``AsyncServer`` (inside a program's own asyncio loop: ``asyncserver``), both serving with the
worker's batch loop (``worker``, its ``hooks``, ``inflight``), over the socket layer
(``binding``, ``transport``, ``budget``, ``batchio`` and its C module) and the files beside
it (``files``).
"""

from midgram.server.asyncserver import AsyncServer
from midgram.server.wiring import serve

__all__ = ["AsyncServer", "serve"]
