"""The native batch loop: ``BatchSocket.serve`` (``_batchio.c``) and the worker around it.

``serve(answer, block, flush)`` reads a batch with one recvmmsg(), calls ``answer`` on each
datagram in C and sends the bytes it returns to that datagram's own source, ``flush`` replies
per sendmmsg(); what it cannot finish (a truncated datagram, an answer that is not bytes, an
unbound client, a reply the kernel refused and every later one) comes back as leftovers, in
order. These tests drive it on real bound sockets with answers written here, then drive
``Worker.serve_once`` (which uses it when nothing needs each datagram in Python) against
``Dispatcher.handle`` and against the Python loop, for replies and statistics alike.

Nothing sleeps to synchronise: a UNIX datagram is in the receiver's queue when sendto() or
sendmmsg() returns, and anything else is awaited with select() and a deadline.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import os
import socket
import sys
import time
import tracemalloc
from collections.abc import Callable
from types import ModuleType
from typing import Any

import orjson
import pytest
from datagrams import DEADLINE, Sockets, drain, drain_junk, fill_queue, receive, reply_ids, request
from interrupts import check_signals_interrupt
from toolchain import needs_ipv6, needs_native

from midgram.engine.builtins import with_builtins
from midgram.engine.dispatch import Dispatcher, Outcome, Pending, Status
from midgram.engine.registry import Registry
from midgram.engine.runtime import LocalRuntime
from midgram.errors import MIError, TransportError
from midgram.server.batchio import Answer, BatchIO, Leftover, NativeIO, Settle, SocketIO
from midgram.server.binding import set_recv_timeout
from midgram.server.hooks import Admission, allow_from
from midgram.server.worker import ServerStats, Worker

Served = tuple[int, int, list[Leftover] | None]


def echo(data: bytes) -> bytes:
    """An answer: every datagram gets ``re:`` and itself back."""
    return b"re:" + data


class Recorder:
    """An answer that records what it was called with and answers with ``rule(data)``."""

    def __init__(self, rule: Callable[[bytes], Any] = echo) -> None:
        self.rule = rule
        self.calls: list[bytes] = []

    def __call__(self, data: bytes) -> Any:
        self.calls.append(data)
        return self.rule(data)


def peer_of(sock: socket.socket) -> Any:
    """The peer the server sees for ``sock`` (None for an unbound UNIX client)."""
    return sock.getsockname() or None


def serve_all(batch: Any, answer: Answer, flush: int, count: int) -> tuple[list[int], Served]:
    """``count`` datagrams through ``batch.serve`` (blocking), however many calls that takes:
    the size of each batch and the summed result."""
    sizes: list[int] = []
    replied = 0
    leftovers: list[Leftover] = []
    deadline = time.monotonic() + DEADLINE
    while sum(sizes) < count and time.monotonic() < deadline:
        got, sent, left = batch.serve(answer, True, flush)
        if got:
            sizes.append(got)
        replied += sent
        leftovers += left or []
    assert sum(sizes) == count
    return sizes, (count, replied, leftovers or None)


# --- 1. replies go back to each datagram's own source, flush at a time -------------------------

SERVE_KINDS = ["unix", "udp4", pytest.param("udp6", marks=needs_ipv6)]


def _serve_clients(sockets: Sockets, kind: str) -> list[socket.socket]:
    if kind == "unix":  # a path, an abstract name, an autobound name
        return [sockets.unix("a"), sockets.abstract(), sockets.unix(b"")]
    host = "127.0.0.1" if kind == "udp4" else "::1"
    return [sockets.udp(host) for _ in range(3)]


@needs_native
@pytest.mark.parametrize("flush", [1, 2, "slots"])
@pytest.mark.parametrize("kind", SERVE_KINDS)
def test_serve_replies_to_each_datagrams_own_source_in_order(
    native: ModuleType, sockets: Sockets, kind: str, flush: int | str
) -> None:
    server = sockets.server(kind)
    clients = _serve_clients(sockets, kind)
    slots = 8
    batch = native.BatchSocket(server.fileno(), server.family, slots, 64)
    flush_n = slots if flush == "slots" else int(flush)
    # fewer than net.unix.max_dgram_qlen: no sendto() blocks
    plan = [clients[n] for n in (0, 1, 0, 2, 2, 1, 0, 1)]
    sent = [b"%d:from-%d" % (n, clients.index(c)) for n, c in enumerate(plan)]
    for client, data in zip(plan, sent, strict=True):
        client.sendto(data, server.getsockname())
    answer = Recorder()

    if kind == "unix":  # the whole queue in one recvmmsg()
        served = batch.serve(answer, True, flush_n)
        sizes = [served[0]]
    else:
        sizes, served = serve_all(batch, answer, flush_n, len(sent))

    assert served == (len(sent), len(sent), None)
    assert sum(sizes) == len(sent)
    assert answer.calls == sent
    for client in clients:
        mine = [b"re:" + data for data, by in zip(sent, plan, strict=True) if by is client]
        assert receive(client, len(mine)) == mine
        assert drain(client) == []
    assert batch.serve(answer, False, flush_n) == (0, 0, None)


@needs_native
def test_serve_takes_at_most_slots_datagrams_per_call(native: ModuleType, sockets: Sockets) -> None:
    server = sockets.server()
    client = sockets.unix("client")
    batch = native.BatchSocket(server.fileno(), server.family, 4, 64)
    sent = [b"q%d" % n for n in range(9)]
    for data in sent:
        client.sendto(data, server.getsockname())
    answer = Recorder()
    results = [batch.serve(answer, False, 3) for _ in range(4)]
    assert results == [(4, 4, None), (4, 4, None), (1, 1, None), (0, 0, None)]
    assert answer.calls == sent
    assert drain(client) == [b"re:" + data for data in sent]


@needs_native
def test_serve_sends_a_reply_of_any_size_the_socket_takes(
    native: ModuleType, sockets: Sockets
) -> None:
    # The reply is the answer's bytes as they are: empty, or far larger than bufsize.
    server = sockets.server()
    client = sockets.unix("client")
    batch = native.BatchSocket(server.fileno(), server.family, 4, 16)
    replies = {b"empty": b"", b"big": bytes(range(256)) * 200}
    for data in replies:
        client.sendto(data, server.getsockname())
    assert batch.serve(replies.__getitem__, True, 4) == (2, 2, None)
    assert drain(client) == list(replies.values())


# --- 2. leftovers: in order, with the right shape ------------------------------------------


@needs_native
@pytest.mark.parametrize("kind", ["unix", "udp4"])
def test_a_truncated_datagram_is_a_leftover_and_not_answered(
    native: ModuleType, sockets: Sockets, kind: str
) -> None:
    server = sockets.server(kind)
    client = sockets.unix("client") if kind == "unix" else sockets.udp()
    batch = native.BatchSocket(server.fileno(), server.family, 8, 16)
    sent = [b"first", b"y" * 17, b"x" * 16, bytes(range(100)), b"last"]
    for data in sent:
        client.sendto(data, server.getsockname())
    answer = Recorder()
    _, served = serve_all(batch, answer, 8, len(sent))
    peer = client.getsockname()
    # Without settle, what follows the first truncated datagram is the caller's too.
    assert served == (
        5,
        1,
        [
            (b"y" * 16, peer, True, None),
            (b"x" * 16, peer, False, b"re:" + b"x" * 16),
            (bytes(range(16)), peer, True, None),
            (b"last", peer, False, b"re:last"),
        ],
    )
    assert answer.calls == [b"first", b"x" * 16, b"last"]  # exactly bufsize: whole
    assert receive(client, 1) == [b"re:first"]


class Odd:
    """What an answer gives when it is not a reply (an Outcome, a Pending)."""


class BytesKind(bytes):
    """A bytes subclass: not exactly bytes, so not sent by C."""


NOT_BYTES: list[Any] = [
    Odd(),
    None,
    Outcome(b"an outcome's reply", Status.PARSE_ERROR),
    bytearray(b"bytearray"),
    BytesKind(b"subclass"),
    "str",
    0,
]


@needs_native
@pytest.mark.parametrize("flush", [1, 2, 8])
@pytest.mark.parametrize("odd", NOT_BYTES, ids=lambda odd: type(odd).__name__)
def test_without_settle_an_answer_that_is_not_bytes_and_all_after_it_are_leftovers(
    native: ModuleType, sockets: Sockets, odd: Any, flush: int
) -> None:
    server = sockets.server()
    a, b = sockets.unix("a"), sockets.abstract()
    batch = native.BatchSocket(server.fileno(), server.family, 8, 64)
    plan = [(a, b"0"), (b, b"1"), (a, b"2"), (b, b"odd"), (a, b"4"), (b, b"5")]
    for client, data in plan:
        client.sendto(data, server.getsockname())
    # What each client had received when the datagram after the odd one was answered.
    seen_then: dict[str, list[bytes]] = {}

    def rule(data: bytes) -> Any:
        if data == b"odd":
            return odd
        if data == b"4":
            seen_then["a"], seen_then["b"] = drain(a), drain(b)
        return b"re:" + data

    answer = Recorder(rule)
    received, replied, leftovers = batch.serve(answer, True, flush)

    assert (received, replied) == (6, 3)
    # The odd one is the caller's, and so is every reply after it: each client's replies
    # keep their order.
    assert leftovers == [
        (b"odd", b.getsockname(), False, odd),
        (b"4", a.getsockname(), False, b"re:4"),
        (b"5", b.getsockname(), False, b"re:5"),
    ]
    assert leftovers[0][3] is odd
    assert answer.calls == [data for _, data in plan]
    # The replies before the odd one were out before the caller got the odd one back ...
    assert seen_then == {"a": [b"re:0", b"re:2"], "b": [b"re:1"]}
    # ... and none after it.
    assert drain(a) == []
    assert drain(b) == []


@needs_native
@pytest.mark.parametrize("flush", [1, 2, 8])
def test_settle_answers_what_is_not_bytes_in_order(
    native: ModuleType, sockets: Sockets, flush: int
) -> None:
    server = sockets.server()
    a, b = sockets.unix("a"), sockets.abstract()
    batch = native.BatchSocket(server.fileno(), server.family, 8, 6)
    plan = [(a, b"0"), (b, b"odd"), (a, b"too long"), (b, b"3"), (a, b"quiet"), (a, b"5")]
    for client, data in plan:
        client.sendto(data, server.getsockname())
    odd = Odd()
    settled: list[tuple[bytes, Any, Any, Any]] = []

    def answer(data: bytes) -> Any:
        return odd if data in (b"odd", b"quiet") else b"re:" + data

    def settle(data: bytes, handled: Any, peer: Any, credentials: Any) -> bytes | None:
        settled.append((data, handled, peer, credentials))
        if data == b"quiet":
            return None  # no reply, like a notification
        return b"settled:" + data

    received, replied, leftovers = batch.serve(answer, True, flush, settle)
    assert (received, replied, leftovers) == (6, 5, None)
    # Each with its sender (no credentials: the socket was not made to read them).
    assert settled == [
        (b"odd", odd, peer_of(b), None),
        (b"too lo", None, peer_of(a), None),
        (b"quiet", odd, peer_of(a), None),
    ]
    assert drain(a) == [b"re:0", b"settled:too lo", b"re:5"]
    assert drain(b) == [b"settled:odd", b"re:3"]


@needs_native
def test_what_settle_defers_is_a_leftover_that_holds_nothing_back(
    native: ModuleType, sockets: Sockets
) -> None:
    """An async call in flight: its reply comes later; the others go now, in order."""
    server = sockets.server()
    a = sockets.unix("a")
    batch = native.BatchSocket(server.fileno(), server.family, 8, 64)
    for data in (b"0", b"odd", b"2"):
        a.sendto(data, server.getsockname())
    received, replied, leftovers = batch.serve(
        lambda data: None if data == b"odd" else b"re:" + data, True, 8, lambda *_: "later"
    )
    assert (received, replied) == (3, 2)
    assert leftovers == [(b"odd", peer_of(a), False, "later")]
    assert drain(a) == [b"re:0", b"re:2"]


@needs_native
@pytest.mark.parametrize("flush", [1, 3])
def test_a_reply_to_an_unbound_client_is_a_leftover(
    native: ModuleType, sockets: Sockets, flush: int
) -> None:
    server = sockets.server()
    bound, unbound = sockets.unix("bound"), sockets.unix()
    batch = native.BatchSocket(server.fileno(), server.family, 8, 64)
    plan = [(bound, b"0"), (unbound, b"1"), (bound, b"2"), (unbound, b"3"), (bound, b"4")]
    for client, data in plan:
        client.sendto(data, server.getsockname())
    received, replied, leftovers = batch.serve(Recorder(), True, flush)
    assert (received, replied) == (5, 3)
    assert leftovers == [(b"1", None, False, b"re:1"), (b"3", None, False, b"re:3")]
    assert drain(bound) == [b"re:0", b"re:2", b"re:4"]
    assert drain(unbound) == []


@needs_native
@pytest.mark.parametrize("flush", [1, 2, 8])
def test_a_reply_longer_than_big_and_every_later_one_are_leftovers(
    native: ModuleType, sockets: Sockets, flush: int
) -> None:
    """Longer replies are weighed against the send buffer by ReplySender (midgram.server.budget):
    the C loop leaves them, and what follows them, to it."""
    server = sockets.server()
    client = sockets.unix("client")
    batch = native.BatchSocket(server.fileno(), server.family, 8, 64, None, 6)
    for data in (b"0", b"long", b"2"):
        client.sendto(data, server.getsockname())
    received, replied, leftovers = batch.serve(Recorder(), True, flush)
    assert (received, replied) == (3, 1)
    peer = peer_of(client)
    assert leftovers == [(b"long", peer, False, b"re:long"), (b"2", peer, False, b"re:2")]
    assert drain(client) == [b"re:0"]
    assert batch.send([(b"short", peer), (b"longest", peer)], 0) == 1
    assert drain(client) == [b"short"]


@needs_native
@pytest.mark.parametrize("flush", [1, 2, 8])
def test_a_full_client_queue_makes_its_reply_and_every_later_one_a_leftover(
    native: ModuleType, sockets: Sockets, flush: int
) -> None:
    server = sockets.server()
    full, fine = sockets.unix("full"), sockets.abstract()
    junk = fill_queue(sockets, full.getsockname())  # `full` never reads: its queue is full
    batch = native.BatchSocket(server.fileno(), server.family, 8, 64)
    plan = [(fine, b"0"), (fine, b"1"), (full, b"2"), (fine, b"3"), (full, b"4"), (fine, b"5")]
    for client, data in plan:
        client.sendto(data, server.getsockname())
    answer = Recorder()

    received, replied, leftovers = batch.serve(answer, True, flush)  # must not raise EAGAIN

    assert (received, replied) == (6, 2)
    assert answer.calls == [data for _, data in plan]  # every datagram still answered
    assert leftovers == [(data, peer_of(client), False, b"re:" + data) for client, data in plan[2:]]
    assert drain(fine) == [b"re:0", b"re:1"]  # the ones before the refused one went
    # The caller (ReplySender in a worker) can finish them, in order.
    drain_junk(full, junk)
    rest = [(reply, peer) for _, peer, _, reply in leftovers]
    assert batch.send(rest, 0) == len(rest)
    assert drain(full) == [b"re:2", b"re:4"]
    assert drain(fine) == [b"re:3", b"re:5"]


@needs_native
@pytest.mark.parametrize("how", ["file_removed", "socket_closed"])
@pytest.mark.parametrize("flush", [1, 8])
def test_a_vanished_client_makes_its_reply_and_every_later_one_a_leftover(
    native: ModuleType, sockets: Sockets, how: str, flush: int
) -> None:
    server = sockets.server()
    here, gone = sockets.unix("here"), sockets.unix("gone")
    batch = native.BatchSocket(server.fileno(), server.family, 8, 64)
    gone_peer = gone.getsockname()
    plan = [(here, b"0"), (gone, b"1"), (here, b"2"), (here, b"3")]
    for client, data in plan:
        client.sendto(data, server.getsockname())
    if how == "file_removed":
        os.unlink(gone_peer)  # ENOENT
    else:
        gone.close()  # the file stays: ECONNREFUSED
    received, replied, leftovers = batch.serve(Recorder(), True, flush)
    assert (received, replied) == (4, 1)
    assert leftovers == [
        (b"1", gone_peer, False, b"re:1"),
        (b"2", here.getsockname(), False, b"re:2"),
        (b"3", here.getsockname(), False, b"re:3"),
    ]
    assert drain(here) == [b"re:0"]


@needs_native
def test_leftovers_of_every_kind_come_in_datagram_order(
    native: ModuleType, sockets: Sockets
) -> None:
    server = sockets.server()
    a, unbound, full = sockets.unix("a"), sockets.unix(), sockets.unix("full")
    fill_queue(sockets, full.getsockname())
    batch = native.BatchSocket(server.fileno(), server.family, 16, 8)
    odd = Odd()
    plan = [
        (a, b"0"),
        (a, b"too long!"),  # truncated
        (unbound, b"2"),  # unbound: a leftover with its reply
        (a, b"odd"),  # not bytes
        (a, b"4"),
        (full, b"5"),  # refused: from here on, every reply is a leftover
        (a, b"6"),
        (a, b"odd"),
        (a, b"longer still"),
        (a, b"9"),
    ]
    for client, data in plan:
        client.sendto(data, server.getsockname())
    answer = Recorder(lambda data: odd if data == b"odd" else b"re:" + data)
    received, replied, leftovers = batch.serve(answer, True, 2)
    a_peer, full_peer = a.getsockname(), full.getsockname()
    # After the truncated datagram (the caller's), every reply is the caller's too.
    assert (received, replied) == (10, 1)
    assert leftovers == [
        (b"too long", a_peer, True, None),
        (b"2", None, False, b"re:2"),
        (b"odd", a_peer, False, odd),
        (b"4", a_peer, False, b"re:4"),
        (b"5", full_peer, False, b"re:5"),
        (b"6", a_peer, False, b"re:6"),
        (b"odd", a_peer, False, odd),
        (b"longer s", a_peer, True, None),
        (b"9", a_peer, False, b"re:9"),
    ]
    assert drain(a) == [b"re:0"]


# --- 3. an answer that raises -----------------------------------------------------------


class Boom(Exception):
    pass


@needs_native
@pytest.mark.parametrize("flush", [1, 2, 8])
def test_an_answer_that_raises_propagates_after_the_queued_replies_went(
    native: ModuleType, sockets: Sockets, flush: int
) -> None:
    server = sockets.server()
    a, b = sockets.unix("a"), sockets.abstract()
    batch = native.BatchSocket(server.fileno(), server.family, 8, 64)
    plan = [(a, b"0"), (b, b"1"), (a, b"2"), (b, b"boom"), (a, b"4")]
    for client, data in plan:
        client.sendto(data, server.getsockname())
    boom = Boom("from answer")

    def rule(data: bytes) -> bytes:
        if data == b"boom":
            raise boom
        return b"re:" + data

    answer = Recorder(rule)
    with pytest.raises(Boom) as raised:
        batch.serve(answer, True, flush)
    assert raised.value is boom
    assert answer.calls == [b"0", b"1", b"2", b"boom"]  # nothing is answered after it
    assert drain(a) == [b"re:0", b"re:2"]
    assert drain(b) == [b"re:1"]
    # The BatchSocket is still usable.
    a.sendto(b"after", server.getsockname())
    assert batch.serve(Recorder(), True, flush) == (1, 1, None)
    assert drain(a) == [b"re:after"]


@needs_native
def test_an_answer_that_raises_when_a_reply_was_refused_still_propagates(
    native: ModuleType, sockets: Sockets
) -> None:
    server = sockets.server()
    fine, full = sockets.unix("fine"), sockets.unix("full")
    fill_queue(sockets, full.getsockname())
    batch = native.BatchSocket(server.fileno(), server.family, 8, 64)
    for client, data in [(fine, b"0"), (full, b"1"), (fine, b"boom")]:
        client.sendto(data, server.getsockname())

    def rule(data: bytes) -> bytes:
        if data == b"boom":
            raise Boom
        return b"re:" + data

    with pytest.raises(Boom):
        batch.serve(rule, True, 8)
    assert drain(fine) == [b"re:0"]


# --- 4. nothing to read, arguments, timeouts, signals ------------------------------------------


@needs_native
@pytest.mark.parametrize("kind", ["unix", "udp4"])
def test_serve_with_nothing_to_read(native: ModuleType, sockets: Sockets, kind: str) -> None:
    server = sockets.server(kind)
    batch = native.BatchSocket(server.fileno(), server.family, 4, 64)
    answer = Recorder()
    started = time.monotonic()
    assert batch.serve(answer, False, 2) == (0, 0, None)
    assert time.monotonic() - started < DEADLINE / 2
    set_recv_timeout(server, 0.2)
    started = time.monotonic()
    assert batch.serve(answer, True, 2) == (0, 0, None)
    assert 0.15 <= time.monotonic() - started < DEADLINE / 2
    assert answer.calls == []


@needs_native
def test_serve_checks_flush_before_reading(native: ModuleType, sockets: Sockets) -> None:
    server = sockets.server()
    client = sockets.unix("client")
    batch = native.BatchSocket(server.fileno(), server.family, 4, 64)
    client.sendto(b"waiting", server.getsockname())
    answer = Recorder()
    for flush in (0, -1, 5, 2**40):
        with pytest.raises(ValueError, match=r"flush must be 1\.\.4"):
            batch.serve(answer, True, flush)
    with pytest.raises(TypeError):
        batch.serve(answer, True, "2")
    with pytest.raises(TypeError):
        batch.serve(answer, True)
    assert answer.calls == []
    # The datagram is still there for a good call.
    assert batch.serve(answer, True, 4) == (1, 1, None)
    assert drain(client) == [b"re:waiting"]


@needs_native
def test_a_signal_interrupts_a_blocking_serve(native: ModuleType, sockets: Sockets) -> None:
    server = sockets.server()  # SO_RCVTIMEO of DEADLINE
    batch = native.BatchSocket(server.fileno(), server.family, 4, 64)
    answer = Recorder()
    check_signals_interrupt(lambda: batch.serve(answer, True, 2), (0, 0, None))
    assert answer.calls == []


@needs_native
def test_one_call_at_a_time(native: ModuleType, sockets: Sockets) -> None:
    # The buffers are shared: a call from inside another (answer, settle, a signal handler)
    # or from another thread while one runs is refused, and the first call goes on.
    server = sockets.server()
    client = sockets.unix("client")
    batch = native.BatchSocket(server.fileno(), server.family, 4, 64)
    refused: list[str] = []

    def answer(data: bytes) -> bytes:
        calls: tuple[Callable[[], object], ...] = (
            lambda: batch.recv(False),
            lambda: batch.send([], 0),
            lambda: batch.serve(answer, False, 1),
        )
        for call in calls:
            with pytest.raises(RuntimeError, match="in use") as caught:
                call()
            refused.append(str(caught.value))
        return b"re:" + data

    client.sendto(b"x", server.getsockname())
    assert batch.serve(answer, True, 1) == (1, 1, None)
    assert len(refused) == 3
    assert receive(client, 1) == [b"re:x"]
    client.sendto(b"y", server.getsockname())
    assert batch.recv(True) == [(b"y", client.getsockname(), False, None)]  # free again


@needs_native
def test_native_io_serve_turns_a_receive_error_into_a_transport_error(
    native: ModuleType, sockets: Sockets
) -> None:
    listener = sockets.keep(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    io = NativeIO(listener, 64)
    for block in (False, True):
        with pytest.raises(TransportError, match="cannot receive: Transport endpoint"):
            io.serve(echo, block, 1)


@needs_native
def test_native_io_serve_is_batch_socket_serve(native: ModuleType, sockets: Sockets) -> None:
    server = sockets.server()
    client = sockets.unix("client")
    io = NativeIO(server, 8, slots=4)
    for data in (b"a", b"b", b"much too long"):
        client.sendto(data, server.getsockname())
    assert io.serve(echo, True, 4) == (3, 2, [(b"much too", client.getsockname(), True, None)])
    assert drain(client) == [b"re:a", b"re:b"]
    assert io.serve(echo, False, 4) == (0, 0, None)


# --- 5. the worker: the native loop against Dispatcher.handle and the Python loop --------------

BUF_SIZE = 4096


def _registry() -> Registry:
    """The core commands and deterministic ones of every kind of outcome."""
    registry = with_builtins(Registry(), LocalRuntime())

    @registry.command()
    def ping() -> str:
        return "pong"

    @registry.command()
    def echo(text: str) -> str:
        return text

    @registry.command()
    def refuse() -> None:
        raise MIError(403, "Forbidden")

    @registry.command()
    async def later(value: int) -> dict[str, int]:
        await asyncio.sleep(0)
        return {"later": value}

    return registry


def call(method: str, params: Any = None, req_id: Any = None) -> bytes:
    """A request (a notification when ``req_id`` is None)."""
    obj: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        obj["params"] = params
    if req_id is not None:
        obj["id"] = req_id
    return orjson.dumps(obj)


#: Client name -> datagram, in the order sent; each round is read as one batch.
ROUNDS: list[list[tuple[str, bytes]]] = [
    [
        ("a", call("ping", req_id=1)),  # the fast path: bytes
        ("b", call("echo", ["x"], "s")),  # with params: bytes too
        ("a", b'{"jsonrpc":"2.0","method":'),  # 400 Parse_error
        ("c", call("no_such_method", req_id=3)),  # -32601
        ("b", b"{" * (BUF_SIZE + 904)),  # oversize: 400 Parse_error
        ("a", call("later", [7], 4)),  # async: a Pending
        ("c", call("ping")),  # a notification: no reply
        ("b", call("refuse", req_id=5)),  # a command error
        ("u", call("ping", req_id=6)),  # an unbound client: dropped
        ("a", call("ping", req_id=7)),
    ],
    [
        ("gone", call("ping", req_id=10)),  # a vanished client: dropped, the rest after it
        ("a", b""),  # ignored
        ("b", b'{"jsonrpc":"2.0","id":11}'),  # -32600
        ("c", call("echo", [], 12)),  # wrong params: -32602, a command error
        ("a", call("later", [8], 13)),
        ("b", call("later", [9])),  # an async notification: no reply
        ("c", call("ping", req_id=14)),
        ("a", b"x" * (BUF_SIZE + 1)),  # oversize by one byte
        ("b", call("ping", req_id=15)),
    ],
]

#: Every statistic of the two rounds, worked out by hand.
EXPECTED_STATS = {
    "received": 19,
    "replied": 14,  # 16 replies (no notification's, nor the empty one's), 2 of them dropped
    "parse_errors": 1,
    "oversize_requests": 2,
    "invalid_requests": 1,
    "unknown_methods": 1,
    "command_errors": 2,
    "oversize_replies": 0,
    "dropped_replies": 2,
    "withheld_replies": 0,
    "stuck_requests": 0,
    "refused": 0,
    "traced": 0,
    "denied": 0,
}


def handle_reply(dispatcher: Dispatcher, data: bytes) -> bytes | None:
    """The reply ``Dispatcher.handle`` gives (async commands run to completion)."""
    if len(data) > dispatcher.buf_size:
        return dispatcher.handle_oversize(dispatcher.buf_size).reply
    handled = dispatcher.handle(data)
    outcome = asyncio.run(handled.settle()) if isinstance(handled, Pending) else handled
    return outcome.reply


class WatchedIO(NativeIO):
    """The real NativeIO, counting which of its methods the worker called."""

    def __init__(self, sock: socket.socket, bufsize: int) -> None:
        super().__init__(sock, bufsize)
        self.calls: collections.Counter[str] = collections.Counter()

    def recv(self, block: bool) -> list[Any]:
        self.calls["recv"] += 1
        return super().recv(block)

    def serve(
        self, answer: Answer, block: bool, flush: int, settle: Settle | None = None
    ) -> Served:
        self.calls["serve"] += 1
        return super().serve(answer, block, flush, settle)


class Setup:
    """A worker on a real UNIX socket (in process), with its clients."""

    def __init__(
        self,
        sockets: Sockets,
        make_io: Callable[[socket.socket, int], BatchIO],
        tag: str,
        **options: Any,
    ) -> None:
        self.server = sockets.server(name=f"srv{tag}")
        self.registry = _registry()
        self.dispatcher = Dispatcher(self.registry, buf_size=BUF_SIZE)
        self.stats = ServerStats.declare(self.registry.stats)
        self.io = make_io(self.server, BUF_SIZE)
        self.worker = Worker(
            self.server,
            self.dispatcher,
            self.stats,
            socket_timeout_ms=10_000,
            io=self.io,
            **options,
        )
        self.clients = {
            "a": sockets.unix(f"a{tag}"),
            "b": sockets.abstract(),
            "c": sockets.unix(b""),  # autobound
            "u": sockets.unix(),  # unbound
            "gone": sockets.unix(f"gone{tag}"),
        }
        os.unlink(self.clients["gone"].getsockname())  # it still sends; replies find no one

    def send(self, plan: list[tuple[str, bytes]]) -> None:
        for name, data in plan:
            self.clients[name].sendto(data, self.server.getsockname())

    def serve(self, count: int) -> int:
        """serve_once() until ``count`` more datagrams were read; how many calls it took."""
        target = self.stats.received.value + count
        deadline = time.monotonic() + DEADLINE
        calls = 0
        while self.stats.received.value < target and time.monotonic() < deadline:
            self.worker.serve_once()
            calls += 1
        assert self.stats.received.value == target
        self.finish_calls()
        return calls

    def finish_calls(self) -> None:
        """serve_once() until the async calls in flight have completed and replied."""
        deadline = time.monotonic() + DEADLINE
        while self.worker.in_flight() and time.monotonic() < deadline:
            self.worker.serve_once()
        assert not self.worker.in_flight()

    def deliveries(self) -> dict[str, list[bytes]]:
        return {name: async_last(drain(sock)) for name, sock in self.clients.items()}

    def statistics(self) -> dict[str, int]:
        return {name: getattr(self.stats, name).value for name in ServerStats.__dataclass_fields__}

    def close(self) -> None:
        # serve_once() does not close the worker's event loop for async commands; run() does.
        self.worker.run(lambda: True)


def async_last(replies: list[bytes]) -> list[bytes]:
    """A client's replies, those of async calls (``later``) moved last and sorted: each goes
    when its call completes, whenever the worker's loop runs it (difference 19)."""
    later = sorted(reply for reply in replies if b'"later"' in reply)
    return [reply for reply in replies if b'"later"' not in reply] + later


def _expected_deliveries(dispatcher: Dispatcher) -> dict[str, list[bytes]]:
    expected: dict[str, list[bytes]] = {name: [] for name in ("a", "b", "c", "u", "gone")}
    for plan in ROUNDS:
        for name, data in plan:
            reply = handle_reply(dispatcher, data)
            if reply is not None and name not in ("u", "gone"):
                expected[name].append(reply)
    return {name: async_last(replies) for name, replies in expected.items()}


def _run_rounds(setup: Setup) -> tuple[list[int], dict[str, list[bytes]]]:
    calls = []
    for plan in ROUNDS:
        setup.send(plan)
        calls.append(setup.serve(len(plan)))
    return calls, setup.deliveries()


IO_KINDS = ["native", "native_python_loop", "socket"]


def _io_maker(kind: str) -> Callable[[socket.socket, int], BatchIO]:
    return SocketIO if kind == "socket" else WatchedIO


def _serve_rounds(sockets: Sockets, kind: str, tag: str) -> dict[str, Any]:
    setup = Setup(sockets, _io_maker(kind), tag)
    try:
        if kind == "native_python_loop":  # NativeIO under the Python loop
            calls = []
            for plan in ROUNDS:
                setup.send(plan)
                batch = setup.io.recv(True)
                assert len(batch) == len(plan)
                setup.worker.serve_batch(batch)
                setup.finish_calls()
                calls.append(1)
            deliveries = setup.deliveries()
        else:
            calls, deliveries = _run_rounds(setup)
        expected = _expected_deliveries(Dispatcher(setup.registry, buf_size=BUF_SIZE))
        watched = dict(setup.io.calls) if isinstance(setup.io, WatchedIO) else None
        return {
            "deliveries": deliveries,
            "expected": expected,
            "statistics": setup.statistics(),
            "calls": calls,
            "watched": watched,
            "pending": setup.worker.sender.pending(),
        }
    finally:
        setup.close()


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("native", marks=needs_native),
        pytest.param("native_python_loop", marks=needs_native),
        "socket",
    ],
)
def test_a_worker_gives_every_client_what_dispatcher_handle_gives(
    sockets: Sockets, kind: str
) -> None:
    run = _serve_rounds(sockets, kind, "")
    assert run["statistics"] == EXPECTED_STATS
    assert run["pending"] == 0
    assert run["deliveries"] == run["expected"]
    # Spot checks that the plan is what it says.
    a = run["deliveries"]["a"]
    assert reply_ids([a[0], a[2], a[4], a[5]]) == [1, 7, 4, 13]  # async replies last
    assert a[1] == a[3] == b"400 Parse_error"
    assert orjson.loads(a[4])["result"] == {"later": 7}
    if kind == "native":  # one serve() per round, in C: recv() never called
        assert run["calls"] == [1, 1]
        assert run["watched"] == {"serve": 2}
    elif kind == "socket":
        assert run["calls"] == [len(plan) for plan in ROUNDS]


#: A datagram whose reply Python finishes after serve() returned, and its reply.
AFTER_SERVE = {
    "parse_error": (b"not json", b"400 Parse_error"),
    "unknown_method": (request(9, "no_such_method"), None),
    "oversize": (b"x" * (BUF_SIZE + 1), b"400 Parse_error"),
    "async": (call("later", [5], 9), b'{"jsonrpc":"2.0","result":{"later":5},"id":9}'),
}


@pytest.mark.parametrize(
    "kind",
    [pytest.param("native", marks=needs_native), "socket"],
)
@pytest.mark.parametrize("first", list(AFTER_SERVE))
def test_a_clients_replies_keep_its_requests_order_across_a_leftover(
    sockets: Sockets, kind: str, first: str
) -> None:
    # One client, one batch: a request whose reply is not plain bytes from answer() (so it
    # comes back to the worker as a leftover), then an ordinary one. Its replies must come
    # in the order of its requests, as Dispatcher.handle one at a time (and OpenSIPS) give.
    setup = Setup(sockets, _io_maker(kind), "")
    try:
        data, reply = AFTER_SERVE[first]
        plan = [("a", data), ("a", request(1, "ping")), ("a", request(2, "ping"))]
        setup.send(plan)
        setup.serve(len(plan))
        reference = Dispatcher(setup.registry, buf_size=BUF_SIZE)
        expected = [handle_reply(reference, sent) for _, sent in plan]
        if reply is not None:
            assert expected[0] == reply
        expected = async_last(expected)  # an async call's reply goes when it completes
        assert setup.stats.replied.value == len(plan)
        assert setup.deliveries()["a"] == expected
    finally:
        setup.close()


@needs_native
def test_the_native_and_python_loops_serve_the_same(sockets: Sockets) -> None:
    runs = {kind: _serve_rounds(sockets, kind, str(n)) for n, kind in enumerate(IO_KINDS)}
    outcomes = {
        kind: (run["deliveries"], run["statistics"], run["pending"]) for kind, run in runs.items()
    }
    assert outcomes["native"] == outcomes["native_python_loop"] == outcomes["socket"]


def _full_client_run(sockets: Sockets, kind: str, tag: str) -> dict[str, Any]:
    setup = Setup(sockets, _io_maker(kind), tag)
    full, fine = setup.clients["a"], setup.clients["b"]
    junk = fill_queue(sockets, full.getsockname())
    plan = [
        ("b", request(0)),
        ("a", request(100)),  # refused: queued, and the rest after it goes by ReplySender
        ("b", request(1)),
        ("a", request(101)),
        ("b", b"not json"),
        ("a", call("later", [1], 102)),
        ("b", request(2, "no_such_method")),
    ]
    setup.send(plan)
    calls = setup.serve(len(plan))
    observed: dict[str, Any] = {
        "fine": drain(fine),
        "pending": setup.worker.sender.pending(),
        "statistics": setup.statistics(),
    }
    drain_junk(full, junk)  # the client reads at last: nothing of ours came before
    deadline = time.monotonic() + DEADLINE
    while setup.worker.sender.pending() and time.monotonic() < deadline:
        setup.worker.serve_once()  # polls no longer than the next retry
    observed["full"] = drain(full)
    observed["pending_after"] = setup.worker.sender.pending()
    observed["statistics_after"] = setup.statistics()
    if isinstance(setup.io, WatchedIO):
        observed["serve_calls"] = setup.io.calls["serve"]
    observed["calls"] = calls
    setup.close()
    return observed


@needs_native
def test_a_full_client_under_the_native_loop_keeps_its_order(sockets: Sockets) -> None:
    native_run = _full_client_run(sockets, "native", "n")
    assert native_run.pop("calls") == 1  # one batch, served by serve()
    assert native_run.pop("serve_calls") == 1  # then the Python loop, while replies wait
    assert reply_ids(native_run["fine"][:2]) == [0, 1]
    assert native_run["fine"][2] == b"400 Parse_error"
    assert orjson.loads(native_run["fine"][3])["error"]["code"] == -32601
    assert reply_ids(native_run["full"]) == [100, 101, 102]
    assert native_run["pending"] == 3
    assert native_run["pending_after"] == 0
    stats = native_run["statistics"]
    assert (stats["received"], stats["replied"], stats["dropped_replies"]) == (7, 7, 0)
    assert (stats["parse_errors"], stats["unknown_methods"]) == (1, 1)
    assert native_run["statistics_after"] == stats
    socket_run = _full_client_run(sockets, "socket", "s")
    assert socket_run.pop("calls") == 7  # one datagram a call
    assert native_run == socket_run


@needs_native
def test_a_reply_waiting_for_its_client_is_not_overtaken_beside_async_calls(
    sockets: Sockets,
) -> None:
    # While an async call is in flight, a client's next reply must queue behind the one
    # already waiting for it, as without calls: the fast path (which sends directly) once
    # served that batch while the waiting reply's retry was not yet due, and overtook it.
    server = sockets.server(name="srvq")
    registry = _registry()
    release = asyncio.Event()

    @registry.command()
    async def hold_on() -> str:
        await release.wait()
        return "released"

    dispatcher = Dispatcher(registry, buf_size=BUF_SIZE)
    stats = ServerStats.declare(registry.stats)
    worker = Worker(server, dispatcher, stats, socket_timeout_ms=10_000)
    full, other = sockets.unix("full"), sockets.unix("other")
    junk = fill_queue(sockets, full.getsockname())
    deadline = time.monotonic() + DEADLINE

    def serve_until(done: Callable[[], bool]) -> None:
        while not done():
            assert time.monotonic() < deadline
            worker.serve_once()

    other.sendto(call("hold_on", req_id=7), server.getsockname())
    serve_until(lambda: worker.in_flight() == 1)
    full.sendto(request(100, "ping"), server.getsockname())
    serve_until(lambda: worker.sender.pending() == 1)
    # Refused again and again, its retries back off to tens of milliseconds apart.
    serve_until(lambda: (worker.sender.next_retry_in() or 0) > 0.03)
    drain_junk(full, junk)
    full.sendto(request(101, "ping"), server.getsockname())
    serve_until(lambda: stats.received.value == 3)
    serve_until(lambda: not worker.sender.pending())
    assert reply_ids(receive(full, 2)) == [100, 101]
    release.set()
    worker.run(lambda: True)  # the call completes and is answered
    assert reply_ids(drain(other)) == [7]
    assert (stats.received.value, stats.replied.value, stats.dropped_replies.value) == (3, 3, 0)


@needs_native
def test_a_worker_with_debug_logging_uses_the_python_loop(
    sockets: Sockets, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="midgram.server.worker")
    setup = Setup(sockets, _io_maker("native"), "")
    try:
        _, deliveries = _run_rounds(setup)
        assert deliveries == _expected_deliveries(Dispatcher(setup.registry, buf_size=BUF_SIZE))
        assert setup.statistics() == EXPECTED_STATS
        assert isinstance(setup.io, WatchedIO)
        assert "serve" not in setup.io.calls
        assert setup.io.calls["recv"] >= len(ROUNDS)
    finally:
        setup.close()
    # Every datagram that reached dispatching was logged, with its status (the native loop
    # would have logged none of the OK ones).
    logged = [
        record.getMessage() for record in caplog.records if record.name == "midgram.server.worker"
    ]
    # The method names come from the datagrams: quoted and escaped (midgram.logs.shown).
    assert sum(message.startswith("'ping' from ") for message in logged) == 7
    assert any(message.startswith("'later' from ") for message in logged)


class Watcher:
    """An observer that looks, each time it is told, whether the reply is at its client."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.events: list[tuple[str, Any, bool]] = []

    def waiting(self) -> bool:
        try:
            self.client.recv(1 << 16, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        return True

    def seen(self, outcome: Outcome, peer: Any) -> str | None:
        self.events.append(("seen", outcome.method, self.waiting()))
        return outcome.method

    def replied(self, seen: str | None, reply: bytes, sent: bool) -> None:
        self.events.append(("replied", seen, self.waiting() and sent))
        drain(self.client)


@needs_native
@pytest.mark.parametrize("debug", [False, True], ids=["alone", "with_debug_logging"])
def test_observers_are_told_before_each_reply_goes_and_after(
    sockets: Sockets, caplog: pytest.LogCaptureFixture, debug: bool
) -> None:
    # What tracing relies on: the request's trace before its reply, the reply's after it.
    if debug:
        caplog.set_level(logging.DEBUG, logger="midgram.server.worker")
    setup = Setup(sockets, _io_maker("native"), "")
    watcher = Watcher(setup.clients["a"])
    worker = Worker(
        setup.server, setup.dispatcher, setup.stats, socket_timeout_ms=1000, observers=[watcher]
    )
    plan = [("a", call("ping", req_id=1)), ("a", b"not json"), ("a", call("echo", ["x"], 2))]
    try:
        setup.send(plan)
        deadline = time.monotonic() + DEADLINE
        while setup.stats.received.value < len(plan):
            assert time.monotonic() < deadline
            worker.serve_once()
    finally:
        setup.close()
    assert watcher.events == [
        ("seen", "ping", False),
        ("replied", "ping", True),
        ("seen", None, False),
        ("replied", None, True),
        ("seen", "echo", False),
        ("replied", "echo", True),
    ]
    assert setup.stats.replied.value == len(plan)
    logged = [r.getMessage() for r in caplog.records if r.name == "midgram.server.worker"]
    assert len(logged) == (len(plan) if debug else 0)


@needs_native
def test_a_worker_with_allow_from_uses_the_python_loop(sockets: Sockets) -> None:
    server = sockets.server("udp4")
    registry = _registry()
    dispatcher = Dispatcher(registry, buf_size=BUF_SIZE)
    stats = ServerStats.declare(registry.stats)
    io = WatchedIO(server, BUF_SIZE)
    rule = allow_from(["127.0.0.2/32"])
    assert rule is not None
    asked: list[Any] = []

    def allowed(peer: Any) -> bool:
        asked.append(peer)
        return rule.allows(peer)

    admission = [Admission(allowed, rule.reason)]
    worker = Worker(server, dispatcher, stats, socket_timeout_ms=10_000, admission=admission, io=io)
    friend, stranger = sockets.udp("127.0.0.2"), sockets.udp("127.0.0.1")
    plan = [
        (friend, request(1)),
        (stranger, request(2)),
        (friend, b"not json"),
        (friend, b"x" * (BUF_SIZE + 1)),
        (stranger, b"x" * (BUF_SIZE + 1)),
        (friend, request(3)),
    ]
    for client, data in plan:
        client.sendto(data, server.getsockname())
    deadline = time.monotonic() + DEADLINE
    while stats.received.value < len(plan) and time.monotonic() < deadline:
        worker.serve_once()
    assert stats.received.value == len(plan)
    got = receive(friend, 4)
    assert reply_ids([got[0], got[3]]) == [1, 3]
    assert got[1:3] == [b"400 Parse_error", b"400 Parse_error"]
    assert drain(friend) == drain(stranger) == []
    # Every datagram was checked.
    assert set(asked) == {peer_of(friend), peer_of(stranger)}
    assert len(asked) >= len(plan)
    assert "serve" not in io.calls
    assert (stats.refused.value, stats.replied.value, stats.oversize_requests.value) == (2, 4, 1)
    assert stats.parse_errors.value == 1


class Once:
    """``should_stop`` for ``Worker.run``: one pass of the loop (housekeeping, a burst)."""

    def __init__(self) -> None:
        self.asked = 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.asked > 1


@needs_native
def test_the_worker_follows_the_log_level_between_the_two_loops(sockets: Sockets) -> None:
    # The log level is looked at between bursts: DEBUG (OpenSIPS 4) turns the native loop
    # off, INFO (3) back on, and either way every client gets its replies.
    level = [4]
    setup = Setup(sockets, _io_maker("native"), "", log_level=lambda: level[0])
    set_recv_timeout(setup.server, 0.05)  # a burst ends 50 ms after the last datagram
    io = setup.io
    assert isinstance(io, WatchedIO)
    tree = logging.getLogger("midgram")
    before = tree.level
    ping = ROUNDS[0][0]
    try:
        setup.send([ping, ping])
        setup.worker.run(Once())
        assert (io.calls["serve"], io.calls["recv"] >= 2) == (0, True)
        recvs = io.calls["recv"]
        level[0] = 3
        setup.send([ping, ping])
        setup.worker.run(Once())
        assert (io.calls["serve"] >= 1, io.calls["recv"]) == (True, recvs)
        assert setup.deliveries()["a"] == [b'{"jsonrpc":"2.0","result":"pong","id":1}'] * 4
        assert (setup.stats.received.value, setup.stats.replied.value) == (4, 4)
    finally:
        tree.setLevel(before)
        setup.close()


# --- 6. reference counts and memory over many batches ---------------------------------------


@needs_native
def test_serve_leaks_neither_references_nor_memory(native: ModuleType, sockets: Sockets) -> None:
    server = sockets.server()
    good, unbound, gone = sockets.unix("good"), sockets.unix(), sockets.unix("gone")
    os.unlink(gone.getsockname())  # replies to it are refused (ENOENT): leftovers
    batch = native.BatchSocket(server.fileno(), server.family, 8, 16)
    address = server.getsockname()
    reply = bytes(range(40))  # one object, answered again and again
    sentinel = Odd()

    def answer(data: bytes) -> Any:
        if data == b"odd":
            return sentinel
        if data == b"boom":
            raise Boom
        return reply

    def one_round(number: int) -> None:
        good.sendto(b"ok", address)
        good.sendto(b"odd", address)
        extra = number % 8 == 0
        if extra:
            good.sendto(b"t" * 40, address)  # truncated
            unbound.sendto(b"ok", address)
        if number % 16 == 1:
            good.sendto(b"boom", address)
            with pytest.raises(Boom):
                batch.serve(answer, False, 2)
            assert good.recv(64, socket.MSG_DONTWAIT) is not None  # the one queued before
            return
        gone.sendto(b"ok", address)
        received, replied, leftovers = batch.serve(answer, False, 2)
        assert (received, replied) == (5 if extra else 3, 1)
        assert leftovers is not None
        assert len(leftovers) == (4 if extra else 2)
        assert leftovers[0][3] is sentinel
        assert leftovers[-1][3] is reply
        assert good.recv(64, socket.MSG_DONTWAIT) == reply

    for number in range(200):  # warm up: caches, the peer cache, interned objects
        one_round(number)
    gc.collect()
    refs = (sys.getrefcount(reply), sys.getrefcount(sentinel))
    tracemalloc.start()
    try:
        gc.collect()
        start, _ = tracemalloc.get_traced_memory()
        for number in range(10_000):
            one_round(number)
        gc.collect()
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (sys.getrefcount(reply), sys.getrefcount(sentinel)) == refs
    assert end - start < 64 * 1024, f"{end - start} bytes more after 10000 batches"
    assert drain(good) == []
