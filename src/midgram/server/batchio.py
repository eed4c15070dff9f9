"""How a worker reads requests and sends replies: in batches when it can.

With the native module (``_batchio.c``, built at install time: ``midgram.compiled``) one
``recvmmsg()`` reads every datagram waiting on the socket, up to :data:`SLOTS`, and
``sendmmsg()`` sends their replies a few at a time: the per-syscall cost, and the socket
module's per-call cost, are paid per batch instead of twice per request. ``NativeIO.serve``
also runs the loop over a batch in C, calling back into Python only to answer each
datagram, and ``FastAnswer`` answers the busiest kinds of datagram (a call without params,
or with flat named params) without parsing it in Python. OpenSIPS reads and answers one
datagram at a time.

Without it (an install that could not build it, or ``MIDGRAM_NATIVE=0`` in the environment)
the same interface reads one datagram per call with the socket module and leaves every
reply to :class:`~midgram.server.transport.ReplySender`: the behaviour is the same, only slower.
:func:`native_status` says which it is and why; ``midgram --version`` shows it, and the
server logs it at start (a warning when off).

Either way :class:`~midgram.server.transport.ReplySender` stays in charge of anything unusual: a
reply the batch could not send (a full client queue, a vanished client, an unbound peer) is
handed to it, with every reply after it, so replies to one client keep their order.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, Protocol

from midgram._version import __version__
from midgram.compiled import why_not_loaded
from midgram.engine.access import Credentials
from midgram.engine.dispatch import Answer
from midgram.server.transport import PeerAddress, Received, Receiver, receive_error

try:
    from midgram.server import _batchio
except ImportError as exc:
    #: Why the compiled module is not there (None: it is).
    _MISSING: str | None = why_not_loaded("midgram.server._batchio", exc)
else:
    _MISSING = None

__all__ = [
    "ENV",
    "SLOTS",
    "BatchIO",
    "NativeIO",
    "NativeStatus",
    "SocketIO",
    "TraceHooks",
    "batch_io",
    "native_status",
    "version_line",
]

#: Datagrams read by one recvmmsg(). Each slot is a buffer of the server's buffer size, of
#: which only the pages a datagram fills are ever resident; a batch is served before its
#: replies go out, so a larger one would delay its first reply for little gain.
SLOTS: Final = 16
#: ``MIDGRAM_NATIVE=0``: serve with the socket module only.
ENV: Final = "MIDGRAM_NATIVE"

#: ``(data, peer, truncated, credentials)``: credentials (pid, uid, gid) when the socket
#: passes them, else None.
Datagram = Received
Reply = tuple[bytes, PeerAddress]
#: What ``NativeIO.serve`` leaves to Python: ``(data, peer, truncated, handled)``.
Leftover = tuple[bytes, PeerAddress, bool, Any]
#: ``settle(data, handled, peer, credentials)``: the reply (None: none) to a datagram whose
#: answer is not bytes, or anything else: a leftover whose reply comes later (an async call
#: in flight).
Settle = Callable[[bytes, Any, PeerAddress, Credentials | None], Any]


class TraceHooks(NamedTuple):
    """What ``NativeIO.serve_traced`` calls back, with the collector's socket."""

    #: The collector's connected UDP socket, which the packets go out on.
    fd: int
    #: ``request(method, peer, now_ns)``: the Trace of a call without params answered OK, or
    #: None (``Tracer.bare``); ``now_ns`` is ``time.time_ns()``, read in C.
    request: Callable[[str, PeerAddress, int], Any]
    #: ``reply(trace, reply, now_ns)``: the packet of a reply that went out (``Tracer.reply``).
    reply: Callable[[Any, bytes, int], bytes]
    #: ``finish(data, peer, truncated, handled)``: any other datagram, answered (``handled``
    #: None: not yet), sent and traced by the caller; whether replies may still go out here.
    finish: Callable[[bytes, PeerAddress, bool, Any], bool]
    #: ``refused(trace, reply, peer)``: a reply the loop could not send, the caller's to send
    #: and trace; whether replies may still go out here.
    refused: Callable[[Any, bytes, PeerAddress], bool]
    #: ``lost(packet)``: a packet the collector's socket refused, the caller's to retry or log.
    lost: Callable[[bytes], None]


class BatchIO(Protocol):
    """What a worker reads and replies with."""

    #: Whether recvmmsg/sendmmsg are used.
    native: bool

    @property
    def fast_answer(self) -> Callable[..., Answer] | None:
        """The native twin of ``Dispatcher.answer`` (``_batchio.FastAnswer``), if there is
        one: see ``Dispatcher.answer_function``."""

    def recv(self, block: bool) -> list[Datagram]:
        """``(data, peer, truncated, credentials)`` for each datagram read ([] when none
        came): with ``block``, waiting up to the socket's SO_RCVTIMEO for the first one."""

    def send(self, replies: list[Reply], start: int) -> int:
        """Send ``replies[start:]`` without blocking; the index of the first one not sent,
        which the caller hands to ReplySender."""


class SocketIO:
    """One datagram per call with the socket module; replies are all ReplySender's."""

    native = False
    fast_answer: None = None

    def __init__(self, sock: socket.socket, bufsize: int, *, credentials: bool = False) -> None:
        self._recv = Receiver(sock, bufsize, credentials=credentials).recv

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
        slots: int = SLOTS,
        in_hand: memoryview | None = None,
        big: int | None = None,
        *,
        credentials: bool = False,
    ) -> None:
        self._sock = sock  # keeps the descriptor open as long as this object lives
        # in_hand: where serve() notes each datagram before answering it (WorkerStates);
        # big: a longer reply is left to ReplySender (its send-buffer budget); credentials:
        # the senders' SCM_CREDENTIALS are read with each datagram.
        batch = _batchio.BatchSocket(
            sock.fileno(),
            sock.family,
            slots,
            bufsize,
            in_hand,
            sys.maxsize if big is None else big,
            credentials,
        )
        self._recv = batch.recv
        self.send = batch.send  # already the protocol's send: no wrapper on the hot path
        self._serve = batch.serve
        self._serve_traced = batch.serve_traced
        self.fast_answer: Callable[..., Answer] = _batchio.FastAnswer

    def recv(self, block: bool) -> list[Datagram]:
        try:
            batch: list[Datagram] = self._recv(block)
        except OSError as exc:
            raise receive_error(exc, self._sock) from exc
        return batch

    def serve(
        self, answer: Answer, block: bool, flush: int, settle: Settle | None = None
    ) -> tuple[int, int, list[Leftover] | None]:
        """Read a batch and serve its common case without a Python loop: ``answer(data)``
        for each datagram, the bytes it returns sent ``flush`` at a time back to the
        datagram's sender. What is not bytes (and a truncated datagram, with ``handled``
        None) goes to ``settle(data, handled, peer, credentials)``, whose reply (None: none)
        goes out in turn.

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
            raise receive_error(exc, self._sock) from exc
        return served

    def serve_traced(
        self, answer: Answer, block: bool, flush: int, hooks: TraceHooks
    ) -> tuple[int, int, int]:
        """``serve`` for a worker that traces every datagram to a HEP collector: returns
        ``(received, replied, traced)``. A call without params (what ``FastAnswer`` reads)
        answered OK is served and traced here: ``hooks.request`` gives its packet before its
        reply goes out, ``hooks.reply`` its reply's after, and the packets go out in batches
        on ``hooks.fd``. Every other datagram, a reply this could not send, and every
        datagram after a reply left waiting for its client go to ``hooks.finish`` and
        ``hooks.refused``, in order, once what is held here went out."""
        try:
            served: tuple[int, int, int] = self._serve_traced(answer, block, flush, hooks)
        except OSError as exc:
            raise receive_error(exc, self._sock) from exc
        return served


@dataclass(frozen=True)
class NativeStatus:
    """Whether this process serves with the compiled module, and why not when it does not."""

    #: Why it is off (``MIDGRAM_NATIVE=0``, or why the module could not be loaded); None: on.
    off_because: str | None

    @property
    def on(self) -> bool:
        return self.off_because is None

    def __str__(self) -> str:
        return "on" if self.off_because is None else f"off ({self.off_because})"


_status: NativeStatus | None = None


def native_status() -> NativeStatus:
    """Decided on the first call, from ``MIDGRAM_NATIVE`` and the install, and kept for the
    process's life (its workers inherit it)."""
    global _status
    if _status is None:
        if os.environ.get(ENV, "").strip() == "0":
            _status = NativeStatus(f"{ENV}=0")
        else:
            _status = NativeStatus(_MISSING)
    return _status


def version_line() -> str:
    """``midgram X.Y.Z (Python A.B.C; native I/O: on)``, or ``off (why)``: what
    ``midgram --version`` prints and the server logs at start."""
    return (
        f"midgram {__version__} (Python {platform.python_version()}; native I/O: {native_status()})"
    )


def batch_io(
    sock: socket.socket,
    bufsize: int,
    *,
    slots: int = SLOTS,
    in_hand: memoryview | None = None,
    big: int | None = None,
    credentials: bool = False,
) -> BatchIO:
    """The best I/O this process has for ``sock`` (``in_hand``, ``big``, ``credentials``:
    see ``NativeIO``)."""
    if native_status().on:
        return NativeIO(sock, bufsize, slots, in_hand, big, credentials=credentials)
    return SocketIO(sock, bufsize, credentials=credentials)
