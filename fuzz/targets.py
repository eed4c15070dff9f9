"""What the fuzzers check: three targets, each ``target(data: bytes) -> None``, raising
``AssertionError`` (or whatever escaped) when an invariant breaks.

- ``datagram``: the whole server path, bytes -> ``Dispatcher.handle`` / ``answer`` (compact
  and pretty) -> reply. Nothing raises; every reply fits the buffer; ``answer`` is ``handle``
  byte for byte, as tests/test_dispatch_fast.py states the contract.
- ``native``: the C fast path, ``_batchio.FastAnswer``, against the Python ``answer`` on the
  same bytes (differential: the same reply, byte for byte).
- ``reply``: the client's side, bytes -> ``rpc.decode_response`` -> the CLI's renderers.
  Only ``BadReply`` / ``PlainTextError`` (ClientErrors) may come out, and a result renders in
  every format without a control character reaching the terminal.

The commands served are the built-in ones (bar ``uptime``, whose text changes each second,
and ``log_level``/``kill``, which act on this process) plus a few that echo, fail, nest or
take typed params, so that the fuzzer reaches coercion, handler errors and deep results.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

from midgram.cli.output import FORMATS, render
from midgram.client.codec import decode_response
from midgram.engine.builtins import with_builtins
from midgram.engine.dispatch import Dispatcher, Outcome, Pending
from midgram.engine.registry import Registry
from midgram.engine.runtime import LocalRuntime
from midgram.errors import BadReply, PlainTextError
from midgram.wire.jsonrpc import DEFAULT_BUF_SIZE

#: Where an instrumented build of the C module is (``make sanitize``), else the package's.
BATCHIO_ENV = "MIDGRAM_BATCHIO"
_SKIPPED_CORE = frozenset({"uptime", "log_level", "kill"})
_CONTROLS = frozenset(chr(c) for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))) - {"\n"}


def registry() -> Registry:
    """The fuzzed commands (deterministic: the same datagram, the same reply)."""
    app = Registry(module="fuzz")

    @app.command()
    def echo(value: Any) -> Any:
        return value

    @app.command()
    def add(a: int, b: float = 0.0, c: str = "", d: bool = False) -> list[Any]:
        return [a, b, c, d]

    @app.command()
    def items(values: list[int], names: list[str] | None = None) -> Any:
        return {"values": values, "names": names}

    @app.command()
    def deep(levels: int) -> Any:
        result: Any = []
        for _ in range(max(0, min(levels, 2000)) - 1):
            result = [result]
        return result

    @app.command()
    def fail() -> None:
        raise RuntimeError("fuzzed failure")

    @app.command()
    def nothing() -> None:
        return None

    @app.command()
    async def later(value: Any = None) -> Any:
        return value

    served = with_builtins(app, LocalRuntime())
    table = Registry(module=served.module, stats=served.stats)
    for command in served:
        if command.name not in _SKIPPED_CORE:
            table.add(command)
    return table


def batchio() -> ModuleType:
    """The C module: an instrumented build named by $MIDGRAM_BATCHIO, else the package's
    (built at install time)."""
    path = os.environ.get(BATCHIO_ENV)
    if path:
        spec = importlib.util.spec_from_file_location("midgram.server._batchio", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"{path} is not an extension module")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return importlib.import_module("midgram.server._batchio")


class Targets:
    """The three targets over one set of dispatchers (built once: fuzzing runs millions)."""

    def __init__(self, module: ModuleType | None = None) -> None:
        commands = registry()
        self.plain = Dispatcher(commands)
        self.twin = Dispatcher(commands)  # handle() on a twin: answer's own state apart
        self.pretty = Dispatcher(commands, pretty=True)
        self.small = Dispatcher(commands, buf_size=1024, json_errors=True)
        self.fast: Callable[[bytes], Any] | None = None
        if module is not None:
            self.fast = self.plain.answer_function(module.FastAnswer)

    def datagram(self, data: bytes) -> None:
        handled = _reply(self.twin.handle(data), self.twin)
        answered = _reply(self.plain.answer(data), self.plain)
        assert answered == handled, (data, answered, handled)
        for dispatcher in (self.pretty, self.small):
            reply = _reply(dispatcher.answer(data), dispatcher)
            assert reply is None or len(reply) < dispatcher.buf_size, (data, reply)

    def native(self, data: bytes) -> None:
        assert self.fast is not None, "no C module"
        fast = _reply(self.fast(data), self.plain)
        python = _reply(self.plain.answer(data), self.plain)
        assert fast == python, (data, fast, python)

    def reply(self, data: bytes) -> None:
        try:
            response = decode_response(data)
        except (BadReply, PlainTextError):
            return
        value = response.result if response.error is None else response.error.data
        for fmt in FORMATS:
            if fmt in ("raw", "yaml"):
                continue  # raw is the bytes; yaml is PyYAML's, and slow
            for colour in (False, True):
                text = render(value, fmt, colour=colour)
                if not colour:
                    assert not _CONTROLS & set(text), (data, fmt, text)


def _reply(handled: bytes | Outcome | Pending, dispatcher: Dispatcher) -> bytes | None:
    if isinstance(handled, bytes):
        return handled
    if isinstance(handled, Pending):
        handled.coroutine.close()  # run by an event loop in a server: not needed here
        return b"<pending>"
    assert isinstance(handled, Outcome)
    assert handled.reply is None or len(handled.reply) < DEFAULT_BUF_SIZE + 1
    return handled.reply


TARGETS = ("datagram", "native", "reply")
