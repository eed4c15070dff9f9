"""Where the microseconds of one request go inside a midgram worker, measured in-process.

Times each stage of the sans-IO path (no sockets) for a request, best of several repeats of
many calls each, in one Python process:

    json       orjson.loads of the datagram (the parser alone)
    decode     protocol.decode_request (parse + JSON-RPC validation + Request)
    lookup     Registry.get + bind_arguments (recipe matching, getters)
    handler    the command's function itself
    encode     protocol.encode_result (the reply bytes)
    fits       protocol.reply_fits (OpenSIPS's reply size rule)
    handle     Dispatcher.handle: all of the above, through the general path
    answer     Dispatcher.answer: the same request as a Python worker serves it (the flat path)
    native     the same through FastAnswer, which reads a bare call in C (what a worker with
               the native module runs; absent without it)
    stats      one shared-memory counter increment (a worker does 2-3 per request)
    syscalls   recvfrom + sendto of the same datagram over a UNIX socketpair, per side
    echo_loop  recvfrom + sendto as the echo loop does them, from a queue of waiting requests
    worker     Worker.serve_once on the same queue: midgram's whole per-request path with its
               real syscalls (the native batch loop when the module builds), minus the
               cross-process wake-ups of a live run

``worker - echo_loop`` is what midgram adds to the ceiling for any Python server; ``worker -
answer - echo_loop`` is the worker loop's own share. Run: ``python bench/micro.py
[--request uptime|which|...]``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson
from harness import REQUESTS

STAGES_BY_LAMBDA = (
    *("json", "decode", "lookup", "handler", "encode", "fits", "handle", "answer", "native"),
    "stats",
)


def best_us(fn: Callable[[], object], number: int, repeat: int = 5) -> float:
    """Microseconds per call: the best of ``repeat`` rounds of ``number`` calls."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter_ns() - t0) / number / 1000)
    return best


def _syscalls_us(data: bytes, number: int) -> float:
    """One side's recvfrom + sendto: half a ping-pong over a UNIX datagram socketpair."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:

        def pingpong() -> None:
            a.send(data)
            b.recvfrom(65536)
            b.send(data)
            a.recvfrom(65536)

        return best_us(pingpong, number) / 2


def _queue_pair() -> tuple[socket.socket, socket.socket]:
    """A client and a server socket, bound (abstract) and connected to each other: no
    net.unix.max_dgram_qlen limit either way, so whole batches of requests can wait."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(f"\0midgram-micro-{os.getpid()}")
    client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    client.bind("")
    client.connect(server.getsockname())
    server.connect(client.getsockname())
    for s in (client, server):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    return client, server


def per_request_us(
    client: socket.socket, data: bytes, serve_all: Callable[[int], object], batch: int = 100
) -> float:
    """Microseconds per request for ``serve_all(batch)`` with ``batch`` requests waiting, best
    of 5 x 50."""
    best = float("inf")
    for _ in range(5):
        elapsed = 0
        for _ in range(50):
            for _ in range(batch):
                client.send(data)
            t0 = time.perf_counter_ns()
            serve_all(batch)
            elapsed += time.perf_counter_ns() - t0
            for _ in range(batch):
                client.recv(70000)
        best = min(best, elapsed / (50 * batch) / 1000)
    return best


def measure_loops(data: bytes, registry: Any, dispatcher: Any) -> dict[str, float]:
    from midgram.server.worker import ServerStats, Worker  # noqa: PLC0415

    client, server = _queue_pair()
    with client, server:
        recvfrom, sendto = server.recvfrom, server.sendto

        def echo(count: int) -> None:
            for _ in range(count):
                request, peer = recvfrom(65458)
                sendto(request, peer)

        worker = Worker(
            server, dispatcher, ServerStats.declare(registry.stats), socket_timeout_ms=2000
        )

        received = worker.stats.received

        def serve(count: int) -> None:
            done = received.value + count
            while received.value < done:
                worker.serve_once()

        return {
            "echo_loop": per_request_us(client, data, echo),
            "worker": per_request_us(client, data, serve),
        }


def _native_stage(dispatcher: Any, data: bytes) -> dict[str, Callable[[], object]]:
    from midgram.server.batchio import native_status  # noqa: PLC0415

    if not native_status().on:
        return {}
    from midgram.server import _batchio  # noqa: PLC0415

    fast = dispatcher.answer_function(_batchio.FastAnswer)
    return {"native": lambda: fast(data)}


def measure(request: str = "uptime", number: int = 20000) -> dict[str, float]:
    import app  # noqa: PLC0415 (the bench commands)

    from midgram.engine.builtins import with_builtins  # noqa: PLC0415
    from midgram.engine.dispatch import Dispatcher  # noqa: PLC0415
    from midgram.engine.registry import Registry, bind_arguments  # noqa: PLC0415
    from midgram.engine.runtime import LocalRuntime  # noqa: PLC0415
    from midgram.wire import jsonrpc as protocol  # noqa: PLC0415 (bench/ is importable without midgram)

    data = REQUESTS[request].replace("%ID%", "12345").encode()
    registry = with_builtins(app.mi if request in ("blob", "named") else Registry(), LocalRuntime())
    dispatcher = Dispatcher(registry)
    call = protocol.decode_request(data)
    assert isinstance(call, protocol.Request)
    command = registry.get(call.method)
    assert command is not None
    kwargs = bind_arguments(command, call.params)
    result: Any = command.handler(**kwargs)
    reply = protocol.encode_result(result, call.id)
    counter = registry.stats.counter("bench:micro")
    counter_inc = counter.inc

    def lookup() -> object:
        found = registry.get(call.method)
        assert found is not None
        return bind_arguments(found, call.params)

    stages: dict[str, Callable[[], object]] = {
        "json": lambda: orjson.loads(data),
        "decode": lambda: protocol.decode_request(data),
        "lookup": lookup,
        "handler": lambda: command.handler(**kwargs),
        "encode": lambda: protocol.encode_result(result, call.id),
        "fits": lambda: protocol.reply_fits(reply, call.id, protocol.DEFAULT_BUF_SIZE),
        "handle": lambda: dispatcher.handle(data),
        "answer": lambda: dispatcher.answer(data),
        **_native_stage(dispatcher, data),
        "stats": counter_inc,
        "nothing": lambda: None,
    }
    out = {name: best_us(fn, number) for name, fn in stages.items()}
    out["syscalls"] = _syscalls_us(reply, number)
    out.update(measure_loops(data, registry, dispatcher))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--request", default="uptime", choices=sorted(REQUESTS))
    parser.add_argument("--number", type=int, default=20000)
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    result = measure(args.request, args.number)
    if args.json:
        print(json.dumps(result))
        return 0
    overhead = result["nothing"]
    for name, us in result.items():
        lambda_free = us - overhead if name in STAGES_BY_LAMBDA else us
        print(f"{name:9} {lambda_free:7.3f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
