"""``AsyncServer`` serves with the worker's batch loop, driven by its event loop.

On real sockets inside ``asyncio.run``: what a forked worker does by waiting (retrying the
replies a full client refused, bounding an async call by ``worker_timeout``), the server does
with the loop's timers and tasks, and the program's loop is never blocked meanwhile.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import orjson
import pytest

from midgram.config.settings import Settings
from midgram.engine.registry import Registry
from midgram.engine.stats import Stat
from midgram.server.asyncserver import AsyncServer

#: How long a test waits for what should come at once.
DEADLINE = 5.0


def call(method: str, req_id: int, params: object = None) -> bytes:
    body: dict[str, object] = {"jsonrpc": "2.0", "method": method, "id": req_id}
    if params is not None:
        body["params"] = params
    return orjson.dumps(body)


def client(path: str) -> socket.socket:
    """A non-blocking UNIX client bound at ``path`` (its replies come back there)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    return sock


def stat(registry: Registry, name: str) -> int:
    found = registry.stats.get(name)
    assert isinstance(found, Stat)
    return found.value


def fill_queue(sock: socket.socket, filler: socket.socket) -> int:
    """Junk in ``sock``'s receive queue until it refuses more; how much went in."""
    for count in range(100_000):
        try:
            filler.sendto(b"junk", socket.MSG_DONTWAIT, sock.getsockname())
        except BlockingIOError:
            return count
    pytest.fail("the client's receive queue never filled up")


def test_a_full_clients_replies_are_retried_on_the_loops_timer(folder: Path) -> None:
    # The client's queue is full: its replies wait in the ReplySender, and the loop's timer
    # (not a blocking wait) retries them once it reads again, in order; another client is
    # answered meanwhile.
    server_path = f"{folder}/mi.sock"
    settings = Settings(socket_name=server_path, socket_timeout=20_000)
    registry = Registry()

    async def scenario() -> tuple[list[int], list[int], int]:
        loop = asyncio.get_running_loop()
        full, other = client(f"{folder}/full"), client(f"{folder}/other")
        filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            async with AsyncServer(settings, registry):
                junk = fill_queue(full, filler)
                for req_id in (1, 2, 3):
                    await loop.sock_sendto(full, call("uptime", req_id), server_path)
                await loop.sock_sendto(other, call("uptime", 9), server_path)
                answered = orjson.loads(await asyncio.wait_for(loop.sock_recv(other, 1 << 16), 5))
                waiting = stat(registry, "mi_datagram:replied")
                for _ in range(junk):
                    assert full.recv(64) == b"junk"  # the client reads at last
                replies = [
                    orjson.loads(await asyncio.wait_for(loop.sock_recv(full, 1 << 16), 5))
                    for _ in range(3)
                ]
        finally:
            for sock in (full, other, filler):
                sock.close()
        return [answered["id"]], [reply["id"] for reply in replies], waiting

    answered, replies, replied = asyncio.run(scenario())
    assert answered == [9]
    assert replies == [1, 2, 3]
    assert replied == 4  # a reply queued for its client counts as sent
    assert stat(registry, "mi_datagram:dropped_replies") == 0


def test_an_async_call_past_worker_timeout_is_cancelled_and_others_answered(
    folder: Path,
) -> None:
    server_path = f"{folder}/mi.sock"
    settings = Settings(socket_name=server_path, worker_timeout=0.2)
    registry = Registry()
    cancelled = asyncio.Event()

    @registry.command()
    async def stall() -> str:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "woke"

    async def scenario() -> object:
        loop = asyncio.get_running_loop()
        sock = client(f"{folder}/c")
        try:
            async with AsyncServer(settings, registry):
                await loop.sock_sendto(sock, call("stall", 1), server_path)
                await loop.sock_sendto(sock, call("uptime", 2), server_path)
                uptime = orjson.loads(await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 5))
                await asyncio.wait_for(cancelled.wait(), DEADLINE)
                # The next reply is get_statistics': nobody answers the cancelled call.
                await loop.sock_sendto(
                    sock, call("get_statistics", 3, [["mi_datagram:"]]), server_path
                )
                stats = orjson.loads(await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 5))
        finally:
            sock.close()
        return uptime["id"], stats["id"], stats["result"]["mi_datagram:stuck_requests"]

    assert asyncio.run(scenario()) == (2, 3, 1)


def test_port_0_is_named_once_started() -> None:
    """docs/compatibility.md, difference 29: ``address`` names the port the kernel chose."""

    async def scenario() -> tuple[str, str, bytes]:
        server = AsyncServer(Settings(socket_name="udp:127.0.0.1:0"), Registry())
        asked = server.address
        async with server:
            host, _, port = server.address.removeprefix("udp:").rpartition(":")
            loop = asyncio.get_running_loop()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                await loop.sock_sendto(sock, call("uptime", 1), (host, int(port)))
                reply = await asyncio.wait_for(loop.sock_recv(sock, 65536), DEADLINE)
            return asked, server.address, reply

    asked, address, reply = asyncio.run(scenario())
    assert asked == "udp:127.0.0.1:0"
    assert address.startswith("udp:127.0.0.1:")
    assert int(address.rpartition(":")[2]) > 0
    answer = orjson.loads(reply)
    assert (answer["id"], "Up time" in answer["result"]) == (1, True)
