"""Batched datagram I/O (``_batchio.c`` through ``midgram.server.batchio``) on real bound sockets.

The native ``BatchSocket`` is held against the socket module (peers, data, truncation), its
``send`` against the worker's contract (stop at the first reply it cannot send, never
raise), ``NativeIO`` against ``SocketIO`` for the same traffic, and whole servers, with
and without the native module, against bursts and full client queues.

Nothing sleeps to synchronise: a UNIX datagram is in the receiver's queue when sendto()
returns, and anything else is awaited with select() and a deadline.
"""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from types import ModuleType
from typing import Any

import orjson
import pytest
from datagrams import (
    DEADLINE,
    Sockets,
    drain,
    drain_junk,
    fill_queue,
    receive,
    reply_ids,
    request,
    wait_readable,
)
from golden_cases import assert_matches, load_cases
from interrupts import check_signals_interrupt
from servers import ServerProcess, midgram_server
from toolchain import needs_ipv6, needs_native

from midgram.engine.builtins import with_builtins
from midgram.engine.dispatch import Dispatcher
from midgram.engine.registry import Registry
from midgram.engine.runtime import LocalRuntime
from midgram.errors import TransportError
from midgram.server import batchio
from midgram.server.batchio import BatchIO, NativeIO, SocketIO, batch_io
from midgram.server.binding import pass_credentials, set_recv_timeout
from midgram.server.transport import ReplySender, SendStatus
from midgram.server.worker import ServerStats, Worker

# --- helpers ----------------------------------------------------------------------------


def numbered(prefix: str, count: int) -> list[bytes]:
    return [f"{prefix}{number}".encode() for number in range(count)]


def io_for(monkeypatch: pytest.MonkeyPatch, *, native: bool) -> Callable[..., BatchIO]:
    """``batch_io`` as a fresh process would see it, with the native module on or off
    (``MIDGRAM_NATIVE=0``): the module's cached verdict is cleared first."""
    monkeypatch.setattr(batchio, "_status", None)
    if native:
        monkeypatch.delenv(batchio.ENV, raising=False)
    else:
        monkeypatch.setenv(batchio.ENV, "0")
    return batch_io


# --- BatchSocket.recv: peers and data as the socket module gives them ---------------------

CLIENT_KINDS = [
    "path",
    "non_utf8_path",
    "abstract",
    "abstract_108",  # all of sun_path, no NUL
    "autobind",
    "unbound",
    "udp4",
    pytest.param("udp6", marks=needs_ipv6),
    pytest.param("v4_mapped", marks=needs_ipv6),
]

SERVER_FOR = {"udp4": "udp4", "udp6": "udp6", "v4_mapped": "dual"}


_CLIENT_MAKERS: dict[str, Callable[[Sockets], socket.socket]] = {
    "path": lambda sockets: sockets.unix("client"),
    # The socket module gives a path that is not UTF-8 surrogate-escaped.
    "non_utf8_path": lambda sockets: sockets.unix(os.fsencode(sockets.folder) + b"/cli\xff\xfe"),
    "abstract": Sockets.abstract,
    "abstract_108": lambda sockets: sockets.unix((b"\0" + uuid.uuid4().hex.encode() * 4)[:108]),
    "autobind": lambda sockets: sockets.unix(b""),  # the kernel picks an abstract name
    "unbound": lambda sockets: sockets.unix(),
    "udp4": lambda sockets: sockets.udp("127.0.0.1"),
    "udp6": lambda sockets: sockets.udp("::1"),
    "v4_mapped": lambda sockets: sockets.udp("127.0.0.1"),
}


def _client(sockets: Sockets, kind: str) -> socket.socket:
    return _CLIENT_MAKERS[kind](sockets)


@needs_native
@pytest.mark.parametrize("kind", CLIENT_KINDS)
def test_recv_gives_the_peer_the_socket_module_gives(
    native: ModuleType, sockets: Sockets, kind: str
) -> None:
    server = sockets.server(SERVER_FOR.get(kind, "unix"))
    client = _client(sockets, kind)
    batch = native.BatchSocket(server.fileno(), server.family, 8, 1024)
    address = (
        ("127.0.0.1", server.getsockname()[1]) if kind == "v4_mapped" else server.getsockname()
    )

    client.sendto(b"via the socket module", address)
    wait_readable(server)
    data, expected = server.recvfrom(1024)
    assert data == b"via the socket module"
    client.sendto(b"via recvmmsg", address)
    [(data, peer, truncated, credentials)] = batch.recv(True)

    assert (data, truncated, credentials) == (b"via recvmmsg", False, None)
    assert peer == expected
    assert type(peer) is type(expected)
    if kind == "unbound":
        assert peer is None
    elif kind == "v4_mapped":
        assert peer == ("::ffff:127.0.0.1", client.getsockname()[1], 0, 0)
    else:
        assert peer == client.getsockname()
        if kind == "non_utf8_path":
            assert isinstance(peer, str)
            assert os.fsencode(peer).endswith(b"/cli\xff\xfe")
        if kind in ("abstract", "abstract_108", "autobind"):
            assert isinstance(peer, bytes)
            assert peer.startswith(b"\0")
        if kind == "abstract_108":
            assert len(peer) == 108
        # ... and the peer it gave is one it can send to.
        assert batch.send([(b"reply", peer)], 0) == 1
        assert receive(client, 1) == [b"reply"]
        # So is an equal peer that is not the object recv() gave, or the caller's fallback
        # (ReplySender) takes it from there.
        copy = _copy(peer)
        assert copy == peer
        assert copy is not peer
        went = batch.send([(b"again", copy)], 0)
        if went == 0:
            assert ReplySender(server, 1000).send(b"again", copy) is SendStatus.SENT
        assert receive(client, 1) == [b"again"]


def _copy(peer: Any) -> Any:
    if isinstance(peer, tuple):
        return tuple(_copy(part) for part in peer)
    if isinstance(peer, bytes):
        return bytes(bytearray(peer))
    if isinstance(peer, str):
        return "".join(list(peer))
    return peer


@needs_native
def test_one_client_after_another_each_gets_its_own_peer(
    native: ModuleType, sockets: Sockets
) -> None:
    # recv() keeps the last peer it decoded: a new client must not be given the old one.
    server = sockets.server()
    clients = [sockets.unix("a"), sockets.abstract(), sockets.unix(), sockets.unix("a2")]
    batch = native.BatchSocket(server.fileno(), server.family, 2, 64)
    order = [0, 0, 1, 1, 2, 0, 3, 2, 2, 1]
    seen = []
    for number, index in enumerate(order):
        clients[index].sendto(b"%d" % number, server.getsockname())
        seen += batch.recv(True)
    names = [sock.getsockname() or None for sock in clients]
    assert seen == [(b"%d" % n, names[i], False, None) for n, i in enumerate(order)]


@needs_native
@pytest.mark.parametrize("kind", ["unix", "udp4"])
def test_a_datagram_over_bufsize_comes_cut_and_flagged(
    native: ModuleType, sockets: Sockets, kind: str
) -> None:
    server = sockets.server(kind)
    client = sockets.unix("client") if kind == "unix" else sockets.udp()
    batch = native.BatchSocket(server.fileno(), server.family, 4, 16)
    sent = [b"x" * 16, b"y" * 17, bytes(range(100)), b""]
    got = []
    for data in sent:
        client.sendto(data, server.getsockname())
        got += batch.recv(True)
    peer = client.getsockname()
    assert got == [
        (b"x" * 16, peer, False, None),  # exactly bufsize: whole
        (b"y" * 16, peer, True, None),
        (bytes(range(16)), peer, True, None),
        (b"", peer, False, None),
    ]


@needs_native
def test_queued_datagrams_come_in_one_call_in_order_up_to_slots(
    native: ModuleType, sockets: Sockets
) -> None:
    server = sockets.server()
    clients = [sockets.unix("a"), sockets.abstract(), sockets.unix()]
    batch = native.BatchSocket(server.fileno(), server.family, 4, 8)
    assert (batch.slots, batch.bufsize) == (4, 8)
    sent = []
    for number in range(9):  # fewer than net.unix.max_dgram_qlen: sendto never blocks
        client = clients[number % 3]
        data = b"n%d" % number + (b"-too-long" if number == 5 else b"")
        client.sendto(data, server.getsockname())
        sent.append((data[:8], client.getsockname() or None, len(data) > 8, None))

    first = batch.recv(True)
    second = batch.recv(False)
    third = batch.recv(True)
    assert [len(first), len(second), len(third)] == [4, 4, 1]
    assert first + second + third == sent
    assert batch.recv(False) == []


@needs_native
def test_a_blocking_recv_returns_with_the_first_datagram(
    native: ModuleType, sockets: Sockets
) -> None:
    # MSG_WAITFORONE: one datagram is enough, recv() does not wait for the other slots.
    server = sockets.server()
    client = sockets.unix("client")
    batch = native.BatchSocket(server.fileno(), server.family, 16, 64)
    client.sendto(b"alone", server.getsockname())
    started = time.monotonic()
    assert batch.recv(True) == [(b"alone", client.getsockname(), False, None)]
    assert time.monotonic() - started < DEADLINE / 2


@needs_native
@pytest.mark.parametrize("kind", ["unix", "udp4"])
def test_nothing_to_read(native: ModuleType, sockets: Sockets, kind: str) -> None:
    server = sockets.server(kind)
    batch = native.BatchSocket(server.fileno(), server.family, 4, 64)
    started = time.monotonic()
    assert batch.recv(False) == []
    assert time.monotonic() - started < DEADLINE / 2
    set_recv_timeout(server, 0.2)
    started = time.monotonic()
    assert batch.recv(True) == []
    waited = time.monotonic() - started
    assert 0.15 <= waited < DEADLINE / 2


@needs_native
def test_batch_socket_checks_its_arguments(native: ModuleType, sockets: Sockets) -> None:
    server = sockets.server()
    fd = server.fileno()
    for args in [
        (-1, socket.AF_UNIX, 4, 64),
        (fd, socket.AF_UNIX, 0, 64),
        (fd, socket.AF_UNIX, native.MAX_SLOTS + 1, 64),
        (fd, socket.AF_UNIX, 4, 0),
        (fd, socket.AF_PACKET, 4, 64),
    ]:
        with pytest.raises(ValueError, match=r"BatchSocket|family"):
            native.BatchSocket(*args)
    batch = native.BatchSocket(fd, socket.AF_UNIX, native.MAX_SLOTS, 64)
    with pytest.raises(TypeError):
        batch.send(((b"x", None),), 0)  # a tuple, not a list
    for start in (-1, 1):
        with pytest.raises(IndexError):
            batch.send([], start)


@needs_native
def test_a_signal_interrupts_a_blocking_recv(native: ModuleType, sockets: Sockets) -> None:
    server = sockets.server()  # SO_RCVTIMEO of DEADLINE
    batch = native.BatchSocket(server.fileno(), server.family, 4, 64)
    check_signals_interrupt(lambda: batch.recv(True), [])


@pytest.mark.parametrize(
    "native_on",
    [pytest.param(True, marks=needs_native, id="native"), pytest.param(False, id="socket")],
)
def test_a_receive_error_is_a_transport_error(
    monkeypatch: pytest.MonkeyPatch, sockets: Sockets, native_on: bool
) -> None:
    listener = sockets.keep(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    io = io_for(monkeypatch, native=native_on)(listener, 64)
    assert io.native is native_on
    for block in (False, True):
        with pytest.raises(TransportError, match="cannot receive: Transport endpoint"):
            io.recv(block)


@needs_native
def test_slots_beyond_an_unsigned_int_are_refused(native: ModuleType, sockets: Sockets) -> None:
    # 2**32 + 4 is not 1 <= slots <= MAX_SLOTS; it must not be taken as 4.
    server = sockets.server()
    with pytest.raises((ValueError, OverflowError)):
        native.BatchSocket(server.fileno(), server.family, 2**32 + 4, 64)


_HUGE_BUFFERS = """
import socket, sys
from midgram.server import _batchio as native
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
try:
    batch = native.BatchSocket(a.fileno(), socket.AF_UNIX, 1024, 2**54)  # 1024 * 2**54 = 2**64
except (ValueError, OverflowError, MemoryError) as exc:
    print("refused", type(exc).__name__)
    sys.exit(0)
b.send(b"x" * 60000)
print("accepted, read", [len(data) for data, _, _, _ in batch.recv(True)], flush=True)
del batch
"""


@needs_native
def test_buffers_too_big_to_allocate_are_refused() -> None:
    # slots * bufsize must not wrap around to a small allocation that recvmmsg() then
    # writes far beyond. In a child process: a heap overflow must not take pytest with it.
    out = subprocess.run(
        [sys.executable, "-c", _HUGE_BUFFERS], capture_output=True, text=True, timeout=30
    )
    assert (out.returncode, out.stdout.split(" ")[0]) == (0, "refused"), (
        f"exit status {out.returncode}: {out.stdout}{out.stderr}"
    )


# --- BatchSocket.send ---------------------------------------------------------------------


@needs_native
def test_send_to_several_peers_in_one_call_keeps_each_ones_order(
    native: ModuleType, sockets: Sockets
) -> None:
    server = sockets.server()
    a, b, c = sockets.unix("a"), sockets.abstract(), sockets.unix(b"")
    batch = native.BatchSocket(server.fileno(), server.family, 4, 64)  # 7 replies: 2 calls
    plan = [a, b, a, c, b, a, a]
    replies = [(b"r%d" % n, sock.getsockname()) for n, sock in enumerate(plan)]
    assert batch.send(replies, 0) == len(replies)
    for sock in (a, b, c):
        mine = [data for data, peer in replies if peer == sock.getsockname()]
        assert drain(sock) == mine


@needs_native
@pytest.mark.parametrize("host", ["127.0.0.1", pytest.param("::1", marks=needs_ipv6)])
def test_send_over_udp(native: ModuleType, sockets: Sockets, host: str) -> None:
    server = sockets.server("udp4" if host == "127.0.0.1" else "udp6")
    one, two = sockets.udp(host), sockets.udp(host)
    batch = native.BatchSocket(server.fileno(), server.family, 2, 64)
    # Peers as the socket module writes them: (host, port), and for IPv6 also 4-tuples.
    peers = [one.getsockname()[:2], two.getsockname()]
    replies = [(b"r%d" % n, peers[n % 2]) for n in range(5)]
    assert batch.send(replies, 0) == 5
    assert receive(one, 3) == [b"r0", b"r2", b"r4"]
    assert receive(two, 2) == [b"r1", b"r3"]


@needs_native
def test_send_stops_at_a_peer_it_cannot_convert(native: ModuleType, sockets: Sockets) -> None:
    server = sockets.server()
    a = sockets.unix("a")
    batch = native.BatchSocket(server.fileno(), server.family, 8, 64)
    peer = a.getsockname()
    for odd in [None, "", b"", ("127.0.0.1", 1), 42, "x" * 200]:
        replies = [(b"before", peer), (b"odd", odd), (b"after", peer)]
        assert batch.send(replies, 0) == 1, odd
        assert drain(a) == [b"before"]
        assert batch.send(replies, 2) == 3  # the caller goes on after it
        assert drain(a) == [b"after"]
    not_a_pair: list[Any] = [(b"before", peer), [b"odd", peer], (b"x", peer, 1), ("s", peer)]
    for item in not_a_pair[1:]:
        assert batch.send([not_a_pair[0], item], 0) == 1, item
        assert drain(a) == [b"before"]


@needs_native
def test_send_stops_at_an_unbound_peer_just_received(native: ModuleType, sockets: Sockets) -> None:
    # The peer recv() gave last is sent to without conversion: None must still stop send().
    server = sockets.server()
    a, unbound = sockets.unix("a"), sockets.unix()
    batch = native.BatchSocket(server.fileno(), server.family, 8, 64)
    a.sendto(b"from a", server.getsockname())
    unbound.sendto(b"from nobody", server.getsockname())
    (_, a_peer, _, _), (_, none_peer, _, _) = batch.recv(True)
    assert none_peer is None
    assert batch.send([(b"to a", a_peer), (b"to nobody", none_peer), (b"again", a_peer)], 0) == 1
    assert batch.send([(b"to nobody", none_peer)], 0) == 0
    assert drain(a) == [b"to a"]
    assert drain(unbound) == []


@needs_native
@pytest.mark.parametrize("host", ["127.0.0.1", pytest.param("::1", marks=needs_ipv6)])
def test_send_leaves_names_and_scopes_to_the_socket_module(
    native: ModuleType, sockets: Sockets, host: str
) -> None:
    server = sockets.server("udp4" if host == "127.0.0.1" else "udp6")
    client = sockets.udp(host)
    port = client.getsockname()[1]
    batch = native.BatchSocket(server.fileno(), server.family, 8, 64)
    if host == "127.0.0.1":
        odd_peers: list[Any] = [("localhost", port), (host, port, 0, 0), (host, 70000), (host,)]
    else:
        odd_peers = [("localhost", port), ("fe80::1%lo", port, 0, 0), (host, port, 1 << 20, 0)]
    for odd in odd_peers:
        replies = [(b"first", (host, port)), (b"odd", odd), (b"last", (host, port))]
        assert batch.send(replies, 0) == 1, odd
        assert receive(client, 1) == [b"first"]
    if host == "127.0.0.1":
        # The one it stops at is the socket module's: ReplySender sends to a name.
        assert ReplySender(server, 1000).send(b"by name", ("localhost", port)) is SendStatus.SENT
        assert receive(client, 1) == [b"by name"]


@needs_native
def test_send_starts_at_start(native: ModuleType, sockets: Sockets) -> None:
    server = sockets.server()
    a = sockets.unix("a")
    batch = native.BatchSocket(server.fileno(), server.family, 2, 64)
    replies = [(data, a.getsockname()) for data in numbered("r", 5)]
    assert batch.send(replies, 3) == 5
    assert drain(a) == [b"r3", b"r4"]
    assert batch.send(replies, 5) == 5
    assert batch.send([], 0) == 0
    assert drain(a) == []


@needs_native
def test_a_full_client_queue_stops_send_at_the_first_refused_reply(
    native: ModuleType, sockets: Sockets
) -> None:
    server = sockets.server()
    slow, other = sockets.unix("slow"), sockets.abstract()
    batch = native.BatchSocket(server.fileno(), server.family, 8, 64)
    replies = [(data, slow.getsockname()) for data in numbered("r", 30)]
    replies.append((b"other", other.getsockname()))

    stopped = batch.send(replies, 0)  # must not raise EAGAIN
    assert 0 < stopped < 30
    assert batch.send(replies, stopped) == stopped  # still full: refused at once
    assert drain(other) == []  # send() stops there; the rest is the caller's
    # Each time the client reads, the caller can go on where it stopped, in order.
    got = drain(slow)
    for _ in range(len(replies)):
        if stopped == len(replies):
            break
        went = batch.send(replies, stopped)
        assert went > stopped  # the queue was just emptied
        stopped = went
        got += drain(slow)
    assert got == [data for data, _ in replies[:30]]
    assert drain(other) == [b"other"]


@needs_native
@pytest.mark.parametrize("how", ["file_removed", "socket_closed"])
def test_a_vanished_client_stops_send_without_raising(
    native: ModuleType, sockets: Sockets, how: str
) -> None:
    server = sockets.server()
    here, gone = sockets.unix("here"), sockets.unix("gone")
    batch = native.BatchSocket(server.fileno(), server.family, 8, 64)
    gone_peer = gone.getsockname()
    if how == "file_removed":
        os.unlink(gone_peer)  # ENOENT
    else:
        gone.close()  # the file stays: ECONNREFUSED
    replies = [(b"0", here.getsockname()), (b"1", gone_peer), (b"2", here.getsockname())]
    assert batch.send(replies, 0) == 1
    assert batch.send(replies, 1) == 1
    assert batch.send(replies, 2) == 3
    assert drain(here) == [b"0", b"2"]
    assert ReplySender(server, 1000).send(b"1", gone_peer) is SendStatus.DROPPED


# --- NativeIO and SocketIO: the same results for the same traffic -------------------------


def test_native_module_honours_midgram_native_0(
    monkeypatch: pytest.MonkeyPatch, sockets: Sockets
) -> None:
    server = sockets.server()
    make = io_for(monkeypatch, native=False)
    io = make(server, 64)
    assert isinstance(io, SocketIO)
    assert io.native is False
    assert not batchio.native_status().on
    assert batchio.native_status().off_because == "MIDGRAM_NATIVE=0"
    assert str(batchio.native_status()) == "off (MIDGRAM_NATIVE=0)"
    monkeypatch.delenv(batchio.ENV)
    assert not batchio.native_status().on  # the verdict is kept for the process's life


@needs_native
def test_batch_io_is_native_when_it_can_be(
    monkeypatch: pytest.MonkeyPatch, sockets: Sockets
) -> None:
    server = sockets.server()
    io = io_for(monkeypatch, native=True)(server, 64)
    assert isinstance(io, NativeIO)
    assert io.native is True
    assert batchio.native_status().on
    assert str(batchio.native_status()) == "on"


def _clients(sockets: Sockets, kind: str) -> list[socket.socket]:
    if kind == "udp4":
        return [sockets.udp(), sockets.udp()]
    return [_client(sockets, k) for k in ("path", "abstract", "autobind", "unbound")]


def _send_round(clients: list[socket.socket], server: socket.socket, size: int) -> int:
    """One datagram of ``size`` bytes from each client (a few: sendto never blocks)."""
    for index, client in enumerate(clients):
        client.sendto((b"%d." % index + b"q" * size)[:size], server.getsockname())
    return len(clients)


def _read_all(io: BatchIO, count: int) -> list[Any]:
    """``count`` datagrams through ``io``, however many calls that takes."""
    got: list[Any] = []
    deadline = time.monotonic() + DEADLINE
    while len(got) < count and time.monotonic() < deadline:
        got += io.recv(True)
    assert len(got) == count
    assert io.recv(False) == []
    return got


def _read_by_socket_module(server: socket.socket, count: int, bufsize: int) -> list[Any]:
    got = []
    for _ in range(count):
        wait_readable(server)
        data, peer = server.recvfrom(bufsize + 1)
        got.append((data[:bufsize], peer, len(data) > bufsize, None))
    return got


SIZES = [5, 32, 33, 0, 100]  # around a 32-byte buffer


@pytest.mark.parametrize(
    "native_on",
    [pytest.param(True, marks=needs_native, id="native"), pytest.param(False, id="socket")],
)
@pytest.mark.parametrize("kind", ["unix", "udp4"])
def test_batch_io_reads_what_recvfrom_reads(
    monkeypatch: pytest.MonkeyPatch, sockets: Sockets, native_on: bool, kind: str
) -> None:
    server = sockets.server(kind)
    io = io_for(monkeypatch, native=native_on)(server, 32)
    assert io.native is native_on
    assert isinstance(io, NativeIO if native_on else SocketIO)
    clients = _clients(sockets, kind)
    for size in SIZES:
        by_io = _read_all(io, _send_round(clients, server, size))
        by_socket = _read_by_socket_module(server, _send_round(clients, server, size), 32)
        assert by_io == by_socket, size


@needs_native
@pytest.mark.parametrize("kind", ["unix", "udp4"])
def test_native_and_socket_io_read_the_same(
    monkeypatch: pytest.MonkeyPatch, sockets: Sockets, kind: str
) -> None:
    server = sockets.server(kind)
    native_io = io_for(monkeypatch, native=True)(server, 32)
    socket_io = io_for(monkeypatch, native=False)(server, 32)
    assert (native_io.native, socket_io.native) == (True, False)
    clients = _clients(sockets, kind)
    for size in SIZES:
        by_native = _read_all(native_io, _send_round(clients, server, size))
        by_socket = _read_all(socket_io, _send_round(clients, server, size))
        assert by_native == by_socket, size
    assert native_io.recv(False) == socket_io.recv(False) == []
    set_recv_timeout(server, 0.05)
    assert native_io.recv(True) == socket_io.recv(True) == []


# --- the senders' credentials (SO_PASSCRED), read for the acl rules -----------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="sending as another user needs root")


def _credentials_server(sockets: Sockets) -> socket.socket:
    """A server socket that passes its senders' credentials, with an abstract name (no file
    permission keeps another user from sending to it)."""
    server = sockets.abstract()
    set_recv_timeout(server, DEADLINE)
    pass_credentials(server)
    return server


def _send_as(user: str, sock: socket.socket, data: bytes, address: Any) -> int:
    """``sock.sendto(data, address)`` from a child process running as ``user`` (the socket,
    and so the peer address, is this process's); the child's pid."""
    entry = pwd.getpwnam(user)
    pid = os.fork()
    if pid == 0:  # the child: it only sends, then leaves without running pytest's exit
        code = 1
        try:
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            sock.sendto(data, address)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return pid


@needs_root
@pytest.mark.parametrize(
    "native_on",
    [pytest.param(True, marks=needs_native, id="native"), pytest.param(False, id="socket")],
)
def test_each_datagram_comes_with_its_senders_credentials(
    monkeypatch: pytest.MonkeyPatch, sockets: Sockets, native_on: bool
) -> None:
    """What the kernel says of each sender, never the one before: the same client socket
    sends as this process, then as nobody, then as this process again."""
    server = _credentials_server(sockets)
    io = io_for(monkeypatch, native=native_on)(server, 64, credentials=True)
    assert io.native is native_on
    client = sockets.unix("client")
    address, peer = server.getsockname(), client.getsockname()
    mine = (os.getpid(), os.getuid(), os.getgid())
    client.sendto(b"mine", address)
    child = _send_as("nobody", client, b"nobody's", address)
    client.sendto(b"mine again", address)
    nobody = pwd.getpwnam("nobody")
    assert _read_all(io, 3) == [
        (b"mine", peer, False, mine),
        (b"nobody's", peer, False, (child, nobody.pw_uid, nobody.pw_gid)),
        (b"mine again", peer, False, mine),
    ]


@needs_root
@needs_native
def test_serve_gives_settle_each_datagrams_sender(native: ModuleType, sockets: Sockets) -> None:
    server = _credentials_server(sockets)
    batch = native.BatchSocket(server.fileno(), server.family, 8, 64, credentials=True)
    client = sockets.unix("client")
    address, peer = server.getsockname(), client.getsockname()
    child = _send_as("nobody", client, b"guarded", address)
    client.sendto(b"open", address)
    client.sendto(b"guarded", address)
    settled: list[tuple[bytes, Any, Any]] = []

    def settle(data: bytes, handled: Any, peer: Any, credentials: Any) -> bytes:
        settled.append((data, peer, credentials))
        return b"settled"

    def answer(data: bytes) -> Any:
        return b"open" if data == b"open" else object()

    assert batch.serve(answer, True, 2, settle) == (3, 3, None)
    nobody = pwd.getpwnam("nobody")
    mine = (os.getpid(), os.getuid(), os.getgid())
    assert settled == [
        (b"guarded", peer, (child, nobody.pw_uid, nobody.pw_gid)),
        (b"guarded", peer, mine),
    ]
    assert receive(client, 3) == [b"settled", b"open", b"settled"]


@needs_native
def test_credentials_are_read_from_unix_sockets_only(native: ModuleType, sockets: Sockets) -> None:
    server = sockets.server("udp4")
    with pytest.raises(ValueError, match="credentials come with UNIX datagrams only"):
        native.BatchSocket(server.fileno(), server.family, 8, 64, credentials=True)


# --- the worker's batches, in process, with either I/O --------------------------------------


def _serve(io_factory: Callable[..., BatchIO], sockets: Sockets, tag: str = "") -> dict[str, Any]:
    """One worker serving a batch in which one client's queue is full: what each client got,
    and the worker's statistics, step by step. ``tag`` names its sockets' files."""
    server = sockets.server(name=f"srv{tag}")
    registry = with_builtins(Registry(), LocalRuntime())
    dispatcher = Dispatcher(registry, buf_size=4096)
    stats = ServerStats.declare(registry.stats)
    io = io_factory(server, dispatcher.buf_size)
    worker = Worker(server, dispatcher, stats, socket_timeout_ms=10_000, io=io)
    full, fine, unbound = sockets.unix(f"full{tag}"), sockets.abstract(), sockets.unix()
    junk = fill_queue(sockets, full.getsockname())
    plan: list[tuple[socket.socket, bytes]] = [
        (fine, request(0)),
        (full, request(100)),
        (fine, request(1)),
        (unbound, request(200)),  # cannot be answered: dropped
        (full, request(101)),
        (fine, request(2, "no_such_method")),
        (full, request(102)),
        (fine, b"{" * 5000),  # over buf_size: 400 Parse_error
        (fine, b'{"jsonrpc":"2.0","method":"version"}'),  # a notification: no reply
        (full, request(103)),
    ]
    for client, data in plan:
        client.sendto(data, server.getsockname())
    first = io.recv(True)  # what the worker's serve_once() reads, served the same way
    worker.serve_batch(first)
    while worker.serve_once():
        pass  # the rest, for the one-at-a-time I/O
    observed: dict[str, Any] = {
        "fine": drain(fine),
        "pending": worker.sender.pending(),
        "received": stats.received.value,
        "replied": stats.replied.value,
        "dropped": stats.dropped_replies.value,
        "oversize": stats.oversize_requests.value,
        "unknown": stats.unknown_methods.value,
    }
    drain_junk(full, junk)  # the client reads at last: nothing of ours came before
    deadline = time.monotonic() + DEADLINE
    while worker.sender.pending() and time.monotonic() < deadline:
        worker.serve_once()  # polls no longer than the next retry
    observed["full"] = drain(full)
    observed["pending_after"] = worker.sender.pending()
    observed["replied_after"] = stats.replied.value
    observed["first_batch"] = len(first)
    return observed


@pytest.mark.parametrize(
    "native_on",
    [pytest.param(True, marks=needs_native, id="native"), pytest.param(False, id="socket")],
)
def test_a_full_client_mid_batch_keeps_its_order_and_others_are_served(
    monkeypatch: pytest.MonkeyPatch, sockets: Sockets, native_on: bool
) -> None:
    observed = _serve(io_for(monkeypatch, native=native_on), sockets)
    assert observed["first_batch"] == (10 if native_on else 1)
    fine = observed.pop("fine")
    assert reply_ids(fine[:3]) == [0, 1, 2]
    assert orjson.loads(fine[2])["error"]["code"] == -32601
    assert fine[3:] == [b"400 Parse_error"]
    full = observed.pop("full")
    assert reply_ids(full) == [100, 101, 102, 103]  # queued, then sent in order
    assert observed == {
        "pending": 4,
        "received": 10,
        "replied": 8,  # 4 sent to `fine`, 4 queued for `full`
        "dropped": 1,  # the unbound client's
        "oversize": 1,
        "unknown": 1,
        "pending_after": 0,
        "replied_after": 8,
        "first_batch": observed["first_batch"],
    }


@needs_native
def test_native_and_socket_io_serve_the_same(
    monkeypatch: pytest.MonkeyPatch, sockets: Sockets
) -> None:
    native_run = _serve(io_for(monkeypatch, native=True), sockets, "n")
    socket_run = _serve(io_for(monkeypatch, native=False), sockets, "s")
    assert (native_run.pop("first_batch"), socket_run.pop("first_batch")) == (10, 1)
    assert native_run == socket_run


# --- whole servers ----------------------------------------------------------------------------

GOLDEN = {case.name: case for case in load_cases()}
#: Native I/O on, whatever the environment running the tests says.
NATIVE_ON = {batchio.ENV: "1"}


def _statistics(server: ServerProcess) -> dict[str, int]:
    result: dict[str, int] = server.call("get_statistics", [["mi_datagram:"]])["result"]
    return result


def _burst(server: ServerProcess, count: int) -> list[bytes]:
    """``count`` requests from one client socket without reading, then every reply."""
    with server.client() as client:
        client.sock.settimeout(DEADLINE * 2)  # a blocked sendto fails instead of hanging
        for number in range(count):
            client.send(request(number, "uptime"))
        replies: list[bytes] = []
        for _ in range(count):
            reply = client.recv(DEADLINE)
            assert reply is not None, f"{len(replies)} of {count} replies came"
            replies.append(reply)
        assert client.recv(0) is None
    return replies


def test_a_server_without_native_io_still_answers() -> None:
    env = {batchio.ENV: "0"}
    with midgram_server("--children", "1", "--timeout", "10000", env=env) as server:
        assert "WARNING midgram.server.wiring: midgram " in server.log()
        assert "; native I/O: off (MIDGRAM_NATIVE=0))" in server.log()
        with server.client() as client:
            for name in ("00_uptime", "01_which"):
                assert_matches(GOLDEN[name], client.exchange(GOLDEN[name].request))
        assert reply_ids(_burst(server, 50)) == list(range(50))


@needs_native
def test_a_native_server_answers_a_burst_in_order_and_counts_it() -> None:
    count = 200
    with midgram_server("--children", "1", "--timeout", "10000", env=NATIVE_ON) as server:
        assert "native I/O: off" not in server.log()
        before = _statistics(server)
        replies = _burst(server, count)
        after = _statistics(server)
    assert reply_ids(replies) == list(range(count))
    assert all("Up time" in orjson.loads(reply)["result"] for reply in replies)
    delta = {name: after[name] - before[name] for name in before}
    # The burst, and one get_statistics: `before`'s reply went out after it was counted,
    # `after`'s request was counted before it ran.
    assert delta["mi_datagram:received"] == count + 1
    assert delta["mi_datagram:replied"] == count + 1
    assert delta["mi_datagram:dropped_replies"] == 0


@needs_native
def test_a_server_keeps_a_full_clients_order_and_serves_the_others(sockets: Sockets) -> None:
    flags = ("--children", "1", "--timeout", "10000", "--app", "apps:mi")
    with (
        midgram_server(*flags, env=NATIVE_ON) as server,
        server.client() as full,
        server.client() as fine,
        server.client() as busy,
    ):
        junk = fill_queue(sockets, full.sock.getsockname())
        # Keep the one worker busy, so that what comes next is read as one batch.
        busy.send(orjson.dumps({"jsonrpc": "2.0", "method": "slow", "params": [0.5], "id": 9}))
        server.wait_for_log("slow command started")
        for number in range(4):
            fine.send(request(number))
            full.send(request(100 + number))
        # `fine` is answered although `full` reads nothing.
        assert reply_ids(receive(fine.sock, 4)) == [0, 1, 2, 3]
        # While replies wait for `full`, more requests from both.
        for number in range(4, 6):
            full.send(request(100 + number))
            fine.send(request(number))
        assert reply_ids(receive(fine.sock, 2)) == [4, 5]
        assert reply_ids(receive(busy.sock, 1)) == [9]
        drain_junk(full.sock, junk)
        assert reply_ids(receive(full.sock, 6)) == [100, 101, 102, 103, 104, 105]
        assert drain(full.sock) == []
        stats = _statistics(server)
    assert stats["mi_datagram:dropped_replies"] == 0
