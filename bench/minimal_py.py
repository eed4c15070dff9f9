"""The minimal pure-Python MI loop: the wall a pure-Python server hits.

Per request: ``recvfrom``, ``orjson.loads``, the ``jsonrpc``/``method`` checks, a dict lookup,
the handler (``uptime``, its ``ctime`` strings cached per second), one ``orjson.dumps`` of the
whole reply and ``sendto``; no statistics, no error replies, no size rule, no recipes. What is
left between it and the bare echo loop is Python's per-request work itself; what is between
midgram and it is midgram's. Same socket kinds and flags as ``echo_py.py``.

    python bench/minimal_py.py [-n PROCESSES] TARGET
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import orjson
from echo_py import run_reference

STARTED = time.time()
SINCE = time.ctime(STARTED)
_now: list[Any] = [0, ""]


def uptime() -> dict[str, str]:
    now = time.time()
    second = int(now)
    if second != _now[0]:
        _now[0] = second
        _now[1] = time.ctime(now)
    return {"Now": _now[1], "Up since": SINCE, "Up time": f"{second - int(STARTED)} [sec]"}


HANDLERS: dict[str, Callable[..., Any]] = {"uptime": uptime}


def serve(sock: Any, bufsize: int) -> None:
    recvfrom, sendto = sock.recvfrom, sock.sendto
    loads, dumps, handlers = orjson.loads, orjson.dumps, HANDLERS
    while True:
        data, peer = recvfrom(bufsize)
        try:
            request = loads(data)
            handler = handlers[request["method"]]
            if request["jsonrpc"] != "2.0":
                continue
            params = request.get("params")
            result = (
                handler(**params)
                if type(params) is dict and params
                else handler(*params)
                if params
                else handler()
            )
            sendto(dumps({"jsonrpc": "2.0", "result": result, "id": request["id"]}), peer)
        except Exception:  # noqa: S112 (the happy path only: anything else goes unanswered)
            continue


def main(argv: list[str] | None = None) -> int:
    return run_reference("minimal_py", serve, argv, __doc__.splitlines()[0], 65458)


if __name__ == "__main__":
    sys.exit(main())
