"""How a worker reads requests and sends replies: in batches when it can.

With the native module (``_batchio.c``, compiled on first use by ``midgram.native``) one
``recvmmsg()`` reads every datagram waiting on the socket, up to :data:`SLOTS`, and
``sendmmsg()`` sends their replies a few at a time: the per-syscall cost, and the socket
module's per-call cost, are paid per batch instead of twice per request. ``NativeIO.serve``
also runs the loop over a batch in C, calling back into Python only to answer each
datagram, and ``FastAnswer`` answers the busiest kind of datagram (a call without params)
without parsing it in Python. OpenSIPS reads and answers one datagram at a time.

Without it (no C compiler or Python headers, or ``MIDGRAM_NATIVE=0`` in the environment)
the same interface reads one datagram per call with the socket module and leaves every
reply to :class:`~midgram.transport.ReplySender`: the behaviour is the same, only slower.

Either way :class:`~midgram.transport.ReplySender` stays in charge of anything unusual: a
reply the batch could not send (a full client queue, a vanished client, an unbound peer) is
handed to it, with every reply after it, so replies to one client keep their order.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from types import ModuleType
from typing import Any, Final, Protocol

from midgram.commands import Answer
from midgram.errors import BuildError, TransportError
from midgram.native import load_extension
from midgram.transport import PeerAddress, Receiver, sock_label

__all__ = ["ENV", "SLOTS", "BatchIO", "NativeIO", "SocketIO", "batch_io", "native_module"]

log = logging.getLogger(__name__)

#: Datagrams read by one recvmmsg(). Each slot is a buffer of the server's buffer size, of
#: which only the pages a datagram fills are ever resident; a batch is served before its
#: replies go out, so a larger one would delay its first reply for little gain.
SLOTS: Final = 16
#: ``MIDGRAM_NATIVE=0``: serve with the socket module only.
ENV: Final = "MIDGRAM_NATIVE"

Datagram = tuple[bytes, PeerAddress, bool]
Reply = tuple[bytes, PeerAddress]
#: What ``NativeIO.serve`` leaves to Python: ``(data, peer, truncated, handled)``.
Leftover = tuple[bytes, PeerAddress, bool, Any]
#: ``settle(data, handled)``: the reply (None: none) to a datagram whose answer is not bytes.
Settle = Callable[[bytes, Any], bytes | None]


class BatchIO(Protocol):
    """What a worker reads and replies with."""

    #: Whether recvmmsg/sendmmsg are used.
    native: bool

    @property
    def fast_answer(self) -> Callable[..., Answer] | None:
        """The native twin of ``Dispatcher.answer`` (``_batchio.FastAnswer``), if there is
        one: see ``Dispatcher.fast_answer``."""

    def recv(self, block: bool) -> list[Datagram]:
        """``(data, peer, truncated)`` for each datagram read ([] when none came): with
        ``block``, waiting up to the socket's SO_RCVTIMEO for the first one."""

    def send(self, replies: list[Reply], start: int) -> int:
        """Send ``replies[start:]`` without blocking; the index of the first one not sent,
        which the caller hands to ReplySender."""


class SocketIO:
    """One datagram per call with the socket module; replies are all ReplySender's."""

    native = False
    fast_answer: None = None

    def __init__(self, sock: socket.socket, bufsize: int) -> None:
        self._recv = Receiver(sock, bufsize).recv

    def recv(self, block: bool) -> list[Datagram]:
        item = self._recv(block)
        return [] if item is None else [item]

    def send(self, replies: list[Reply], start: int) -> int:
        return start


class NativeIO:
    """recvmmsg()/sendmmsg() on the socket's descriptor (the socket object stays the owner)."""

    native = True
    send: Callable[[list[Reply], int], int]

    def __init__(
        self,
        sock: socket.socket,
        bufsize: int,
        module: ModuleType,
        slots: int = SLOTS,
        in_hand: memoryview | None = None,
    ) -> None:
        self._sock = sock  # keeps the descriptor open as long as this object lives
        # in_hand: where serve() notes each datagram before answering it (WorkerStates).
        batch = module.BatchSocket(sock.fileno(), sock.family, slots, bufsize, in_hand)
        self._recv = batch.recv
        self.send = batch.send  # already the protocol's send: no wrapper on the hot path
        self._serve = batch.serve
        self.fast_answer: Callable[..., Answer] = module.FastAnswer

    def recv(self, block: bool) -> list[Datagram]:
        try:
            batch: list[Datagram] = self._recv(block)
        except OSError as exc:
            raise self._receive_error(exc) from exc
        return batch

    def serve(
        self, answer: Answer, block: bool, flush: int, settle: Settle | None = None
    ) -> tuple[int, int, list[Leftover] | None]:
        """Read a batch and serve its common case without a Python loop: ``answer(data)``
        for each datagram, the bytes it returns sent ``flush`` at a time back to the
        datagram's sender. What is not bytes (and a truncated datagram, with ``handled``
        None) goes to ``settle(data, handled)``, whose reply (None: none) goes out in turn.

        Returns ``(received, replied, leftovers)``: ``leftovers`` (None when there are none)
        are, in order, the replies the caller must send (``(data, peer, truncated, reply)``):
        one the kernel refused, one to an unbound client, and every reply after one refused
        (so that ReplySender keeps each client's replies in order). Without ``settle``, what
        it would have had is a leftover too, and every reply after it."""
        try:
            served: tuple[int, int, list[Leftover] | None] = self._serve(
                answer, block, flush, settle
            )
        except OSError as exc:
            raise self._receive_error(exc) from exc
        return served

    def _receive_error(self, exc: OSError) -> TransportError:
        why = exc.strerror or str(exc)
        return TransportError(f"cannot receive: {why}", sock_label(self._sock))


_module: ModuleType | None = None
_why_not: str | None = None


def native_module() -> ModuleType | None:
    """The native module, built and loaded on the first call; None (and why, logged once)
    when it cannot be. Call it before forking workers, so that they inherit it."""
    global _module, _why_not
    if _module is not None or _why_not is not None:
        return _module
    if os.environ.get(ENV, "").strip() == "0":
        _why_not = f"{ENV}=0"
    else:
        try:
            _module = load_extension("_batchio")
        except BuildError as exc:
            _why_not = str(exc)
    if _module is None:
        log.info("batched datagram I/O is off (%s): serving one datagram per syscall", _why_not)
    else:
        log.debug("batched datagram I/O (recvmmsg/sendmmsg) from %s", _module.__file__)
    return _module


def batch_io(
    sock: socket.socket, bufsize: int, *, slots: int = SLOTS, in_hand: memoryview | None = None
) -> BatchIO:
    """The best I/O this process has for ``sock`` (``in_hand``: see ``NativeIO``)."""
    module = native_module()
    if module is None:
        return SocketIO(sock, bufsize)
    return NativeIO(sock, bufsize, module, slots, in_hand)
