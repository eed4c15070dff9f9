"""Where the microseconds of one request go inside a midgram worker, measured in-process.

Times each stage of the sans-IO path (no sockets) for a request, best of several repeats of
many calls each, in one Python process:

    json       orjson.loads of the datagram (the parser alone)
    decode     protocol.decode_request (parse + JSON-RPC validation + Request)
    lookup     Registry.get + bind_arguments (recipe matching, getters)
    handler    the command's function itself
    encode     protocol.encode_result (the reply bytes)
    fits       protocol.reply_fits (OpenSIPS's reply size rule)
    handle     Dispatcher.handle: all of the above, as a worker calls it
    stats      one shared-memory counter increment (a worker does 2-3 per request)
    syscalls   recvfrom + sendto of the same datagram over a UNIX socketpair, per side

Compare ``handle + 3 x stats + syscalls`` with the server CPU per request of a live run: the
rest is the worker loop itself. Run: ``python bench/micro.py [--request uptime|which|...]``.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson
from harness import REQUESTS


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


def measure(request: str = "uptime", number: int = 20000) -> dict[str, float]:
    import app  # noqa: PLC0415 (the bench commands)

    from midgram import protocol  # noqa: PLC0415 (bench/ is importable without midgram)
    from midgram.commands import Dispatcher, Registry, bind_arguments  # noqa: PLC0415
    from midgram.core import with_core  # noqa: PLC0415
    from midgram.runtime import LocalRuntime  # noqa: PLC0415

    data = REQUESTS[request].replace("%ID%", "12345").encode()
    registry = with_core(app.mi if request in ("blob", "named") else Registry(), LocalRuntime())
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
        "stats": counter_inc,
        "nothing": lambda: None,
    }
    out = {name: best_us(fn, number) for name, fn in stages.items()}
    out["syscalls"] = _syscalls_us(reply, number)
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
        print(f"{name:9} {us:7.3f} us   ({us - overhead:6.3f} without the lambda call)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
