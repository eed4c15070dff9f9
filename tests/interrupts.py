"""PEP 475 checks for the blocking native calls (``BatchSocket.recv``, ``serve``):
``check_signals_interrupt`` runs one while ``Signalling`` sends signals to the main thread."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from datagrams import DEADLINE


def check_signals_interrupt(call: Callable[[], Any], nothing: Any) -> None:
    """PEP 475 for a blocking native call: a signal handler that returns lets ``call()``
    give ``nothing`` at once (the worker then looks at its flags); one that raises makes
    ``call()`` raise it."""

    class Stop(Exception):
        pass

    caught: list[int] = []

    def note(signum: int, frame: Any) -> None:
        caught.append(signum)

    def stop(signum: int, frame: Any) -> None:
        caught.append(signum)
        if len(caught) == 1:  # the next ones, if any, land after the call has raised
            raise Stop

    previous = signal.signal(signal.SIGUSR1, note)
    try:
        with Signalling(signal.SIGUSR1):
            started = time.monotonic()
            assert call() == nothing
            assert time.monotonic() - started < DEADLINE / 2
        assert caught
        signal.signal(signal.SIGUSR1, stop)
        caught.clear()
        with pytest.raises(Stop), Signalling(signal.SIGUSR1):
            call()
        assert caught
    finally:
        signal.signal(signal.SIGUSR1, previous)


class Signalling:
    """Send ``signum`` to the main thread every 50 ms until the block is left: it lands
    in a blocking call there whenever that call starts."""

    def __init__(self, signum: int) -> None:
        self._signum = signum
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        main = threading.main_thread().ident
        assert main is not None
        while not self._done.wait(0.05):
            signal.pthread_kill(main, self._signum)

    def __enter__(self) -> None:
        self._thread.start()

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(DEADLINE)
