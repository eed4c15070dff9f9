"""Registries the server tests serve with ``midgram serve --app apps:NAME``."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import orjson

from midgram.engine.registry import Registry

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


@mi.command(help="raises: the server logs a traceback")
def fail() -> None:
    raise RuntimeError("a bug in the command")


@mi.command(help="the value of an environment variable in the worker that runs this")
def environ(name: str) -> dict[str, str | None]:
    import os

    return {name: os.environ.get(name)}


#: ``bulk``'s statistics: groups of a few counters each, and one wide group of large values.
BULK_GROUPS = 128
BULK_PER_GROUP = 4
WIDE_STATS = 145
WIDE_VALUE = 10**15


def bulk() -> Registry:
    """More statistics than one datagram holds (``midgram serve --app apps:bulk``).

    ``bulk000:c0`` ... ``bulk127:c3``, each group the module of one command (as an OpenSIPS
    module's statistics are named after it), and ``wide:c000`` ... of WIDE_VALUE each: their
    values take more room than their names and types, so that group can be listed in one
    reply but not read in one."""
    registry = Registry(module="bulk")
    for number in range(BULK_GROUPS):
        group = f"bulk{number:03d}"
        for index in range(BULK_PER_GROUP):
            registry.stats.counter(f"{group}:c{index}").inc(number * 10 + index)

        def ping() -> str:
            return "pong"

        registry.command(f"{group}_ping", module=group)(ping)
    for index in range(WIDE_STATS):
        registry.stats.counter(f"wide:c{index:03d}").inc(WIDE_VALUE)

    @registry.command(module="wide")
    def wide_ping() -> str:
        return "pong"

    return registry


#: A real OpenSIPS 3.6's `get_statistics all` (the golden capture): its names and values.
OPENSIPS_STATISTICS = (
    Path(__file__).parent / "golden/opensips-3.6/unix/04_get_statistics_all_named.rsp"
)
# Which of them OpenSIPS lists as incremental: its core counters (statistics.c); memory,
# load and the per-process groups are functions, non-incremental.
_OPENSIPS_COUNTER_GROUPS = ("core", "dns", "sql", "cdb")


def opensips_like() -> Registry:
    """A registry serving OpenSIPS 3.6's own statistics (``--app apps:opensips_like``): the
    exporter's names for a real OpenSIPS, read from a real server. core:timestamp is left to
    midgram's own."""
    registry = Registry(module="opensips")
    captured = orjson.loads(OPENSIPS_STATISTICS.read_bytes())["result"]
    for name, number in captured.items():
        if name == "core:timestamp":
            continue
        group = name.partition(":")[0]
        if group in _OPENSIPS_COUNTER_GROUPS:
            registry.stats.counter(name).inc(number)
        else:
            registry.stats.gauge(name).set(number)
    return registry


def guarded() -> Registry:
    """Commands with access rules of their own (``--app apps:guarded``): ``restart`` for
    root only unless the operator says otherwise; ``status`` in the set ``@readonly``."""
    registry = Registry(module="guarded")

    @registry.command(acl="root", help="root's only, by default")
    def restart() -> str:
        return "restarting"

    @registry.command(sets={"readonly"}, help="a read-only command of the program's")
    def status() -> str:
        return "fine"

    return registry


def opensips_events() -> Registry:
    """The events of OpenSIPS 3.6.8's core, in its order (so with its ids): what the event
    captures (tests/golden/opensips-3.6/events) were made against."""
    from golden_events import CORE_EVENTS

    core = Registry(module="core")
    for name in CORE_EVENTS:
        core.event(name)
    return core


#: A program that publishes an event and raises it from everywhere a program can.
events_mi = Registry(module="tests")
calls_high = events_mi.event("E_CALLS_HIGH")


@events_mi.command(help="raises E_CALLS_HIGH from this handler, with {calls: n}")
def set_calls(calls: int) -> str:
    calls_high.raise_event({"calls": calls})
    return "OK"


@events_mi.command(help="raises E_CALLS_HIGH from another thread, with [n]; answers once sent")
def set_calls_in_thread(calls: int) -> str:
    import threading

    thread = threading.Thread(target=calls_high.raise_event, args=([str(calls)],))
    thread.start()
    thread.join()
    return "OK"
