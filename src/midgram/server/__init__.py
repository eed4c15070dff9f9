"""The server: ``serve`` (the pre-forked daemon: ``wiring``, ``supervisor``, ``worker``) and
``AsyncServer`` (inside a program's own asyncio loop), over the socket layer (``transport``,
``batchio`` and its C module, ``files``).
"""

from midgram.server.wiring import AsyncServer, serve

__all__ = ["AsyncServer", "serve"]
