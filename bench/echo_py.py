"""The bare Python echo loop: the ceiling for any Python datagram server.

Blocking ``recvfrom`` then ``sendto`` of the same bytes, on the same kind of socket midgram
serves (UNIX datagram or UDP), with nothing else per request. With ``-n N``, N forked
processes share the socket. Logs ``listening on TARGET`` to stderr once bound (with the port
the kernel chose for port 0); SIGTERM stops it.

With ``--reply-size N`` each reply is N bytes of JSON more than the request, which it ends
with (``{"pad":"xx...","echo":REQUEST}``: the load generator reads the last ``"id"``), built
for each request: the cost of sending a big reply from a bare Python loop (the reference of
the ``reply-60k`` scenario).

With ``--copies-to udp:HOST:PORT`` each request is also sent to that address twice, before
and after its reply, from a UDP socket connected to it: what a bare Python loop pays for the
two packets of HEP tracing (the reference of the ``tracing`` scenario, with its sink).

    python bench/echo_py.py [-n PROCESSES] [-b BUFSIZE] [--reply-size N | --copies-to ADDR] TARGET
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


def padded(size: int) -> Callable[[socket.socket, int], None]:
    """``serve``, each reply ``size`` bytes longer than the request and ending with it."""
    head = b'{"pad":"' + b"x" * max(0, size - 18) + b'","echo":'

    def serve_padded(sock: socket.socket, bufsize: int) -> None:
        recvfrom = sock.recvfrom
        sendto = sock.sendto
        while True:
            data, peer = recvfrom(bufsize)
            if peer:
                try:  # noqa: SIM105 (as in serve)
                    sendto(head + data + b"}", peer)
                except OSError:
                    pass

    return serve_padded


def copying(address: str) -> Callable[[socket.socket, int], None]:
    """``serve``, each request also sent to ``address`` (udp:HOST:PORT) before and after its
    reply."""
    host, _, port = address.removeprefix("udp:").rpartition(":")

    def serve_copying(sock: socket.socket, bufsize: int) -> None:
        copies = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        copies.connect((host, int(port)))
        copy = copies.send
        recvfrom = sock.recvfrom
        sendto = sock.sendto
        while True:
            data, peer = recvfrom(bufsize)
            try:  # noqa: SIM105 (as in serve)
                copy(data)
            except OSError:
                pass
            if peer:
                try:  # noqa: SIM105 (as in serve)
                    sendto(data, peer)
                except OSError:
                    pass
            try:  # noqa: SIM105 (as in serve)
                copy(data)
            except OSError:
                pass

    return serve_copying


def _variant(
    serve_one: Callable[[socket.socket, int], None], args: argparse.Namespace
) -> Callable[[socket.socket, int], None]:
    """``serve_one``, or the variant of the echo loop the options ask for."""
    if getattr(args, "reply_size", 0) > 0:
        return padded(args.reply_size)
    if getattr(args, "copies_to", None):
        return copying(args.copies_to)
    return serve_one


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
    if serve_one is serve:
        parser.add_argument("--reply-size", type=int, default=0, help="see the docstring")
        parser.add_argument("--copies-to", metavar="udp:HOST:PORT", help="see the docstring")
    parser.add_argument("target")
    args = parser.parse_args(argv)
    serve_one = _variant(serve_one, args)
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
