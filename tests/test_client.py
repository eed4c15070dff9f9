"""Client and AsyncClient against the real midgram server (UNIX, abstract, UDP v4/v6), and
against peers that misbehave on purpose: silent, missing, refusing, answering out of turn."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import pwd
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from datagrams import Sockets
from servers import ANY_UDP, ANY_UDP6, ROOT, ServerProcess, midgram_server, short_tmpdir

from midgram.client.calls import AsyncClient, Client
from midgram.client.exchange import Exchange
from midgram.errors import (
    AddressError,
    BadReply,
    ConnectError,
    PlainTextError,
    RemoteError,
    ReplyTimeout,
    RequestTooLarge,
)
from midgram.local import default_target

APP = ("--app", "apps:mi")
# A slack for timing assertions on a loaded 2-core CI machine.
SLACK = 2.0


@pytest.fixture(scope="module", params=["unix", "abstract", "udp4", "udp6"])
def any_server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    sockets = {
        "unix": None,
        "abstract": f"@mgtest-{os.getpid()}-{time.monotonic_ns()}",
        "udp4": ANY_UDP,
        "udp6": ANY_UDP6,
    }
    with midgram_server(*APP, socket=sockets[request.param]) as server:
        yield server


# --- calls --------------------------------------------------------------------------------


def test_call_every_transport(any_server: ServerProcess) -> None:
    client = Client(any_server.target, timeout=5)
    assert set(client.call("uptime")) >= {"Now", "Up since", "Up time"}
    assert client.call("which", "uptime") == [[]]
    assert client.call("which", command="log_level") == [[], ["level"], ["level", "pid"]]
    assert "uptime" in client.methods()
    assert client.recipes("big") == [["size"]]
    assert client.help("uptime")["Exported by"] == "core"
    if any_server.target.startswith("udp:127.0.0.1:"):
        # A host name (from /etc/hosts: no DNS query leaves the machine).
        by_name = any_server.target.replace("127.0.0.1", "localhost")
        assert Client(by_name, timeout=5).call("big", 2) == "xx"


def test_async_call_every_transport(any_server: ServerProcess) -> None:
    async def main() -> object:
        async with AsyncClient(any_server.target, timeout=5) as client:
            assert "uptime" in await client.methods()
            return await client.call("big", 10)

    assert asyncio.run(main()) == "x" * 10


def test_error_replies(midgram: ServerProcess) -> None:
    client = Client(midgram.target, timeout=5)
    with pytest.raises(RemoteError) as missing:
        client.call("no_such_command")
    assert (missing.value.code, missing.value.message) == (-32601, "Method not found")
    with pytest.raises(RemoteError) as wrong:
        client.call("ps", "x")
    assert (wrong.value.code, wrong.value.data) == (-32602, "Too few or too many parameters")
    with pytest.raises(RemoteError) as unknown:
        client.call("which", "no_such_command")
    assert (unknown.value.code, unknown.value.message) == (404, "unknown MI command")


def test_a_60_kb_reply(any_server: ServerProcess) -> None:
    assert Client(any_server.target, timeout=5).call("big", 60_000) == "x" * 60_000


def test_reply_too_big_for_the_server_is_a_plain_text_error(midgram: ServerProcess) -> None:
    with pytest.raises(PlainTextError) as caught:
        Client(midgram.target, timeout=5).call("big", 70_000)
    assert (caught.value.status, caught.value.text) == (500, "500 Internal error")


def test_request_too_big_for_the_server_is_a_plain_text_error(
    midgram: ServerProcess,
) -> None:
    with pytest.raises(PlainTextError) as caught:
        Client(midgram.target, timeout=5).call("which", "x" * 70_000)
    assert caught.value.text == "400 Parse_error"


def test_truncated_reply_is_detected_not_misparsed(any_server: ServerProcess) -> None:
    client = Client(any_server.target, timeout=5, bufsize=4096)
    with pytest.raises(BadReply, match="truncated"):
        client.call("big", 10_000)
    assert client.call("big", 100) == "x" * 100  # small replies still fit


def test_fractional_timeout_and_per_call_timeout(midgram: ServerProcess) -> None:
    client = Client(midgram.target, timeout=0.25)
    started = time.monotonic()
    with pytest.raises(ReplyTimeout) as caught:
        client.call("slow", 2)
    assert 0.25 <= time.monotonic() - started < 0.25 + SLACK
    assert caught.value.target == midgram.target
    assert midgram.target in str(caught.value)
    assert client.request("slow", {"seconds": 0.05}, timeout=5) == {"slept": 0.05}


def test_on_exchange_shows_bytes_and_timing(midgram: ServerProcess) -> None:
    seen: list[Exchange] = []
    Client(midgram.target, timeout=5, on_exchange=seen.append).call("which", "ps")
    (exchange,) = seen
    assert exchange.target == midgram.target
    assert exchange.request.startswith(b'{"jsonrpc":"2.0","method":"which","params":["ps"]')
    assert exchange.reply is not None
    assert exchange.reply.startswith(b'{"jsonrpc":"2.0","result":[[]],"id":')
    assert 0 < exchange.elapsed < 5


def test_reply_dir_instead_of_the_abstract_namespace(midgram: ServerProcess, folder: Path) -> None:
    client = Client(midgram.target, timeout=5, reply_dir=str(folder))
    assert client.call("big", 3) == "xxx"
    assert list(folder.iterdir()) == []  # nothing left behind


def test_notifications_get_no_reply_and_do_not_break_the_client(
    midgram: ServerProcess,
) -> None:
    client = Client(midgram.target, timeout=5)
    client.notify("uptime")
    assert client.call("big", 1) == "x"


# --- concurrency ---------------------------------------------------------------------------


def test_many_threads_share_one_client(any_server: ServerProcess) -> None:
    client = Client(any_server.target, timeout=10)
    sizes = [1 + n % 97 * 37 for n in range(400)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda size: client.call("big", size), sizes))
    assert [len(r) for r in results] == sizes


def test_many_tasks_share_one_async_client(any_server: ServerProcess) -> None:
    # UDP has no flow control: 400 requests at once overflow a socket buffer on a loaded
    # machine and are lost, as UDP may. 100 at once still share one client deeply.
    count = 100 if any_server.target.startswith("udp:") else 400
    sizes = [1 + n % 89 * 41 for n in range(count)]

    async def main() -> list[str]:
        client = AsyncClient(any_server.target, timeout=10)
        return await asyncio.gather(*(client.call("big", size) for size in sizes))

    assert [len(r) for r in asyncio.run(main())] == sizes


def test_cancelling_a_task_closes_its_call(midgram: ServerProcess) -> None:
    async def main() -> None:
        client = AsyncClient(midgram.target, timeout=10)
        slow = asyncio.create_task(client.call("slow", 1))
        fast = await client.call("big", 2)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        assert fast == "xx"

    asyncio.run(main())


# --- peers that never answer, or cannot be reached -----------------------------------------


@contextlib.contextmanager
def silent_peer(kind: str, folder: Path) -> Iterator[str]:
    """A bound socket that nobody reads: requests go in, nothing comes back."""
    if kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(folder / "silent.sock"))
        target = str(folder / "silent.sock")
    else:
        family, host = (socket.AF_INET6, "::1") if kind == "udp6" else (socket.AF_INET, "127.0.0.1")
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind((host, 0))
        target = (
            f"udp:[{host}]:{sock.getsockname()[1]}"
            if kind == "udp6"
            else (f"udp:{host}:{sock.getsockname()[1]}")
        )
    with sock:
        yield target


@pytest.mark.parametrize("kind", ["unix", "udp4", "udp6"])
def test_a_server_that_never_answers(kind: str, folder: Path) -> None:
    with silent_peer(kind, folder) as target:
        started = time.monotonic()
        with pytest.raises(ReplyTimeout) as caught:
            Client(target, timeout=0.2).call("uptime")
        assert 0.2 <= time.monotonic() - started < 0.2 + SLACK
        assert str(caught.value) == f"no reply from {target} within 0.2 s"

        async def main() -> None:
            await AsyncClient(target, timeout=0.15).call("uptime")

        started = time.monotonic()
        with pytest.raises(ReplyTimeout):
            asyncio.run(main())
        assert 0.15 <= time.monotonic() - started < 0.15 + SLACK


def unreachable(target: str) -> ConnectError:
    with pytest.raises(ConnectError) as caught:
        Client(target, timeout=2).call("uptime")
    with pytest.raises(ConnectError) as caught_async:
        asyncio.run(AsyncClient(target, timeout=2).call("uptime"))
    assert caught_async.value.errno == caught.value.errno
    assert caught.value.target == target
    return caught.value


def test_missing_socket(folder: Path) -> None:
    error = unreachable(str(folder / "none.sock"))
    assert error.errno == errno.ENOENT
    assert str(error) == f"cannot reach {folder}/none.sock: No such file or directory"


def test_stale_socket_file(folder: Path) -> None:
    path = str(folder / "stale.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as gone:
        gone.bind(path)
    assert unreachable(path).errno == errno.ECONNREFUSED


def test_stream_socket_is_not_a_datagram_server(folder: Path) -> None:
    path = str(folder / "stream.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stream:
        stream.bind(path)
        stream.listen()
        assert unreachable(path).errno == errno.EPROTOTYPE


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]"])
def test_udp_port_with_nobody_listening(host: str, sockets: Sockets) -> None:
    port = sockets.unanswered(host.strip("[]"))
    started = time.monotonic()
    assert unreachable(f"udp:{host}:{port}").errno == errno.ECONNREFUSED
    assert time.monotonic() - started < 2  # told at once by ICMP, not a timeout


def test_request_too_big_for_udp() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        target = f"udp:127.0.0.1:{sock.getsockname()[1]}"
        with pytest.raises(
            RequestTooLarge, match=r"the request \(700\d\d bytes\) is too large"
        ) as info:
            Client(target, timeout=1).call("which", "x" * 70_000)
    assert "a UDP datagram carries at most 65507 bytes" in str(info.value)


# --- replies out of turn -------------------------------------------------------------------


@contextlib.contextmanager
def scripted_peer(
    folder: Path, replies: list[bytes], sender: socket.socket | None = None
) -> Iterator[str]:
    """A UNIX peer that answers each request with ``replies`` (``{id}`` filled in), from its
    own socket or from ``sender`` (OpenSIPS answers from an unbound one)."""
    path = str(folder / "peer.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)

    def answer() -> None:
        with contextlib.suppress(OSError):
            data, peer = sock.recvfrom(65536)
            request_id = data.rsplit(b'"id":', 1)[1].rstrip(b"}")
            for reply in replies:
                (sender or sock).sendto(reply.replace(b"{id}", request_id), peer)

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        yield path
    finally:
        thread.join(10)
        sock.close()


def test_stray_replies_are_skipped(folder: Path) -> None:
    replies = [
        b'{"jsonrpc":"2.0","result":"stale","id":12}',
        b'{"jsonrpc":"2.0","result":"no id"}',
        b'{"jsonrpc":"2.0","result":"mine","id":{id}}',
    ]
    with scripted_peer(folder, replies) as target:
        assert Client(target, timeout=5).call("uptime") == "mine"


def test_a_reply_from_an_unbound_socket_of_the_callers_user_is_accepted(folder: Path) -> None:
    """OpenSIPS sends its UNIX replies from a separate, unbound socket: accepted when the
    kernel says its sender is the caller's own user, root or the socket file's owner."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unbound:
        replies = [b'{"jsonrpc":"2.0","result":"from opensips","id":{id}}']
        with scripted_peer(folder, replies, sender=unbound) as target:
            assert Client(target, timeout=5).call("uptime") == "from opensips"


@pytest.mark.parametrize(
    ("name", "label"),
    [("elsewhere.sock", None), (b"\0evil\x1b[2J\nFORGED", "@evil\\x1b[2J\\nFORGED")],
    ids=["path", "abstract"],
)
def test_a_reply_from_another_address_is_ignored_and_named(
    folder: Path, name: str | bytes, label: str | None
) -> None:
    """A server answering from a socket other than the one called (a renamed socket, another
    spelling of the path) is not heard, and the timeout says why, naming the sender as the
    server's log lines do: the client wrote an abstract name raw (an escape sequence or a
    line break in it reached the terminal)."""
    address = str(folder / name) if isinstance(name, str) else name
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as elsewhere:
        elsewhere.bind(address)
        replies = [b'{"jsonrpc":"2.0","result":"elsewhere","id":{id}}']
        with (
            scripted_peer(folder, replies, sender=elsewhere) as target,
            pytest.raises(ReplyTimeout) as caught,
        ):
            Client(target, timeout=0.5).call("uptime")
    assert str(caught.value) == (
        f"no reply from {target} within 0.5 s (a reply from {label or address} was ignored: "
        "not the address called)"
    )


def test_garbage_reply_is_a_bad_reply(folder: Path) -> None:
    with scripted_peer(folder, [b"\x00\x01garbage"]) as target, pytest.raises(BadReply):
        Client(target, timeout=5).call("uptime")


# --- construction --------------------------------------------------------------------------


def test_default_target_is_the_servers_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert default_target() == "/run/user/1000/midgram.sock"
    assert Client().target == "/run/user/1000/midgram.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert Client().target == f"/tmp/midgram-{os.getuid()}.sock"


def test_bad_arguments() -> None:
    with pytest.raises(AddressError):
        Client("udp:127.0.0.1")
    for timeout in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="timeout"):
            Client("/x.sock", timeout=timeout)
    with pytest.raises(ValueError, match="dialect"):
        Client("/x.sock", dialect="sip")
    with pytest.raises(TypeError, match="not both"):
        Client("/x.sock").call("x", 1, a=2)
    assert repr(Client("@mi")) == "Client('@mi', dialect='opensips')"
    assert Client("udp:[0:0::1]:8080").target == "udp:[::1]:8080"


def test_the_package_exports_the_clients() -> None:
    import midgram

    assert (midgram.Client, midgram.AsyncClient) == (Client, AsyncClient)


def test_dry_run_encoding_has_a_fresh_id() -> None:
    client = Client("/x.sock")
    first, second = client.encode("ps"), client.encode("ps")
    assert first != second
    assert first.startswith(b'{"jsonrpc":"2.0","method":"ps","id":')


# --- a server running as another user -------------------------------------------------------

AS_USER = str(Path(__file__).with_name("as_user.py"))
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


@contextlib.contextmanager
def server_as(user: str, folder: Path) -> Iterator[str]:
    """``midgram.server.wiring.serve`` as ``user`` on a socket in ``folder``; yields its target."""
    os.chown(folder, pwd.getpwnam(user).pw_uid, -1)
    target = str(folder / "mi.sock")
    proc = subprocess.Popen(
        [sys.executable, AS_USER, "serve", user, target],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 20
        # serve() logs to stderr (here merged) before it is ready. Read the descriptor
        # itself: a buffered readline() could hold the "ready" line while select() waits.
        shown = b""
        while not any(line.startswith(b"ready") for line in shown.splitlines()):
            left = max(deadline - time.monotonic(), 0)
            ready, _, _ = select.select([proc.stdout], [], [], left)
            chunk = os.read(proc.stdout.fileno(), 4096) if ready else b""
            assert chunk, f"the server did not start: {shown.decode(errors='replace')}"
            shown += chunk
        yield target
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


@needs_root
def test_a_server_running_as_another_user_can_answer(folder: Path) -> None:
    with server_as("nobody", folder) as target:
        assert os.stat(target).st_uid == pwd.getpwnam("nobody").pw_uid
        # The default: an abstract reply address, which any user can send to.
        assert Client(target, timeout=5).call("big", 3) == "xxx"
        # reply_dir: a private directory the server can still reach into.
        replies = Path(short_tmpdir())
        try:
            assert Client(target, timeout=5, reply_dir=str(replies)).call("big", 2) == "xx"
            assert list(replies.iterdir()) == []
        finally:
            shutil.rmtree(replies)
        # The control, as python-opensips binds: a socket nobody may not write to. No reply.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            private = Path(short_tmpdir())
            private.chmod(0o700)
            try:
                sock.bind(str(private / "reply.sock"))
                sock.settimeout(0.5)
                sock.sendto(b'{"jsonrpc":"2.0","method":"big","params":[1],"id":1}', target)
                with pytest.raises(TimeoutError):
                    sock.recv(65536)
            finally:
                shutil.rmtree(private)


def forge_before_sending(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make ``nobody`` send forged replies to each call's reply address just before the
    request goes out, as a user reading /proc/net/unix (or /proc/net/udp) can: they are
    then first in the queue. Returns the addresses forged to."""
    import midgram.client.calls as client_module

    real_send = Client._send
    forged: list[str] = []

    def forge_then_send(self: Client, sock: socket.socket, call: Any, sockaddr: Any) -> None:
        if sock.family != socket.AF_UNIX:
            sock.bind((sockaddr[0], 0))  # the port the first send would pick
        address = sock.getsockname()
        if isinstance(address, tuple):
            host = f"[{address[0]}]" if ":" in address[0] else address[0]
            text = f"udp:{host}:{address[1]}"
        else:
            text = "@" + address[1:].decode()
        done = subprocess.run(
            [sys.executable, AS_USER, "forge", "nobody", text],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.stdout == "forged\n", done.stderr
        forged.append(text)
        real_send(self, sock, call, sockaddr)

    monkeypatch.setattr(client_module.Client, "_send", forge_then_send)
    return forged


@needs_root
def test_replies_forged_by_another_user_are_ignored(
    any_server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any local user could answer a call first: an error with a null id, or a plain-text
    error, was taken for the server's reply (5 forgeries out of 5)."""
    forged = forge_before_sending(monkeypatch)
    client = Client(any_server.target, timeout=5)
    for _ in range(5):
        assert client.call("pwd") == {"WD": str(ROOT)}
    assert len(forged) == 5


@needs_root
def test_an_ignored_unbound_sender_is_named_as_the_server_logs_it(
    folder: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An unbound sender was "an unbound socket of another user" here and "(unbound)" in
    the server's log: one name, and the reason it was ignored."""
    caplog.set_level(logging.DEBUG, logger="midgram.client.exchange")
    forge_before_sending(monkeypatch)
    replies = [b'{"jsonrpc":"2.0","result":"mine","id":{id}}']
    with scripted_peer(folder, replies) as target:
        assert Client(target, timeout=5).call("uptime") == "mine"
    ignored = [m.split(": ", 1)[1] for m in caplog.messages if "was ignored" in m]
    assert ignored[0] == (
        "a reply from (unbound) was ignored: not from root, this user or the socket's owner"
    )
    assert ignored[1].startswith("a reply from @")
    assert ignored[1].endswith(" was ignored: not the address called")


@needs_root
def test_permission_denied_is_reported_as_such() -> None:
    with midgram_server("--mode", "0600") as server:
        done = subprocess.run(
            [sys.executable, AS_USER, "call", "nobody", server.target, "uptime"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    assert json.loads(done.stdout) == {"error": "ConnectError", "errno": errno.EACCES}
