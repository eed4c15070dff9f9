"""The default socket, ``/tmp/midgram-UID.sock`` without ``XDG_RUNTIME_DIR``: any local user
can create a file there first. The user here is ``daemon`` (uid 1: its default socket is
``/tmp/midgram-1.sock``, which nothing else on this machine uses), the squatter ``nobody``;
both run as themselves through ``tests/as_user.py``.
"""

from __future__ import annotations

import os
import pwd
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import ROOT, wait_until

from midgram.config.settings import Settings
from midgram.errors import TransportError
from midgram.server.wiring import open_socket

AS_USER = str(Path(__file__).with_name("as_user.py"))
USER = pwd.getpwnam("daemon")
DEFAULT = f"/tmp/midgram-{USER.pw_uid}.sock"
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


def as_user(command: str, user: str, *args: str) -> subprocess.Popen[str]:
    """``tests/as_user.py COMMAND USER ARGS`` with no XDG_RUNTIME_DIR and no MIDGRAM_TARGET:
    the default socket is in /tmp."""
    env = {k: v for k, v in os.environ.items() if k not in {"XDG_RUNTIME_DIR", "MIDGRAM_TARGET"}}
    return subprocess.Popen(
        [sys.executable, AS_USER, command, user, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT / "tests")},
    )


def midgram_as(user: str, *args: str) -> subprocess.CompletedProcess[str]:
    proc = as_user("cli", user, *args)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait_for_line(proc: subprocess.Popen[str], text: str, *, stderr: bool = False) -> None:
    """Read ``proc``'s output until a line holds ``text``, for at most 20 s."""
    pipe = proc.stderr if stderr else proc.stdout
    assert pipe is not None
    # From the descriptor: a buffered readline may take two lines at once, and select then
    # waits on an empty pipe for the line already read.
    fd = pipe.fileno()
    deadline = time.monotonic() + 20
    seen = ""
    while text not in seen:
        if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        seen += chunk.decode(errors="replace")
    assert text in seen, f"did not start: {seen!r}"


@pytest.fixture
def free_default() -> Iterator[None]:
    """No socket at DEFAULT, before and after; a dead one left by an interrupted run goes."""
    if os.path.lexists(DEFAULT):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect(DEFAULT)
            except ConnectionRefusedError:
                os.unlink(DEFAULT)
            else:
                pytest.fail(f"a live socket is at {DEFAULT}: another run is using it")
    yield
    wait_until(lambda: not os.path.lexists(DEFAULT), what=f"{DEFAULT} to be removed")


@pytest.fixture
def squatter(free_default: None) -> Iterator[None]:
    """nobody's server, bound first at daemon's default socket, which anyone may write to,
    answering every call."""
    proc = as_user("serve", "nobody", DEFAULT, "0666")
    try:
        wait_for_line(proc, "ready")
        yield
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


def test_a_client_does_not_call_a_default_socket_another_user_owns(squatter: None) -> None:
    """`midgram call uptime` printed the squatter's reply with exit 0."""
    done = midgram_as("daemon", "call", "uptime")
    assert (done.returncode, done.stdout) == (4, ""), done.stderr
    assert done.stderr.splitlines() == [
        f"midgram: cannot reach {DEFAULT}: it belongs to uid 65534 (nobody), not to uid 1 "
        "(daemon); another user may have put it there: not calling it"
    ]


def test_a_server_refuses_a_default_socket_another_user_owns(squatter: None) -> None:
    done = midgram_as("daemon", "serve", "--children", "0")
    assert done.returncode == 4, done.stderr
    assert done.stderr.splitlines() == [
        f"midgram: refusing the default socket {DEFAULT}: it belongs to uid 65534 (nobody), "
        "not to uid 1 (daemon); another user may have put it there: choose another socket_name"
    ]


def test_the_users_own_default_socket_serves_and_is_called(free_default: None) -> None:
    server = as_user("cli", "daemon", "serve", "--children", "1")
    try:
        wait_for_line(server, f"midgram listening on {DEFAULT}", stderr=True)
        done = midgram_as("daemon", "call", "pwd")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f'{{"WD":"{ROOT}"}}'
    finally:
        server.terminate()
        server.communicate(timeout=20)


def test_a_default_directory_of_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """XDG_RUNTIME_DIR must be the user's own (or root's): nobody's cannot hold root's socket."""
    folder = tmp_path / "run"
    folder.mkdir()
    os.chown(folder, pwd.getpwnam("nobody").pw_uid, -1)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(folder))
    with pytest.raises(TransportError) as caught:
        open_socket(Settings())
    assert str(caught.value) == (
        f"refusing the default socket {folder}/midgram.sock: its directory {folder} belongs "
        "to uid 65534 (nobody); another user may have put it there: choose another socket_name"
    )
    assert list(folder.iterdir()) == []
