"""The bare Python echo loop: the ceiling for any Python datagram server.

Blocking ``recvfrom`` then ``sendto`` of the same bytes, on the same kind of socket midgram
serves (UNIX datagram or UDP), with nothing else per request. With ``-n N``, N forked
processes share the socket. Logs ``listening on TARGET`` to stderr once bound; SIGTERM stops it.

    python bench/echo_py.py [-n PROCESSES] [-b BUFSIZE] TARGET
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--processes", type=int, default=1)
    parser.add_argument("-b", "--bufsize", type=int, default=65536)
    parser.add_argument("target")
    args = parser.parse_args(argv)
    sock, path = open_socket(args.target)
    n = max(1, args.processes)
    print(f"echo_py: listening on {args.target} ({n} process(es))", file=sys.stderr, flush=True)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        if n == 1:
            serve(sock, args.bufsize)
        kids = []
        for _ in range(n):
            pid = os.fork()
            if pid == 0:
                try:
                    serve(sock, args.bufsize)
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


if __name__ == "__main__":
    sys.exit(main())
