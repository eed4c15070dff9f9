"""``AsyncServer``: an MI datagram server inside a program's own asyncio loop (one process, no
fork).

It serves with the worker's batch loop (``midgram.server.worker``), as a forked worker does,
only driven differently: the loop's reader callback reads what the socket holds without
blocking, instead of a blocking receive; replies waiting for a slow client are retried on a
timer of the loop, instead of a timed wait; ``async def`` commands run as tasks of the loop,
beside the program's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Final

from midgram.config.settings import Settings
from midgram.engine.registry import Registry
from midgram.errors import TransportError
from midgram.server.wiring import (
    InProcess,
    close_socket,
    in_process,
    listening_address,
    local_runtime,
    open_socket,
    own_logging,
    refuse_during_app_import,
    server_address,
)

__all__ = ["AsyncServer"]

log = logging.getLogger(__name__)


class AsyncServer:
    """An MI datagram server inside a program's own asyncio loop (one process, no fork).

    ::

        async with AsyncServer(Settings(socket_name="/run/app/mi.sock"), registry) as server:
            await server.serve_forever()   # until the `kill` command, or close()
    """

    #: Up to this many reads (batches) per wake-up, so a flood cannot starve the rest of the
    #: loop.
    READS: Final = 8

    def __init__(self, settings: Settings, registry: Registry | None = None) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else Registry()
        self.runtime = local_runtime(settings)
        self._sock: socket.socket | None = None
        self._served: InProcess | None = None
        self._closed: asyncio.Event | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._logging = contextlib.ExitStack()

    @property
    def address(self) -> str:
        """Where it listens; once started, with the port the kernel chose for port 0."""
        if self._sock is None:
            return str(server_address(self.settings))
        return listening_address(self.settings, self._sock)

    async def start(self) -> None:
        refuse_during_app_import()
        self._logging.enter_context(own_logging(self.settings))
        try:
            sock = open_socket(self.settings)
        except BaseException:
            self._logging.close()
            raise
        loop = asyncio.get_running_loop()
        try:
            sock.setblocking(False)  # one process: the flag is ours alone
            self._served = in_process(
                sock,
                self.settings,
                self.registry,
                self.runtime,
                on_stop_requested=self._stop_soon,
                event_loop=loop,
                on_reply_waits=self._schedule_retry,
            )
        except BaseException:
            close_socket(sock, self.settings)
            self._logging.close()
            raise
        self._sock = sock
        self._closed = asyncio.Event()
        loop.add_reader(sock.fileno(), self._on_readable)
        log.info("listening on %s (asyncio)", self.address)

    async def serve_forever(self) -> None:
        if self._closed is None:
            await self.start()
        assert self._closed is not None
        await self._closed.wait()

    async def close(self) -> None:
        sock, self._sock = self._sock, None  # a second close() has nothing to do
        if sock is None:
            return
        asyncio.get_running_loop().remove_reader(sock.fileno())
        if self._retry is not None:
            self._retry.cancel()
        served = self._served
        assert served is not None
        await asyncio.gather(*served.worker.cancel_calls(), return_exceptions=True)
        close_socket(sock, self.settings)
        served.close()
        self._logging.close()
        if self._closed is not None:
            self._closed.set()

    async def __aenter__(self) -> AsyncServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _on_readable(self) -> None:
        """The socket is readable: serve what it holds (up to ``READS`` batches)."""
        assert self._served is not None
        worker = self._served.worker
        for _ in range(self.READS):
            try:
                if not worker.serve_ready(block=False):
                    break
            except TransportError:
                raise  # the socket itself failed: the loop's exception handler says so
            except Exception as exc:
                worker.survive(exc)
        worker.housekeeping()  # a `kill` just served stops the server; the log level

    def _stop_soon(self) -> None:
        """The ``kill`` command: close, once its reply has gone."""
        if self._sock is not None:
            asyncio.get_running_loop().create_task(self.close())

    def _schedule_retry(self) -> None:
        """socket_timeout: retry queued replies on a timer instead of blocking the loop (when
        the first one is due: a reply just queued may be due before the timer set)."""
        wait = self._served.worker.sender.next_retry_in() if self._served is not None else None
        if wait is None:
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + wait
        if self._retry is not None:
            if self._retry.when() <= when:
                return
            self._retry.cancel()
        self._retry = loop.call_at(when, self._retry_due)

    def _retry_due(self) -> None:
        self._retry = None
        if self._served is not None and self._sock is not None:
            self._served.worker.sender.retry_due()
            self._schedule_retry()
