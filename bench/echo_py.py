"""The bare Python echo loop: the ceiling for any Python datagram server.

Blocking ``recvfrom`` then ``sendto`` of the same bytes, on the same kind of socket midgram
serves (UNIX datagram or UDP), with nothing else per request. With ``-n N``, N forked
processes share the socket. Logs ``listening on TARGET`` to stderr once bound (with the port
the kernel chose for port 0); SIGTERM stops it.

    python bench/echo_py.py [-n PROCESSES] [-b BUFSIZE] TARGET
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable
from types import FrameType


def open_socket(target: str) -> tuple[socket.socket, str | None]:
    """Bind a datagram socket on TARGET; returns it and the file to remove at exit, if any."""
    if target.startswith("udp:"):
        rest = target[4:]
        if rest.startswith("["):
            host, _, port = rest[1:].partition("]:")
            family = socket.AF_INET6
        else:
            host, _, port = rest.rpartition(":")
            family = socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind((host, int(port)))
        return sock, None
    path = target.removeprefix("unix:")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if path.startswith("@"):
        sock.bind("\0" + path[1:])
        return sock, None
    if os.path.exists(path):
        os.unlink(path)
    sock.bind(path)
    return sock, path


def bound_target(sock: socket.socket, target: str) -> str:
    """Where ``sock`` listens, as a target: a UDP socket's address with the port it took
    (port 0 lets the kernel choose it); ``target`` itself for a UNIX one."""
    if sock.family == socket.AF_INET6:
        host, port = sock.getsockname()[:2]
        return f"udp:[{host}]:{port}"
    if sock.family == socket.AF_INET:
        host, port = sock.getsockname()
        return f"udp:{host}:{port}"
    return target


def serve(sock: socket.socket, bufsize: int) -> None:
    recvfrom = sock.recvfrom
    sendto = sock.sendto
    while True:
        data, peer = recvfrom(bufsize)
        if peer:
            try:  # noqa: SIM105 (a with-block per request would cost more than the loop)
                sendto(data, peer)
            except OSError:  # the client is gone
                pass


def run_reference(
    name: str,
    serve_one: Callable[[socket.socket, int], None],
    argv: list[str] | None,
    description: str,
    default_bufsize: int,
) -> int:
    """The command line of a Python reference server: bind, fork ``-n`` processes that each
    run ``serve_one(sock, bufsize)``, stop them all on SIGTERM, remove the socket file."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("-n", "--processes", type=int, default=1)
    parser.add_argument("-b", "--bufsize", type=int, default=default_bufsize)
    parser.add_argument("target")
    args = parser.parse_args(argv)
    sock, path = open_socket(args.target)
    n = max(1, args.processes)
    shown = bound_target(sock, args.target)
    print(f"{name}: listening on {shown} ({n} process(es))", file=sys.stderr, flush=True)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        if n == 1:
            serve_one(sock, args.bufsize)
        kids = []
        for _ in range(n):
            pid = os.fork()
            if pid == 0:
                try:
                    serve_one(sock, args.bufsize)
                finally:
                    os._exit(0)
            kids.append(pid)
        try:
            for pid in kids:
                os.waitpid(pid, 0)
        finally:
            for pid in kids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
    except (SystemExit, KeyboardInterrupt):
        pass
    finally:
        if path is not None and os.path.exists(path):
            os.unlink(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_reference("echo_py", serve, argv, __doc__.splitlines()[0], 65536)


if __name__ == "__main__":
    sys.exit(main())
