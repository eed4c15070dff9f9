"""Real midgram servers for the tests: ``midgram serve`` in a subprocess, and a raw client.

``midgram_server(...)`` starts ``python -m midgram serve`` with the given flags, waits (with
a deadline, never a sleep) until it has announced that it listens, and stops it afterwards.
``RawClient`` sends bytes and returns the reply bytes exactly, so the tests see the wire.

A UDP server starts on port 0 (``ANY_UDP``, ``ANY_UDP6``): the kernel picks a free port when
the server binds, and the server names it where it says it listens; ``ServerProcess.target``
is then that address. No port is picked beforehand, which another program could take first.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT = 20.0
#: A server's socket_name on any free port (docs/parameters.md, "socket_name").
ANY_UDP = "udp:127.0.0.1:0"
ANY_UDP6 = "udp:[::1]:0"
# Where a server says it listens: the banner (at a terminal), or its first log line on the
# journal, which gets no banner.
_BANNER = re.compile(r"midgram listening on (.+)")
_JOURNAL_LISTENING = re.compile(
    r"<6>\[\d+\] INFO midgram.server.wiring: listening on (.+) \((?:\d+ worker\(s\)|in-process)\)"
)


def short_tmpdir() -> str:
    """A private folder with a short path: UNIX socket paths are limited to 108 bytes."""
    path = tempfile.mkdtemp(prefix="mg", dir="/tmp")
    os.chmod(path, 0o755)  # noqa: S103 - a server running as `nobody` must reach it
    return path


def wait_until(condition: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Poll ``condition`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        select.select([], [], [], 0.01)  # a tick between polls of a real condition


class RawClient:
    """A datagram client that speaks bytes: binds an abstract UNIX address, or UDP."""

    def __init__(self, target: str, *, bind: str | None = None, rcvbuf: int | None = None):
        self.target = target
        if target.startswith("udp:"):
            host, _, port = target[4:].rpartition(":")
            host = host.strip("[]")
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self.sock = socket.socket(family, socket.SOCK_DGRAM)
            self.address: Any = (host, int(port))
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.bind(bind if bind is not None else f"\0mgtest-{uuid.uuid4().hex}")
            self.address = "\0" + target[1:] if target.startswith("@") else target
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.address)

    def recv(self, timeout: float = 5.0) -> bytes | None:
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return None
        return self.sock.recv(1 << 20)

    def exchange(self, data: bytes, timeout: float = 5.0) -> bytes | None:
        self.send(data)
        return self.recv(timeout)

    def call(self, method: str, params: Any = None, req_id: Any = 1, timeout: float = 5.0) -> Any:
        request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": req_id}
        if params is not None:
            request["params"] = params
        reply = self.exchange(orjson.dumps(request), timeout)
        assert reply is not None, f"no reply to {method} from {self.target}"
        return orjson.loads(reply)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class ServerProcess:
    target: str
    proc: subprocess.Popen[bytes]
    folder: str
    lines: list[str] = field(default_factory=list)
    #: Where the server said it listens (its banner, or its log line on the journal).
    listening_on: str | None = None
    _ready: threading.Event = field(default_factory=threading.Event)

    def client(self, **kwargs: Any) -> RawClient:
        return RawClient(self.target, **kwargs)

    def call(self, method: str, params: Any = None) -> Any:
        with self.client() as client:
            return client.call(method, params)

    def log(self) -> str:
        return "".join(self.lines)

    def wait_for_log(self, text: str, timeout: float = 10.0) -> None:
        wait_until(lambda: text in self.log(), timeout, f"{text!r} in the server log")

    def worker_pids(self) -> list[int]:
        processes = self.call("ps")["result"]["Processes"]
        return [p["PID"] for p in processes if p["Type"] == "MI Datagram"]

    def worker_pids_if_answered(self, timeout: float = 1.0) -> list[int] | None:
        """``worker_pids``, or None when the ``ps`` request went unanswered: while a worker
        is being killed, the datagram it had just read dies with it."""
        with self.client() as client:
            reply = client.exchange(b'{"jsonrpc":"2.0","method":"ps","id":1}', timeout)
        if reply is None:
            return None
        processes = orjson.loads(reply)["result"]["Processes"]
        return [p["PID"] for p in processes if p["Type"] == "MI Datagram"]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace")
            self.lines.append(line)
            said = _BANNER.fullmatch(line.rstrip("\n")) or _JOURNAL_LISTENING.fullmatch(
                line.rstrip("\n")
            )
            if said and not self._ready.is_set():
                self.listening_on = said.group(1)
                self._ready.set()
        self._ready.set()  # the process ended: stop waiting either way

    @property
    def port(self) -> int:
        """The UDP port the server listens on."""
        assert self.target.startswith("udp:"), self.target
        return int(self.target.rpartition(":")[2])


def command_line(pid: int) -> str:
    """What `ps -o args` shows: a process title."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").replace(b"\0", b" ").decode()


def server_command(*flags: str) -> list[str]:
    return [sys.executable, "-m", "midgram", "serve", *flags]


@contextlib.contextmanager
def midgram_server(
    *flags: str,
    socket: str | None = None,
    env: dict[str, str] | None = None,
    stderr_pipe: tuple[int, int] | None = None,
) -> Iterator[ServerProcess]:
    """A running ``midgram serve`` (UNIX socket in a fresh short folder unless ``socket``)."""
    folder = short_tmpdir()
    target = socket or f"{folder}/mi.sock"
    try:
        with started_server(
            server_command("--socket", target, *flags),
            target,
            folder=folder,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT / "tests"), **(env or {})},
            stderr_pipe=stderr_pipe,
        ) as server:
            yield server
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def started_server(
    command: list[str],
    target: str,
    *,
    folder: str,
    cwd: str | Path,
    env: dict[str, str],
    stderr_pipe: tuple[int, int] | None = None,
) -> Iterator[ServerProcess]:
    """``command`` (a ``midgram serve`` however invoked), once it has announced that it
    listens on ``target``; stopped afterwards. ``stderr_pipe``: the (read, write) ends of a
    pipe the caller made for its stderr, to know its inode before the start (taken over)."""
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE if stderr_pipe is None else stderr_pipe[1],
        cwd=cwd,
        env=env,
    )
    if stderr_pipe is not None:
        os.close(stderr_pipe[1])
        proc.stderr = os.fdopen(stderr_pipe[0], "rb")
    server = ServerProcess(target, proc, folder)
    pump = threading.Thread(target=server._pump, daemon=True)
    pump.start()
    try:
        if not server._ready.wait(READY_TIMEOUT) or proc.poll() is not None:
            raise AssertionError(f"midgram serve did not start:\n{server.log()}")
        if _any_port(target):
            server.target = _bound(target, server.listening_on)
        yield server
    finally:
        if proc.poll() is None:
            server.stop()
        pump.join(5)
        if proc.stderr is not None:
            proc.stderr.close()


def _any_port(target: str) -> bool:
    return target.startswith("udp:") and target.rpartition(":")[2] == "0"


def _bound(asked: str, said: str | None) -> str:
    """The address a server asked to bind port 0 said it listens on: the same host, the
    port the kernel chose."""
    assert said is not None, f"{asked}: the server did not say where it listens"
    host, _, port = said.rpartition(":")
    assert host == asked.rpartition(":")[0], (asked, said)
    assert int(port) > 0, said
    return said
