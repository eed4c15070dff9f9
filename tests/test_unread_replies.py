"""Replies nobody reads never hold the server hostage (issue 15 item 2).

A UNIX datagram stays charged to the server socket's send buffer until its client reads it.
Fifteen sockets that each asked for ten 60 KB replies and never read once filled it: every
other client then got no answer at all (0 of 20), native I/O or not, ``--timeout 0`` or not.
Now big replies meet a budget (``midgram.server.budget``), and these tests hold real ``midgram
serve`` processes, and ReplySender on real sockets, to it.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from servers import ANY_UDP, ServerProcess, midgram_server, wait_until

from midgram.server.binding import SO_SNDBUFFORCE, bind_unix, enlarge_send_buffer
from midgram.server.budget import PEER_SHARE, RESERVE_SHARE, SMALL_REPLY, SendBudget, unread_bytes
from midgram.server.transport import DropReason, ReplySender, SendStatus

HOSTILE_SOCKETS = 15
REQUESTS_EACH = 10
ID_BYTES = 60_000


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def hostile_requests(target: str, sockets: list[socket.socket]) -> None:
    """Fifteen sockets, each sending ten ``uptime`` calls with a 60,000-byte string id, and
    never reading."""
    udp = target.startswith("udp:")
    for k in range(HOSTILE_SOCKETS):
        if udp:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            address: Any = ("127.0.0.1", int(target.rpartition(":")[2]))
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(f"\0mgtest-hostile-{uuid.uuid4().hex}")
            address = target
        sockets.append(sock)
        sock.settimeout(10)  # the server's queue is short: wait until a worker reads
        for i in range(REQUESTS_EACH):
            rid = f"{k}-{i}-" + "x" * ID_BYTES
            sock.sendto(orjson.dumps({"jsonrpc": "2.0", "method": "uptime", "id": rid}), address)


def good_answers(server: ServerProcess, calls: int = 20) -> int:
    answered = 0
    with server.client() as client:
        for i in range(calls):
            reply = client.exchange(b'{"jsonrpc":"2.0","method":"uptime","id":%d}' % i, 1.0)
            answered += reply is not None and orjson.loads(reply)["id"] == i
    return answered


def statistic(server: ServerProcess, name: str) -> int:
    value: int = server.call("get_statistics", [[name]])["result"][f"mi_datagram:{name}"]
    return value


@pytest.fixture
def hostile() -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    yield sockets
    for sock in sockets:
        sock.close()


@pytest.mark.parametrize("native", ["1", "0"], ids=["native", "python"])
@pytest.mark.parametrize("timeout", ["2s", "0"])
def test_clients_that_never_read_big_replies_leave_the_others_answered(
    hostile: list[socket.socket], native: str, timeout: str
) -> None:
    with midgram_server(
        "--children", "2", "--timeout", timeout, env={"MIDGRAM_NATIVE": native}
    ) as server:
        hostile_requests(server.target, hostile)
        assert good_answers(server) >= 19
        # What could not go is counted once dropped (at once, or after socket_timeout).
        wait_until(lambda: statistic(server, "withheld_replies") > 0, 10, "withheld replies")
        assert good_answers(server) >= 19


def test_over_udp_clients_that_never_read_change_nothing(hostile: list[socket.socket]) -> None:
    """A UDP reply is not charged to the server once delivered: no budget applies."""
    with midgram_server("--children", "2", socket=ANY_UDP) as server:
        hostile_requests(server.target, hostile)
        assert good_answers(server) >= 19
        assert statistic(server, "withheld_replies") == 0


# --- the budget, on real sockets -------------------------------------------------------------


class Bench:
    """A server socket with a small send buffer, its sender, and clients to reply to."""

    def __init__(self, folder: Path, timeout_ms: int = 2000) -> None:
        self.folder = folder
        self.server = bind_unix(os.path.join(folder, "srv"))
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 60_000)
        self.budget = SendBudget(self.server)
        self.clock = FakeClock()
        self.drops: list[str] = []
        self.sender = ReplySender(
            self.server, timeout_ms, clock=self.clock, on_drop=self.drops.append, budget=self.budget
        )
        self.clients: list[socket.socket] = []

    def client(self, name: str) -> tuple[socket.socket, str]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        path = os.path.join(self.folder, name)
        sock.bind(path)
        self.clients.append(sock)
        return sock, path

    def later(self, seconds: float) -> None:
        self.clock.now += seconds
        self.sender.retry_due()

    def close(self) -> None:
        for sock in [self.server, *self.clients]:
            sock.close()


@pytest.fixture
def bench(folder: Path) -> Iterator[Bench]:
    made = Bench(folder)
    yield made
    made.close()


def big(size: int = 20_000) -> bytes:
    return b"x" * size


def test_the_budget_follows_the_buffer_the_kernel_granted(bench: Bench) -> None:
    budget = bench.budget
    assert budget.size == bench.server.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    assert budget.limit == budget.size - budget.size // RESERVE_SHARE
    assert budget.share == budget.limit // PEER_SHARE
    assert unread_bytes(bench.server.fileno()) == 0


def test_small_replies_go_while_unread_big_ones_fill_their_share(bench: Bench) -> None:
    statuses = []
    for n in range(6):  # six clients that never read
        _, path = bench.client(f"idle{n}")
        statuses.append(bench.sender.send(big(), path))
    assert SendStatus.QUEUED in statuses  # the big share is full: the rest waits
    assert unread_bytes(bench.server.fileno()) <= bench.budget.limit
    reader, path = bench.client("reader")
    for n in range(20):
        assert bench.sender.send(b"small %d" % n, path) is SendStatus.SENT
        assert reader.recv(100) == b"small %d" % n
    bench.later(2.1)  # socket_timeout: the waiting big replies are dropped, and say why
    assert bench.sender.pending() == 0
    assert set(bench.drops) == {DropReason.NO_ROOM.value}


def test_one_client_holds_at_most_its_share_and_gets_more_once_it_reads(bench: Bench) -> None:
    reader, path = bench.client("reader")
    assert bench.sender.send(big(), path) is SendStatus.SENT  # it held nothing: one goes
    assert bench.sender.send(big(), path) is SendStatus.QUEUED  # beyond its share: waits
    assert reader.recv(100_000) == big()
    bench.later(0.01)
    assert bench.sender.pending() == 0
    assert reader.recv(100_000) == big()
    assert bench.drops == []


def test_a_big_reply_to_a_client_whose_queue_is_full_is_dropped_at_once(bench: Bench) -> None:
    _, path = bench.client("idle")
    queued = 0
    while bench.sender.send(b"small", path) is SendStatus.SENT:
        queued += 1
    assert queued == 11  # net.unix.max_dgram_qlen (10) + 1
    assert bench.sender.send(big(SMALL_REPLY + 1), path) is SendStatus.QUEUED  # behind "small"
    _, other = bench.client("other-idle")
    while bench.sender.send(b"small", other) is SendStatus.SENT:
        pass
    bench.sender.retry_due()  # nothing sent: the small ones stay queued, within their time
    assert DropReason.NOT_READING.value not in bench.drops
    _, fresh = bench.client("fresh-idle")
    for _ in range(11):
        bench.server.sendto(b"small", fresh)
    assert bench.sender.send(big(SMALL_REPLY + 1), fresh) is SendStatus.DROPPED
    assert bench.drops[-1] == DropReason.NOT_READING.value


def test_without_socket_timeout_a_big_reply_with_no_room_is_dropped_at_once(folder: Path) -> None:
    bench = Bench(folder, timeout_ms=0)
    try:
        _, path = bench.client("idle")
        assert bench.sender.send(big(), path) is SendStatus.SENT
        assert bench.sender.send(big(), path) is SendStatus.DROPPED
        assert bench.drops == [DropReason.NO_ROOM.value]
    finally:
        bench.close()


def test_the_bytes_waiting_in_a_worker_are_bounded(bench: Bench) -> None:
    _, path = bench.client("idle")
    sender = ReplySender(
        bench.server, 2000, clock=bench.clock, max_pending_bytes=50_000, budget=bench.budget
    )
    statuses = [sender.send(big(), path) for _ in range(5)]
    assert (
        statuses
        == [SendStatus.SENT, SendStatus.QUEUED, SendStatus.QUEUED] + [SendStatus.DROPPED] * 2
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="SO_SNDBUFFORCE needs CAP_NET_ADMIN")
def test_a_privileged_server_gets_a_send_buffer_beyond_wmem_max() -> None:
    with open("/proc/sys/net/core/wmem_max") as limit:
        wmem_max = int(limit.read())
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        assert enlarge_send_buffer(sock, 2 * wmem_max) == 4 * wmem_max
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 4 * wmem_max
    assert SO_SNDBUFFORCE == 32  # asm-generic/socket.h
