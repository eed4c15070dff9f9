"""A worker's ``async def`` calls in flight: run on an event loop while the worker goes on
serving other datagrams (a forked worker's own loop, or ``AsyncServer``'s running one).

The worker hands each :class:`~midgram.engine.dispatch.Pending` to :meth:`AsyncCalls.start` and
carries on with its batch; nothing runs until the worker next waits. While calls are in
flight, the worker waits in :meth:`AsyncCalls.wait` instead of in a blocking receive: the loop
runs the calls until the socket is readable, a call completes, or the wait's time is up; each
call's reply is sent as it completes (``on_done``). The synchronous path does not change: a
worker with nothing in flight never touches the loop.

At most :data:`ASYNC_MAX` calls are in flight per worker (one batch more, at worst): a worker
at the bound reads no datagram until one completes, so new ones wait in the socket's queue,
where another worker may take them. With ``worker_timeout``, a call running longer is
cancelled: nobody answers it (``on_stuck``).

While the loop runs, the worker's record (``WorkerStates``) holds the datagram of the oldest
call, taken anew at each wait: a call that blocks the loop itself (``time.sleep`` in an
``async def``) holds the worker like a stuck synchronous handler, and the supervisor's
watchdog replaces it.

In ``AsyncServer`` the calls are tasks of the program's running loop, which runs them by
itself: :meth:`AsyncCalls.wait` and :meth:`AsyncCalls.drain` are for a loop of the worker's
own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

from midgram.engine.dispatch import Outcome, Pending
from midgram.server.supervisor import hold, let_go

__all__ = ["ASYNC_MAX", "AsyncCalls"]

#: Async calls in flight per worker before it stops reading (docs/operations.md).
ASYNC_MAX: Final = 64


class AsyncCalls:
    """The calls in flight of one worker, and its event loop (made on first use)."""

    def __init__(
        self,
        on_done: Callable[[Outcome, Any], None],
        on_stuck: Callable[[Pending, bytes], None],
        *,
        timeout: float = 0.0,
        in_hand: memoryview | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._on_done = on_done
        self._on_stuck = on_stuck
        self._timeout = timeout or None
        self._in_hand = in_hand
        # None: the worker's own, made on first use, run by wait() and closed by close().
        self._loop = loop
        self._own_loop = loop is None
        self._calls: dict[asyncio.Task[None], bytes] = {}
        self._wake: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self._calls)

    @property
    def full(self) -> bool:
        return len(self._calls) >= ASYNC_MAX

    def start(self, pending: Pending, peer: Any, data: bytes) -> None:
        """Start ``pending``; its reply goes to ``peer`` when it completes."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        task = self._loop.create_task(self._run(pending, peer, data))
        self._calls[task] = data
        task.add_done_callback(self._finished)

    async def _run(self, pending: Pending, peer: Any, data: bytes) -> None:
        scope = asyncio.timeout(self._timeout)
        try:
            async with scope:
                result = await pending.coroutine
        except TimeoutError as exc:
            if scope.expired():  # worker_timeout, not the handler's own TimeoutError
                self._on_stuck(pending, data)
                return
            outcome = pending.finish(error=exc)
        except Exception as exc:
            outcome = pending.finish(error=exc)
        else:
            outcome = pending.finish(result)
        self._on_done(outcome, peer)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._calls.pop(task, None)
        if self._wake is not None:
            self._wake()  # a place is free, or the last call is done

    def wait(self, fd: int | None, seconds: float) -> bool:
        """Run the calls until ``fd`` is readable (None: not watched), a call completes, or
        ``seconds`` have passed; whether ``fd`` is readable."""
        loop = self._loop
        if loop is None or not self._calls:
            return fd is not None  # nothing to run: the caller reads (without blocking)
        woken = loop.create_future()
        readable = False

        def wake() -> None:
            if not woken.done():
                woken.set_result(None)

        def ready() -> None:
            nonlocal readable
            readable = True
            wake()

        if fd is not None:
            loop.add_reader(fd, ready)
        timer = loop.call_later(seconds, wake)
        self._wake = wake
        if self._in_hand is not None:
            hold(self._in_hand, next(iter(self._calls.values())))
        try:
            loop.run_until_complete(woken)
        finally:
            self._wake = None
            timer.cancel()
            if fd is not None:
                loop.remove_reader(fd)
            if self._in_hand is not None:
                let_go(self._in_hand)
        return readable

    def drain(self, tick: float) -> None:
        """Run until every call in flight has completed (or been cancelled)."""
        while self._calls:
            self.wait(None, tick)

    def cancel(self) -> list[asyncio.Task[None]]:
        """Cancel every call in flight (nobody answers them); their tasks, to await."""
        tasks = list(self._calls)
        for task in tasks:
            task.cancel()
        return tasks

    def close(self) -> None:
        """Cancel the calls in flight and close the worker's own loop (a loop given to it
        is left as it is: its owner awaits what ``cancel`` gives)."""
        tasks = self.cancel()
        if self._loop is not None and self._own_loop:
            if tasks:
                self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.close()
            self._loop = None
