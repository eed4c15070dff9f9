"""Registries the server tests serve with ``midgram serve --app apps:NAME``."""

from __future__ import annotations

import asyncio
import logging
import time

from midgram.commands import Registry

log = logging.getLogger("midgram.tests")

mi = Registry(module="tests")
calls = mi.stats.counter("tests:calls")


@mi.command(help="answers after `seconds`, logging when it starts")
def slow(seconds: float) -> dict[str, float]:
    calls.inc()
    log.warning("slow command started")
    time.sleep(seconds)  # the command's own work, not test synchronisation
    return {"slept": seconds}


@mi.command(help="answers after `seconds` without holding its worker (async def)")
async def snooze(seconds: float) -> dict[str, float]:
    calls.inc()
    log.warning("snooze started")
    await asyncio.sleep(seconds)  # the command's own work, not test synchronisation
    return {"slept": seconds}


@mi.command(help="an async def that blocks its event loop for `seconds` (a bug)")
async def hog(seconds: float) -> None:
    log.warning("hog started")
    time.sleep(seconds)  # the bug under test: blocking inside async def


@mi.command(help="a reply of about `size` bytes")
def big(size: int) -> str:
    calls.inc()
    return "x" * size


@mi.command(help="kills the worker that runs it")
def crash() -> None:
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


@mi.command(help="a result nested `levels` deep (lists in lists)")
def deep(levels: int) -> list[object]:
    calls.inc()
    result: list[object] = []
    for _ in range(levels - 1):
        result = [result]
    return result
