"""binding.py and transport.py on real sockets: UNIX paths under a short /tmp dir, abstract names,
UDP on port 0.

Nothing sleeps to synchronise: a UNIX datagram is in the receiver's queue when sendto()
returns, and anything else is awaited with poll() and a deadline. Time-dependent retry logic
runs on a fake clock.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import pwd
import socket
import stat
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from datagrams import Sockets, drain, wait_readable
from toolchain import needs_ipv6

from midgram.errors import ConfigError, SocketInUse, TransportError
from midgram.server import binding
from midgram.server.binding import (
    bind_udp,
    bind_unix,
    remove_unix,
    resolve_group,
    resolve_owner,
    resolve_udp,
    resolve_user,
    set_recv_timeout,
)
from midgram.server.transport import (
    DROP_LOG_INTERVAL,
    DropReason,
    HepSender,
    RateLimitedLog,
    Receiver,
    ReplySender,
    SendStatus,
    peer_label,
)

NOBODY = pwd.getpwnam("nobody")
NOGROUP = grp.getgrnam("nogroup").gr_gid
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: changes file owners and switches to user nobody"
)
LOGGER = "midgram.server.binding"


# --- helpers ----------------------------------------------------------------------------


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def server(folder: Path, sockets: Sockets) -> Iterator[tuple[socket.socket, str]]:
    path = os.path.join(folder, "srv")
    yield sockets.keep(bind_unix(path)), path
    remove_unix(path)


def receive(sock: socket.socket, size: int = 300_000) -> bytes:
    wait_readable(sock)
    return sock.recv(size, socket.MSG_DONTWAIT)


def fill(sender: ReplySender, addr: str) -> int:
    """Send numbered replies until the client's queue refuses one (which gets queued).

    Returns the number of that reply: 0..n-1 went out, n waits.
    """
    for number in range(100_000):
        status = sender.send(b"%d" % number, addr)
        if status is SendStatus.QUEUED:
            return number
        assert status is SendStatus.SENT
    pytest.fail("the client's receive queue never filled up")


def numbered(count: int) -> list[bytes]:
    return [b"%d" % number for number in range(count)]


def as_nobody(action: Callable[[], str]) -> str:
    """Run ``action`` in a child process that became nobody:nogroup; return its result."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(reader)
            os.setgroups([])
            os.setgid(NOGROUP)
            os.setuid(NOBODY.pw_uid)
            try:
                text = action()
            except Exception as exc:
                text = f"{type(exc).__name__}: {exc}"
            os.write(writer, text.encode())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        out = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return out.decode()


def mode_of(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# --- resolve_user / resolve_group / resolve_owner ---------------------------------------


def test_user_name_sets_uid_and_primary_group() -> None:
    assert resolve_user("nobody") == (NOBODY.pw_uid, NOBODY.pw_gid)


@pytest.mark.parametrize("spec", [65534, "65534", " 65534"])
def test_numeric_user_sets_only_the_uid(spec: str | int) -> None:
    assert resolve_user(spec) == (65534, -1)


def test_no_user_changes_nothing() -> None:
    assert resolve_user(None) == (-1, -1)
    assert resolve_user(-1) == (-1, -1)


@pytest.mark.parametrize("spec", ["no-such-user-midgram", ""])
def test_unknown_user_is_a_config_error(spec: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_user(spec)
    assert (caught.value.parameter, caught.value.value) == ("unix_socket_user", spec)
    assert caught.value.reason == "no such user"


@pytest.mark.parametrize("spec", [-2, "-5", 2**32, True])
def test_impossible_uid_is_a_config_error(spec: str | int) -> None:
    with pytest.raises(ConfigError, match="not a valid uid"):
        resolve_user(spec)


def test_group_by_name_number_or_none() -> None:
    assert resolve_group("nogroup") == NOGROUP
    assert resolve_group("10") == 10
    assert resolve_group(10) == 10
    assert resolve_group(None) == -1


def test_unknown_group_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_group("no-such-group-midgram")
    assert caught.value.parameter == "unix_socket_group"
    assert caught.value.reason == "no such group"


@pytest.mark.parametrize(
    ("user", "group", "expected"),
    [
        ("nobody", None, (NOBODY.pw_uid, NOBODY.pw_gid)),  # the name brings its group
        ("nobody", "root", (NOBODY.pw_uid, 0)),  # unless a group is given
        ("nobody", 0, (NOBODY.pw_uid, 0)),
        ("nobody", -1, (NOBODY.pw_uid, NOBODY.pw_gid)),  # -1 is "no group given"
        ("65534", None, (65534, -1)),  # a number brings no group
        (None, "nogroup", (-1, NOGROUP)),
        (None, None, (-1, -1)),
    ],
)
def test_resolve_owner_follows_opensips(
    user: str | None, group: str | int | None, expected: tuple[int, int]
) -> None:
    assert resolve_owner(user, group) == expected


# --- bind_unix ---------------------------------------------------------------------------


@needs_root
@pytest.mark.parametrize("mode", [0o600, 0o640, 0o666])
def test_bind_unix_gives_exactly_the_mode_and_owner_asked(
    folder: Path, sockets: Sockets, mode: int
) -> None:
    path = os.path.join(folder, "mi.sock")
    server = sockets.keep(bind_unix(path, mode=mode, uid=NOBODY.pw_uid, gid=NOGROUP))
    info = os.lstat(path)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == mode
    assert (info.st_uid, info.st_gid) == (NOBODY.pw_uid, NOGROUP)
    assert os.listdir(folder) == ["mi.sock"]  # no temporary name left behind
    sockets.unix().sendto(b"ping", path)
    assert receive(server) == b"ping"
    assert remove_unix(path)


def send_ping(path: str) -> Callable[[], str]:
    def send() -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            client.sendto(b"ping", path)
        return "sent"

    return send


@needs_root
def test_socket_is_unreachable_until_it_has_the_owner_and_mode_asked(
    folder: Path, sockets: Sockets, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner asked (nobody) tries to send at each step: refused until the end."""
    os.chmod(folder, 0o755)  # noqa: S103 - nobody must reach the directory
    path = os.path.join(folder, "mi.sock")
    seen: list[tuple[str, int, int, int, str]] = []

    def watch(real: Callable[..., None]) -> Callable[..., None]:
        def spy(name: str, *args: int) -> None:
            info = os.lstat(path)
            reach = as_nobody(send_ping(path))
            seen.append((real.__name__, mode_of(path), info.st_uid, info.st_gid, reach))
            real(name, *args)

        return spy

    monkeypatch.setattr(os, "chown", watch(os.chown))
    monkeypatch.setattr(os, "chmod", watch(os.chmod))
    server = sockets.keep(bind_unix(path, mode=0o660, uid=NOBODY.pw_uid, gid=NOGROUP))
    monkeypatch.undo()
    refused = "PermissionError: [Errno 13] Permission denied"
    assert seen == [
        ("chown", 0, 0, 0, refused),
        ("chmod", 0, NOBODY.pw_uid, NOGROUP, refused),
    ]
    assert as_nobody(send_ping(path)) == "sent"
    assert receive(server) == b"ping"  # the only datagram that got through
    assert remove_unix(path)


def test_replies_leave_from_the_socket_name_itself(folder: Path, sockets: Sockets) -> None:
    """A client that checks its reply's source (socat) needs it to be the name it sent to."""
    path = os.path.join(folder, "mi.sock")
    server = sockets.keep(bind_unix(path, mode=0o600))
    assert server.getsockname() == path
    client = sockets.unix(os.path.join(folder, "me"))
    client.sendto(b"ping", path)
    wait_readable(server)
    _, peer = server.recvfrom(16)
    ReplySender(server, 0).send(b"pong", peer)
    wait_readable(client)
    assert client.recvfrom(16) == (b"pong", path)
    assert remove_unix(path)


@needs_root
def test_a_name_swapped_after_the_bind_is_never_chowned_or_chmodded(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another user who can write the directory replaces what bind() just created there
    with a symbolic link leading to a root-only file: the server must refuse, and the file
    keep its owner and mode (issue: it became nobody's, mode 0660)."""
    victim = Path(folder, "victim")
    victim.write_text("secret")
    victim.chmod(0o600)
    path = os.path.join(folder, "mi.sock")
    real_bind = binding._bind

    def bind_then_swap(sock: socket.socket, name: str, *rest: str) -> None:
        real_bind(sock, name, *rest)
        entry = os.path.join(folder, os.path.relpath(name, folder).split(os.sep)[0])
        decoy = os.path.join(folder, "decoy")
        link = os.path.normpath(os.path.join(decoy, os.path.relpath(name, entry)))
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(victim, link)  # the decoy itself, or the same name inside a decoy folder
        os.rename(entry, os.path.join(folder, "moved"))
        os.symlink(decoy, entry)

    monkeypatch.setattr(binding, "_bind", bind_then_swap)
    with pytest.raises(TransportError) as caught:
        bind_unix(path, mode=0o660, uid=NOBODY.pw_uid, gid=NOGROUP)
    info = victim.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, 0, 0o600)
    assert str(caught.value) == (
        f"{path} was replaced while it was being bound (it is now a symbolic link): "
        "another user can write its directory"
    )
    assert os.readlink(path) == os.path.join(folder, "decoy")  # left alone


def test_bind_unix_without_owner_keeps_the_process_owner(folder: Path, sockets: Sockets) -> None:
    path = os.path.join(folder, "mi.sock")
    sockets.keep(bind_unix(path, mode=0o600))
    info = os.lstat(path)
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (
        os.geteuid(),
        os.getegid(),
        0o600,
    )
    assert remove_unix(path)


def test_path_of_107_bytes(folder: Path, sockets: Sockets) -> None:
    path = os.path.join(folder, "x" * (107 - len(str(folder)) - 1))
    server = sockets.keep(bind_unix(path, mode=0o600))
    assert mode_of(path) == 0o600
    sockets.unix().sendto(b"ping", path)
    assert receive(server) == b"ping"
    assert remove_unix(path)


@pytest.mark.parametrize("size", [108, 109])
def test_path_of_108_bytes_or_more_is_refused(folder: Path, size: int) -> None:
    # 108 would fit the kernel without a NUL, but no Python client could send to it.
    path = os.path.join(folder, "x" * (size - len(str(folder)) - 1))
    with pytest.raises(TransportError) as caught:
        bind_unix(path)
    assert str(caught.value) == f"socket name too long: {path} ({size} bytes, at most 107)"
    assert caught.value.target == path
    assert os.listdir(folder) == []


def test_live_socket_is_refused(server: tuple[socket.socket, str], sockets: Sockets) -> None:
    live, path = server
    with pytest.raises(SocketInUse) as caught:
        bind_unix(path)
    assert str(caught.value) == f"another server is listening on {path}"
    assert caught.value.target == path
    sockets.unix().sendto(b"still mine", path)
    assert receive(live) == b"still mine"


def test_live_stream_socket_is_refused(folder: Path, sockets: Sockets) -> None:
    path = os.path.join(folder, "stream")
    stream = sockets.keep(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    stream.bind(path)
    stream.listen()
    with pytest.raises(SocketInUse):
        bind_unix(path)


def test_stale_socket_is_replaced(
    folder: Path, sockets: Sockets, caplog: pytest.LogCaptureFixture
) -> None:
    path = os.path.join(folder, "mi.sock")
    sockets.unix(path).close()  # a crashed server's leftover
    caplog.set_level(logging.INFO, logger=LOGGER)
    server = sockets.keep(bind_unix(path))
    assert f"replacing stale socket {path}" in caplog.messages
    sockets.unix().sendto(b"new", path)
    assert receive(server) == b"new"
    assert remove_unix(path)


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda p: Path(p).write_text("keep me"), "a regular file"),
        (os.mkdir, "a directory"),
        (os.mkfifo, "a FIFO"),
    ],
)
def test_anything_but_a_socket_is_refused_and_left_alone(
    folder: Path, make: Callable[[str], object], kind: str
) -> None:
    path = os.path.join(folder, "mi.sock")
    make(path)
    before = os.lstat(path)
    with pytest.raises(TransportError) as caught:
        bind_unix(path)
    assert str(caught.value) == f"refusing to replace {path}: it is {kind}"
    after = os.lstat(path)
    assert (after.st_ino, after.st_mode, after.st_size) == (
        before.st_ino,
        before.st_mode,
        before.st_size,
    )
    assert sorted(os.listdir(folder)) == ["mi.sock"]


@pytest.mark.parametrize("target_exists", [True, False])
def test_symlink_is_refused_and_left_alone(
    folder: Path, sockets: Sockets, target_exists: bool
) -> None:
    target = os.path.join(folder, "target")
    if target_exists:
        sockets.unix(target).close()  # a stale socket, which would be replaced
    path = os.path.join(folder, "mi.sock")
    os.symlink(target, path)
    with pytest.raises(TransportError, match="it is a symbolic link"):
        bind_unix(path)
    assert os.readlink(path) == target
    assert os.path.lexists(target) is target_exists


def test_missing_directory_is_a_transport_error(folder: Path) -> None:
    path = os.path.join(folder, "nowhere", "mi.sock")
    with pytest.raises(TransportError, match=f"cannot bind {path}: No such file"):
        bind_unix(path)


@needs_root
def test_failed_chown_names_path_and_owner_and_leaves_nothing(folder: Path) -> None:
    os.chmod(folder, 0o777)  # noqa: S103 - nobody may create the socket there
    path = os.path.join(folder, "mi.sock")

    def bind_as_root_owned() -> str:
        bind_unix(path, uid=0)
        return "bound"

    assert as_nobody(bind_as_root_owned) == (
        f"TransportError: cannot change the owner of {path} to 0:-1: Operation not permitted"
    )
    assert os.listdir(folder) == []


def test_failed_chmod_leaves_nothing(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = os.path.join(folder, "mi")

    def refuse(name: str, mode: int) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "chmod", refuse)
    with pytest.raises(TransportError) as caught:
        bind_unix(path, mode=0o600)
    assert str(caught.value) == (
        f"cannot change the permissions of {path} to 0600: Operation not permitted"
    )
    assert os.listdir(folder) == []


def test_relative_path(folder: Path, sockets: Sockets, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(folder)
    server = sockets.keep(bind_unix("rel.sock", mode=0o600))
    assert mode_of(os.path.join(folder, "rel.sock")) == 0o600
    sockets.unix().sendto(b"hi", os.path.join(folder, "rel.sock"))
    assert receive(server) == b"hi"
    assert remove_unix("rel.sock")
    assert os.listdir(folder) == []


def test_abstract_name(sockets: Sockets) -> None:
    name = f"@midgram-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    server = sockets.keep(bind_unix(name, mode=0o600, uid=0))  # no file: owner/mode unused
    address = b"\0" + name[1:].encode()
    assert server.getsockname() == address
    assert not os.path.lexists(name)
    sockets.unix().sendto(b"hello", address)
    assert receive(server) == b"hello"
    with pytest.raises(SocketInUse, match=f"another server is listening on {name}"):
        bind_unix(name)


def test_abstract_name_may_use_all_108_bytes(sockets: Sockets) -> None:
    name = f"@midgram-{uuid.uuid4().hex}".ljust(108, "x")
    server = sockets.keep(bind_unix(name))
    sockets.unix().sendto(b"long", b"\0" + name[1:].encode())
    assert receive(server) == b"long"
    with pytest.raises(
        TransportError, match=r"socket name too long: .* \(109 bytes, at most 108\)"
    ):
        bind_unix(name + "x")


@pytest.mark.parametrize("path", ["", "@"])
def test_empty_name_is_refused(path: str) -> None:
    with pytest.raises(TransportError, match="empty socket name"):
        bind_unix(path)


def test_bound_sockets_stay_blocking_despite_a_default_timeout(
    folder: Path, sockets: Sockets
) -> None:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(3.0)  # would make new sockets O_NONBLOCK
    try:
        unix = sockets.keep(bind_unix(os.path.join(folder, "mi.sock")))
        udp = sockets.keep(bind_udp("127.0.0.1", 0))
    finally:
        socket.setdefaulttimeout(previous)
    for sock in (unix, udp):
        assert sock.getblocking()
        assert sock.gettimeout() is None
    remove_unix(os.path.join(folder, "mi.sock"))


# --- remove_unix ---------------------------------------------------------------------------


def test_remove_unix_removes_our_socket(folder: Path, sockets: Sockets) -> None:
    path = os.path.join(folder, "mi.sock")
    sockets.keep(bind_unix(path)).close()
    assert remove_unix(path)
    assert not os.path.lexists(path)
    assert not remove_unix(path)  # once


def test_remove_unix_keeps_a_newer_servers_socket(folder: Path, sockets: Sockets) -> None:
    path = os.path.join(folder, "mi.sock")
    sockets.keep(bind_unix(path))
    os.unlink(path)
    newer = sockets.unix(path)  # another server took the path over
    inode = os.lstat(path).st_ino
    assert not remove_unix(path)
    assert os.lstat(path).st_ino == inode
    sockets.unix().sendto(b"to the newer one", path)
    assert receive(newer) == b"to the newer one"


def test_remove_unix_ignores_paths_it_did_not_create(folder: Path, sockets: Sockets) -> None:
    path = os.path.join(folder, "foreign")
    sockets.unix(path)
    assert not remove_unix(path)
    assert os.path.lexists(path)
    assert not remove_unix("@some-abstract-name")


# --- bind_udp ------------------------------------------------------------------------------


def test_bind_udp_ipv4(sockets: Sockets) -> None:
    server = sockets.keep(bind_udp("127.0.0.1", 0))
    host, port = server.getsockname()
    assert (server.family, host) == (socket.AF_INET, "127.0.0.1")
    assert port != 0
    sockets.udp().sendto(b"v4", (host, port))
    assert receive(server) == b"v4"


@needs_ipv6
@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_bind_udp_ipv6(sockets: Sockets, host: str) -> None:
    server = sockets.keep(bind_udp(host, 0))
    assert server.family == socket.AF_INET6
    assert server.getsockname()[0] == "::1"
    sockets.udp("::1").sendto(b"v6", server.getsockname()[:2])
    assert receive(server) == b"v6"


def test_bind_udp_by_name(sockets: Sockets) -> None:
    server = sockets.keep(bind_udp("localhost", 0))
    assert server.getsockname()[0] in {"127.0.0.1", "::1"}


def test_bind_udp_unknown_host() -> None:
    with pytest.raises(TransportError) as caught:
        bind_udp("no-such-host.invalid", 8080)
    assert str(caught.value) == "failed to resolve no-such-host.invalid"
    assert caught.value.target == "no-such-host.invalid"


def test_bind_udp_port_in_use(sockets: Sockets) -> None:
    port = sockets.keep(bind_udp("127.0.0.1", 0)).getsockname()[1]
    with pytest.raises(TransportError) as caught:
        bind_udp("127.0.0.1", port)
    assert str(caught.value) == f"cannot bind udp:127.0.0.1:{port}: Address already in use"
    assert caught.value.target == f"udp:127.0.0.1:{port}"


@pytest.mark.parametrize("port", [-1, 65536])
def test_bind_udp_impossible_port(port: int) -> None:
    with pytest.raises(TransportError, match="invalid port number"):
        bind_udp("127.0.0.1", port)


# --- set_recv_timeout and Receiver ---------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "timeval"), [(0.2, (0, 200_000)), (1.5, (1, 500_000)), (0, (0, 0))]
)
def test_set_recv_timeout_sets_so_rcvtimeo(
    sockets: Sockets, seconds: float, timeval: tuple[int, int]
) -> None:
    sock = sockets.unix()
    set_recv_timeout(sock, seconds)
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.calcsize("@ll"))
    assert struct.unpack("@ll", raw) == timeval
    assert sock.getblocking()


def test_tiny_recv_timeout_does_not_mean_forever(sockets: Sockets) -> None:
    sock = sockets.unix()
    set_recv_timeout(sock, 1e-9)
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.calcsize("@ll"))
    assert struct.unpack("@ll", raw) != (0, 0)  # the kernel rounds it up to a jiffy


def test_set_recv_timeout_refuses_negative(sockets: Sockets) -> None:
    with pytest.raises(ValueError, match="negative"):
        set_recv_timeout(sockets.unix(), -1)


def test_blocked_recv_wakes_up_after_the_timeout(server: tuple[socket.socket, str]) -> None:
    sock, _ = server
    set_recv_timeout(sock, 0.05)
    started = time.monotonic()
    assert Receiver(sock, 64).recv(block=True) is None
    assert 0.04 <= time.monotonic() - started < 5
    assert sock.getblocking()


def test_non_blocking_recv_leaves_the_shared_socket_blocking(
    server: tuple[socket.socket, str],
) -> None:
    sock, _ = server
    assert Receiver(sock, 64).recv(block=False) is None
    assert sock.getblocking()


def test_recv_returns_data_and_peer(server: tuple[socket.socket, str], folder: Path) -> None:
    sock, path = server
    client_path = os.path.join(folder, "cli")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.bind(client_path)
        client.sendto(b'{"jsonrpc":"2.0","method":"ps","id":1}', path)
    assert Receiver(sock, 65457).recv() == (
        b'{"jsonrpc":"2.0","method":"ps","id":1}',
        client_path,
        False,
        None,
    )


@pytest.mark.parametrize(
    ("size", "truncated"), [(0, False), (1, False), (64, False), (65, True), (1000, True)]
)
def test_recv_detects_oversize_unix(
    server: tuple[socket.socket, str], sockets: Sockets, size: int, truncated: bool
) -> None:
    sock, path = server
    payload = bytes(range(256)) * 4
    sockets.unix().sendto(payload[:size], path)
    sockets.unix().sendto(b"next", path)
    receiver = Receiver(sock, 64)
    assert receiver.recv(block=False) == (payload[: min(size, 64)], None, truncated, None)
    assert receiver.recv(block=False) == (b"next", None, False, None)  # no remainder left


def test_recv_detects_70000_bytes_with_the_default_buffer(
    server: tuple[socket.socket, str], sockets: Sockets
) -> None:
    sock, path = server
    sockets.unix().sendto(b"x" * 70_000, path)
    data, _, truncated, _ = Receiver(sock, 65457).recv(block=False) or (b"", None, False, None)
    assert truncated
    assert len(data) == 65457


@pytest.mark.parametrize(("size", "truncated"), [(0, False), (64, False), (65, True)])
def test_recv_detects_oversize_udp(sockets: Sockets, size: int, truncated: bool) -> None:
    server = sockets.keep(bind_udp("127.0.0.1", 0))
    client = sockets.udp()
    client.sendto(b"y" * size, server.getsockname())
    wait_readable(server)
    assert Receiver(server, 64).recv(block=False) == (
        b"y" * min(size, 64),
        ("127.0.0.1", client.getsockname()[1]),
        truncated,
        None,
    )


def test_recv_on_a_closed_socket_is_a_transport_error(sockets: Sockets) -> None:
    sock = sockets.unix()
    receiver = Receiver(sock, 64)
    sock.close()
    with pytest.raises(TransportError, match="cannot receive"):
        receiver.recv(block=False)


def test_receiver_needs_a_buffer(sockets: Sockets) -> None:
    with pytest.raises(ValueError, match="at least one byte"):
        Receiver(sockets.unix(), 0)


# --- ReplySender ---------------------------------------------------------------------------


@pytest.fixture
def client(folder: Path, sockets: Sockets) -> tuple[socket.socket, str]:
    """A UNIX client bound to a path, that reads only when the test says so."""
    path = os.path.join(folder, "cli")
    return sockets.unix(path), path


def test_reply_is_sent(
    server: tuple[socket.socket, str], client: tuple[socket.socket, str]
) -> None:
    sender = ReplySender(server[0], 2000)
    assert sender.send(b"reply", client[1]) is SendStatus.SENT
    assert receive(client[0]) == b"reply"
    assert sender.pending() == 0
    assert sender.next_retry_in() is None


def test_full_client_queue_is_retried_and_delivered_in_order(
    server: tuple[socket.socket, str], client: tuple[socket.socket, str]
) -> None:
    clock = FakeClock()
    drops: list[str] = []
    sender = ReplySender(server[0], 2000, clock=clock, on_drop=drops.append)
    first_queued = fill(sender, client[1])
    got = [client[0].recv(64)]  # room for one more now, but the queued one must go first
    assert sender.send(b"%d" % (first_queued + 1), client[1]) is SendStatus.QUEUED
    assert sender.send(b"%d" % (first_queued + 2), client[1]) is SendStatus.QUEUED
    assert sender.pending() == 3
    give_up = time.monotonic() + 5
    while sender.pending():
        assert time.monotonic() < give_up
        got += drain(client[0])
        wait = sender.next_retry_in()
        assert wait is not None
        clock.advance(wait)
        sender.retry_due()
    got += drain(client[0])
    assert got == numbered(first_queued + 3)
    assert drops == []
    assert sender.next_retry_in() is None


def test_other_clients_are_served_while_one_is_full(
    server: tuple[socket.socket, str], client: tuple[socket.socket, str], folder: Path
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as other:
        other.bind(os.path.join(folder, "other"))
        sender = ReplySender(server[0], 2000, clock=FakeClock())
        fill(sender, client[1])
        assert sender.send(b"for other", os.path.join(folder, "other")) is SendStatus.SENT
        assert receive(other) == b"for other"


def test_retries_back_off_and_the_last_one_falls_on_the_deadline(
    server: tuple[socket.socket, str], client: tuple[socket.socket, str]
) -> None:
    clock = FakeClock()
    drops: list[str] = []
    sender = ReplySender(server[0], 200, clock=clock, on_drop=drops.append)
    fill(sender, client[1])
    waits = []
    while sender.pending():
        wait = sender.next_retry_in()
        assert wait is not None
        waits.append(wait)
        clock.advance(wait + 1e-9)  # just past the due time, whatever the float rounding
        sender.retry_due()
    # 50 us first (a reading client drains at once), doubling to 50 ms, the last on the deadline.
    expected = [5e-05, 0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256]
    assert waits == pytest.approx([*expected, 0.05, 0.05, 0.04885])
    assert drops == ["timeout"]


def test_a_wake_up_retries_at_once_and_a_failed_one_keeps_the_back_off(
    server: tuple[socket.socket, str], client: tuple[socket.socket, str]
) -> None:
    """A datagram coming in (``woken``) retries every waiting reply without waiting for its
    back-off (issue 16: a deep queue's replies waited up to 50 ms); while the client's queue
    stays full, such tries leave the back-off as it was."""
    clock = FakeClock()
    sender = ReplySender(server[0], 2000, clock=clock)
    first_queued = fill(sender, client[1])
    for _ in range(6):  # the back-off grows while the client reads nothing
        wait = sender.next_retry_in()
        assert wait is not None
        clock.advance(wait + 1e-9)
        sender.retry_due()
    backed_off = sender.next_retry_in()
    assert backed_off == pytest.approx(0.0032)
    sender.retry_due(woken=True)  # still full: nothing sent, the back-off unchanged
    assert (sender.pending(), sender.next_retry_in()) == (1, backed_off)
    got = drain(client[0])
    sender.retry_due()  # not due: the reply waits on
    assert sender.pending() == 1
    sender.retry_due(woken=True)  # the same instant, woken: it goes
    assert sender.pending() == 0
    assert got + drain(client[0]) == numbered(first_queued + 1)


def test_last_try_at_the_deadline_still_delivers(
    server: tuple[socket.socket, str], client: tuple[socket.socket, str]
) -> None:
    clock = FakeClock()
    sender = ReplySender(server[0], 200, clock=clock)
    deadline = clock.now + 200 / 1000  # the same sum the sender computes
    queued = fill(sender, client[1])
    got = drain(client[0])
    clock.now = deadline
    sender.retry_due()
    assert sender.pending() == 0
    assert got + drain(client[0]) == numbered(queued + 1)


def test_queued_replies_expire_after_socket_timeout(
    server: tuple[socket.socket, str],
    client: tuple[socket.socket, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    drops: list[str] = []
    sender = ReplySender(server[0], 100, clock=clock, on_drop=drops.append)
    queued = fill(sender, client[1])
    sender.send(b"late 1", client[1])
    sender.send(b"late 2", client[1])
    clock.advance(0.101)
    got = drain(client[0])  # room now, but too late
    sender.retry_due()
    assert sender.pending() == 0
    assert drops == ["timeout"] * 3
    assert got + drain(client[0]) == numbered(queued)
    assert "the client's queue stayed full for socket_timeout (100 ms)" in caplog.text


def test_socket_timeout_zero_never_retries(
    server: tuple[socket.socket, str], client: tuple[socket.socket, str]
) -> None:
    drops: list[str] = []
    sender = ReplySender(server[0], 0, on_drop=drops.append)
    statuses = [sender.send(b"%d" % n, client[1]) for n in range(100)]
    assert SendStatus.DROPPED in statuses
    assert SendStatus.QUEUED not in statuses
    assert sender.pending() == 0
    assert set(drops) == {"timeout"}


def test_overflow_drops_beyond_max_pending(
    server: tuple[socket.socket, str], client: tuple[socket.socket, str]
) -> None:
    drops: list[str] = []
    sender = ReplySender(server[0], 2000, max_pending=2, on_drop=drops.append)
    fill(sender, client[1])
    assert sender.send(b"second", client[1]) is SendStatus.QUEUED
    assert sender.send(b"third", client[1]) is SendStatus.DROPPED
    assert sender.pending() == 2
    assert drops == ["overflow"]


@pytest.mark.parametrize("how", ["closed", "removed"])
def test_vanished_client_is_dropped(
    server: tuple[socket.socket, str], client: tuple[socket.socket, str], how: str
) -> None:
    client[0].close()  # the file stays: ECONNREFUSED
    if how == "removed":
        os.unlink(client[1])  # ENOENT
    drops: list[str] = []
    sender = ReplySender(server[0], 2000, on_drop=drops.append)
    assert sender.send(b"reply", client[1]) is SendStatus.DROPPED
    assert drops == ["vanished"]


def test_client_vanishing_while_its_replies_wait(
    server: tuple[socket.socket, str], client: tuple[socket.socket, str]
) -> None:
    clock = FakeClock()
    drops: list[str] = []
    sender = ReplySender(server[0], 2000, clock=clock, on_drop=drops.append)
    fill(sender, client[1])
    sender.send(b"more", client[1])
    client[0].close()
    os.unlink(client[1])
    clock.advance(0.001)
    sender.retry_due()
    assert sender.pending() == 0
    assert drops == ["vanished", "vanished"]


def test_unbound_client_cannot_be_answered(
    server: tuple[socket.socket, str], sockets: Sockets, caplog: pytest.LogCaptureFixture
) -> None:
    sock, path = server
    sockets.unix().sendto(b"request", path)  # never bound: no address to reply to
    item = Receiver(sock, 64).recv(block=False)
    assert item is not None
    drops: list[str] = []
    sender = ReplySender(sock, 2000, on_drop=drops.append)
    assert sender.send(b"reply", item[1]) is SendStatus.DROPPED
    for peer in ("", b""):
        assert sender.send(b"reply", peer) is SendStatus.DROPPED
    assert drops == ["unbound"] * 3
    assert "cannot reply to (unbound): the client did not bind its socket" in caplog.messages


def test_connected_client_gets_its_reply(
    server: tuple[socket.socket, str], client: tuple[socket.socket, str], sockets: Sockets
) -> None:
    sock, path = server
    client_sock, client_path = client
    client_sock.connect(path)  # from now on it accepts datagrams from the server socket only
    client_sock.send(b"request")
    item = Receiver(sock, 64).recv(block=False)
    assert item == (b"request", client_path, False, None)
    assert ReplySender(sock, 2000).send(b"reply", item[1]) is SendStatus.SENT
    assert receive(client_sock) == b"reply"
    # What OpenSIPS does, replying from a second socket, fails with EPERM:
    drops: list[str] = []
    other = ReplySender(sockets.unix(), 2000, on_drop=drops.append)
    assert other.send(b"reply", client_path) is SendStatus.DROPPED
    assert drops == ["permission"]


@needs_root
def test_client_socket_not_writable_by_the_server_user(
    folder: Path, client: tuple[socket.socket, str]
) -> None:
    os.chmod(folder, 0o711)  # noqa: S103 - nobody may look the path up ...
    os.chmod(client[1], 0o700)  # ... but not write to root's socket
    name = f"@midgram-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def reply_as_nobody() -> str:
        drops: list[str] = []
        with bind_unix(name) as sock:
            status = ReplySender(sock, 2000, on_drop=drops.append).send(b"reply", client[1])
        return f"{status.name} {drops}"

    assert as_nobody(reply_as_nobody) == "DROPPED ['permission']"
    assert drain(client[0]) == []


def test_reply_too_big_for_a_unix_socket(
    server: tuple[socket.socket, str], client: tuple[socket.socket, str]
) -> None:
    drops: list[str] = []
    sender = ReplySender(server[0], 2000, on_drop=drops.append)
    assert sender.send(b"x" * 1_000_000, client[1]) is SendStatus.DROPPED
    assert drops == ["too_big"]


def test_reply_too_big_for_udp(sockets: Sockets) -> None:
    server = sockets.keep(bind_udp("127.0.0.1", 0))
    drops: list[str] = []
    sender = ReplySender(server, 2000, on_drop=drops.append)
    assert sender.send(b"x" * 70_000, ("127.0.0.1", 9)) is SendStatus.DROPPED
    assert drops == ["too_big"]


@pytest.mark.parametrize("host", ["127.0.0.1", pytest.param("::1", marks=needs_ipv6)])
def test_udp_reply_goes_back_to_the_source(sockets: Sockets, host: str) -> None:
    server = sockets.keep(bind_udp(host, 0))
    client = sockets.udp(host)
    client.sendto(b"request", server.getsockname())
    wait_readable(server)
    item = Receiver(server, 64).recv(block=False)
    assert item is not None
    assert ReplySender(server, 2000).send(b"reply", item[1]) is SendStatus.SENT
    wait_readable(client)
    assert client.recvfrom(64) == (b"reply", server.getsockname())


class _FailingSocket:
    """Stands in for a socket whose sendto() fails with one errno."""

    def __init__(self, code: int) -> None:
        self.code = code

    def sendto(self, *_args: Any) -> int:
        raise OSError(self.code, os.strerror(self.code))


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (errno.ENOENT, "vanished"),
        (errno.ECONNREFUSED, "vanished"),
        (errno.EHOSTUNREACH, "vanished"),
        (errno.EACCES, "permission"),
        (errno.EPERM, "permission"),
        (errno.EMSGSIZE, "too_big"),
        (errno.EIO, "error"),
    ],
)
def test_send_errors_map_to_drop_reasons(code: int, reason: str) -> None:
    drops: list[str] = []
    sender = ReplySender(cast(socket.socket, _FailingSocket(code)), 2000, on_drop=drops.append)
    assert sender.send(b"reply", "/tmp/client") is SendStatus.DROPPED
    assert drops == [reason]


@pytest.mark.parametrize("code", [errno.EAGAIN, errno.ENOBUFS])
def test_send_errors_that_mean_full_are_queued(code: int) -> None:
    sender = ReplySender(cast(socket.socket, _FailingSocket(code)), 2000)
    assert sender.send(b"reply", ("127.0.0.1", 5060)) is SendStatus.QUEUED
    assert sender.pending() == 1


def test_permission_drop_logs_the_hint(caplog: pytest.LogCaptureFixture) -> None:
    sender = ReplySender(cast(socket.socket, _FailingSocket(errno.EACCES)), 2000)
    sender.send(b"reply", "/tmp/opensips_mi_reply_x")
    assert caplog.messages == [
        "cannot write to the client's socket /tmp/opensips_mi_reply_x: the client must create "
        "its reply socket writable by the server's user (e.g. mode 0666 or a shared group) "
        "(Permission denied)"
    ]


def test_drops_are_logged_rate_limited_but_all_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    drops: list[str] = []
    sender = ReplySender(
        cast(socket.socket, _FailingSocket(errno.ENOENT)), 2000, clock=clock, on_drop=drops.append
    )
    for _ in range(5):
        sender.send(b"reply", "/tmp/gone")
    assert len(caplog.records) == 1
    clock.advance(DROP_LOG_INTERVAL)
    sender.send(b"reply", "/tmp/gone")
    assert caplog.messages[-1].endswith("(4 similar messages suppressed)")
    assert len(caplog.records) == 2
    assert drops == ["vanished"] * 6


def test_rate_limited_log_counts_per_key(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    limited = RateLimitedLog(logging.getLogger("test.ratelimit"), 10.0, clock=clock)
    assert limited.log("a", logging.WARNING, "a %s", 1)
    assert limited.log("b", logging.WARNING, "b %s", 1)  # another key has its own window
    assert not limited.log("a", logging.WARNING, "a %s", 2)
    assert not limited.log("a", logging.WARNING, "a %s", 3)
    clock.advance(9.999)
    assert not limited.log("a", logging.WARNING, "a %s", 4)
    clock.advance(0.001)
    assert limited.log("a", logging.WARNING, "a %s", 5)
    clock.advance(10)
    assert limited.log("a", logging.WARNING, "a %s", 6)
    assert caplog.messages == ["a 1", "b 1", "a 5 (3 similar messages suppressed)", "a 6"]


def test_drop_reasons_are_plain_strings() -> None:
    assert {str(reason) for reason in DropReason} == {
        "vanished",
        "permission",
        "unbound",
        "too_big",
        "timeout",
        "overflow",
        "not_reading",
        "no_room",
        "error",
    }


@pytest.mark.parametrize(
    ("address", "label"),
    [
        ("/tmp/x.sock", "/tmp/x.sock"),
        (b"\0abc", "@abc"),
        (("127.0.0.1", 5060), "127.0.0.1:5060"),
        (("::1", 5060, 0, 0), "[::1]:5060"),
        (None, "(unbound)"),
        ("", "(unbound)"),
    ],
)
def test_peer_label(address: str | bytes | tuple[Any, ...] | None, label: str) -> None:
    assert peer_label(address) == label


# --- the HEP sender ------------------------------------------------------------------------


def test_resolve_udp() -> None:
    assert resolve_udp("127.0.0.1", 9060) == (socket.AF_INET, ("127.0.0.1", 9060))
    family, address = resolve_udp("::1", 9060)
    assert (family, address[:2]) == (socket.AF_INET6, ("::1", 9060))
    assert resolve_udp("localhost", 9)[1][1] == 9
    with pytest.raises(TransportError, match=r"failed to resolve no-such-host\.invalid"):
        resolve_udp("no-such-host.invalid", 9060)


def test_hep_sender_sends_datagrams() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as collector:
        collector.bind(("127.0.0.1", 0))
        sender = HepSender(socket.AF_INET, collector.getsockname())
        try:
            assert sender.send(b"HEP3 one")
            assert sender.send(b"HEP3 two")
            collector.settimeout(5)
            assert [collector.recv(100), collector.recv(100)] == [b"HEP3 one", b"HEP3 two"]
        finally:
            sender.close()


def test_hep_sender_failures_are_logged_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    # The broadcast address without SO_BROADCAST: every send fails (EACCES), at once.
    sender = HepSender(socket.AF_INET, ("255.255.255.255", 9), clock=lambda: now[0])
    try:
        assert [sender.send(b"x") for _ in range(5)] == [False] * 5
        now[0] = DROP_LOG_INTERVAL
        assert not sender.send(b"x")
    finally:
        sender.close()
    assert caplog.messages == [
        "cannot send a HEP trace to 255.255.255.255:9: Permission denied",
        "cannot send a HEP trace to 255.255.255.255:9: Permission denied "
        "(4 similar messages suppressed)",
    ]


def test_hep_sender_never_blocks() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as collector:
        collector.bind(("127.0.0.1", 0))
        collector.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sender = HepSender(socket.AF_INET, collector.getsockname())
        try:
            started = time.monotonic()
            # Nobody reads: the collector's queue fills and the kernel drops, never waits.
            sent = [sender.send(b"x" * 1000) for _ in range(2000)]
            assert time.monotonic() - started < 5
            assert any(sent)
        finally:
            sender.close()
