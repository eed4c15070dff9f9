"""Real datagram sockets for the tests: ``Sockets`` opens them (UNIX files in the test's short
folder, abstract names, UDP on port 0) and closes them at teardown (the ``sockets`` fixture of
conftest.py); ``wait_readable`` waits, with a deadline, for something to read; ``receive``,
``drain``, ``fill_queue`` read and fill queues; ``request`` and ``reply_ids`` are the JSON-RPC
the tests of the I/O layer send and check.

Nothing sleeps to synchronise: a UNIX datagram is in the receiver's queue when sendto()
returns, and anything else is awaited with poll() and a deadline.
"""

from __future__ import annotations

import os
import select
import socket
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from midgram.server.binding import set_recv_timeout

#: How long a test waits for something that should happen at once.
DEADLINE = 5.0
#: The discard service's port: where a socket that must answer nobody is connected.
_DISCARD = 9


class Sockets:
    """Every socket a test opens, closed at teardown (an unclosed one is a warning = error)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = str(folder)
        self._open: list[socket.socket] = []

    def keep(self, sock: socket.socket) -> socket.socket:
        self._open.append(sock)
        return sock

    def unix(self, name: str | bytes | None = None) -> socket.socket:
        """A UNIX datagram socket: bound at ``name`` (a str is a file in the test's folder,
        or the path itself when absolute; bytes are bound as they are), or unbound."""
        sock = self.keep(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
        if isinstance(name, str):
            sock.bind(os.path.join(self.folder, name))
        elif name is not None:
            sock.bind(name)
        return sock

    def abstract(self) -> socket.socket:
        return self.unix(b"\0mgtest-" + uuid.uuid4().hex.encode())

    def udp(self, host: str = "127.0.0.1") -> socket.socket:
        """A UDP socket bound to ``host`` on the port the kernel chooses."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = self.keep(socket.socket(family, socket.SOCK_DGRAM))
        sock.bind((host, 0))
        return sock

    def unanswered(self, host: str = "127.0.0.1") -> int:
        """A UDP port of ``host`` where nobody answers, held until teardown: a socket bound
        there and connected elsewhere. Linux delivers it only what comes from where it is
        connected, so any other datagram is refused (ICMP port unreachable) as at a port
        nobody bound; and no other program can take the port meanwhile."""
        sock = self.udp(host)
        sock.connect((host, _DISCARD))
        return int(sock.getsockname()[1])

    def server(self, kind: str = "unix", name: str = "srv") -> socket.socket:
        """A server socket (``unix``, ``udp4``, ``udp6`` or ``dual``: IPv6 and IPv4 on
        ``::``) whose blocking receives give up after DEADLINE, so a receive that should not
        block fails instead of hanging."""
        if kind == "unix":
            sock = self.unix(name)
        elif kind == "dual":  # IPv4 clients come v4-mapped
            sock = self.keep(socket.socket(socket.AF_INET6, socket.SOCK_DGRAM))
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", 0))
        else:
            sock = self.udp("127.0.0.1" if kind == "udp4" else "::1")
        set_recv_timeout(sock, DEADLINE)
        return sock

    def close(self) -> None:
        for sock in self._open:
            sock.close()


def wait_readable(sock: socket.socket, timeout: float = DEADLINE) -> None:
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    if not poller.poll(int(timeout * 1000)):
        pytest.fail(f"nothing arrived within {timeout} s")


def drain(sock: socket.socket) -> list[bytes]:
    """Everything queued on ``sock`` right now."""
    got = []
    while True:
        try:
            got.append(sock.recv(1 << 17, socket.MSG_DONTWAIT))
        except BlockingIOError:
            return got


def receive(sock: socket.socket, count: int) -> list[bytes]:
    """The next ``count`` datagrams on ``sock``, each awaited with a deadline."""
    got = []
    for _ in range(count):
        wait_readable(sock)
        got.append(sock.recv(1 << 17, socket.MSG_DONTWAIT))
    return got


def drain_junk(sock: socket.socket, junk: int) -> list[bytes]:
    """The ``junk`` datagrams ``fill_queue`` sent, read off ``sock``."""
    got = [sock.recv(64, socket.MSG_DONTWAIT) for _ in range(junk)]
    assert got == [b"junk"] * junk
    return got


def fill_queue(sockets: Sockets, address: Any) -> int:
    """Fill the receive queue of the UNIX client at ``address`` with junk until it refuses
    one; how many went in. The filler stays open (its datagrams stay queued)."""
    filler = sockets.unix()
    for count in range(100_000):
        try:
            filler.sendto(b"junk", socket.MSG_DONTWAIT, address)
        except BlockingIOError:
            return count
    pytest.fail("the client's receive queue never filled up")


def request(number: int, method: str = "version") -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "method": method, "id": number})


def reply_ids(replies: list[bytes]) -> list[Any]:
    return [orjson.loads(reply)["id"] for reply in replies]
