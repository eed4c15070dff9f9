"""``FastAnswer`` (``_batchio.c``): ``Dispatcher.answer``'s bare calls and flat named
params, in C.

tests/test_dispatch_fast.py already holds it to ``answer``'s contract on any datagram. These
tests check what that cannot see: which datagrams it answers itself (``answer`` is never
called for them) and which it hands to ``answer`` unread, that a handler's exception reaches
the general path as ``except Exception`` would give it, that it follows the live registry,
refuses bad arguments, and leaks nothing.
"""

from __future__ import annotations

import gc
import logging
import sys
import time
import tracemalloc
import weakref
from types import ModuleType
from typing import Any

import pytest
from datagrams import DEADLINE, Sockets
from toolchain import needs_native

from midgram.engine.dispatch import Answer, Dispatcher, Outcome, Pending, Status
from midgram.engine.registry import Registry
from midgram.errors import MIError
from midgram.server.batchio import NativeIO, SocketIO
from midgram.server.worker import ServerStats, Worker

pytestmark = needs_native


class Boom(Exception):
    pass


def build_registry() -> Registry:
    registry = Registry(module="fast")

    @registry.command()
    def ping() -> str:
        return "pong"

    @registry.command()
    def nothing() -> None:
        pass

    @registry.command()
    def add(a: int, b: int = 0) -> int:
        return a + b

    @registry.command()
    def refuse() -> str:
        raise MIError(403, "Forbidden")

    @registry.command()
    def refuse_with(code: int, why: str = "Refused") -> str:
        raise MIError(code, why)

    @registry.command()
    def boom() -> str:
        raise Boom("handler failed")

    @registry.command()
    def interrupt() -> str:
        raise KeyboardInterrupt

    @registry.command()
    def odd_keys() -> dict[Any, str]:
        return {1: "one"}  # plain orjson cannot write it: the general path does

    @registry.command()
    async def later() -> str:
        return "done"

    return registry


class Spy:
    """``answer``, counting the datagrams handed to it."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.calls: list[bytes] = []

    def __call__(self, data: bytes) -> bytes | Outcome | Pending:
        self.calls.append(data)
        return self.answer(data)


@pytest.fixture
def served(native: ModuleType) -> tuple[Answer, Spy, Dispatcher]:
    """A FastAnswer over a dispatcher whose ``answer`` is spied on, and a twin dispatcher
    (its own registry) for the expected replies."""
    dispatcher = Dispatcher(build_registry())
    spy = Spy(dispatcher.answer)
    dispatcher.answer = spy  # type: ignore[method-assign]  # fast_answer hands the rest to it
    fast = dispatcher.answer_function(native.FastAnswer)
    assert type(fast) is native.FastAnswer
    return fast, spy, Dispatcher(build_registry())


def reply_of(handled: bytes | Outcome | Pending) -> bytes | None:
    if isinstance(handled, bytes):
        return handled
    assert isinstance(handled, Outcome), handled
    return handled.reply


#: Bare calls in the shapes FastAnswer reads itself: any member order, JSON whitespace,
#: empty params, integer ids of up to 18 digits, plain string ids.
RECOGNISED = [
    b'{"jsonrpc":"2.0","method":"ping","id":1}',
    b' {\n "id" : "abc" ,\t"method":"ping", "jsonrpc":"2.0"}\r\n',
    b'{"jsonrpc":"2.0","method":"ping","id":7,"params":[]}',
    b'{"params":{ \n},"jsonrpc":"2.0","method":"ping","id":7}',
    b'{"jsonrpc":"2.0","method":"ping","id":0}',
    b'{"jsonrpc":"2.0","method":"ping","id":-0}',
    b'{"jsonrpc":"2.0","method":"ping","id":-42}',
    b'{"jsonrpc":"2.0","method":"ping","id":123456789012345678}',
    b'{"jsonrpc":"2.0","method":"ping","id":-999999999999999999}',
    b'{"jsonrpc":"2.0","method":"ping","id":""}',
    b'{"jsonrpc":"2.0","method":"ping","id":"a b:c/~!"}',
    b'{"jsonrpc":"2.0","method":"nothing","id":3}',
    b'{"jsonrpc":"2.0","method":"refuse","id":3}',
    b'{"jsonrpc":"2.0","method":"boom","id":3}',
    b'{"jsonrpc":"2.0","method":"odd_keys","id":3}',
]

#: Calls with flat named params that FastAnswer binds and runs itself: strings, integers of
#: up to 18 digits and booleans, in any order, each getter called only where it changes the
#: value ("7" for an int), the handler's error on the general path with the params.
NAMED = [
    b'{"jsonrpc":"2.0","method":"add","params":{"a":1},"id":1}',
    b'{"jsonrpc":"2.0","method":"add","params":{ "b" : 2 ,\n"a":-3 },"id":"x"}',
    b'{"params":{"a":"7","b":123456789012345678},"jsonrpc":"2.0","method":"add","id":2}',
    b'{"jsonrpc":"2.0","method":"refuse_with","params":{"code":404,"why":"gone"},"id":3}',
]

#: Everything else goes to ``answer`` as it came, valid or not.
HANDED_ON = [
    b'{"jsonrpc":"2.0","method":"ping","id":1,"id":2}',  # a member twice
    b'{"jsonrpc":"2.0","method":"ping","id":1,"extra":0}',  # another member
    b'{"jsonrpc":"2.0","method":"p\\u0069ng","id":1}',  # an escape
    b'{"jsonrpc":"2.0","method":"ping","id":"\xc3\xa9"}',  # not ASCII
    b'{"jsonrpc":"2.0","method":"ping","id":"a\x7f"}',  # DEL
    b'{"jsonrpc":"2.0","method":"ping","id":1234567890123456789}',  # 19 digits
    b'{"jsonrpc":"2.0","method":"ping","id":%s}' % (b"9" * 40),  # far beyond a long long
    b'{"jsonrpc":"2.0","method":"ping","id":01}',
    b'{"jsonrpc":"2.0","method":"ping","id":1.0}',
    b'{"jsonrpc":"2.0","method":"ping","id":1e2}',
    b'{"jsonrpc":"2.0","method":"ping","id":-}',
    b'{"jsonrpc":"2.0","method":"ping","id":null}',
    b'{"jsonrpc":"2.0","method":"ping","id":true}',
    b'{"jsonrpc":"2.0","method":"ping"}',  # a notification
    b'{"jsonrpc":"2.0","method":"ping","id":1,"params":null}',
    b'{"jsonrpc":"2.0","method":"ping","id":1,"params":[1]}',
    b'{"jsonrpc":"2.0","method":"add","id":1,"params":[1,2]}',
    b'{"jsonrpc":"2.0","method":"add","id":1}',  # a command with params: its recipes
    b'{"jsonrpc":"2.0","method":"add","id":1,"params":{"a":1,"a":2}}',  # a name twice
    b'{"jsonrpc":"2.0","method":"add","id":1,"params":{"a":1.5}}',  # not an integer
    b'{"jsonrpc":"2.0","method":"add","id":1,"params":{"a":null}}',
    b'{"jsonrpc":"2.0","method":"add","id":1,"params":{"a":[1]}}',
    b'{"jsonrpc":"2.0","method":"add","id":1,"params":{"\\u0061":1}}',  # an escape
    b'{"jsonrpc":"2.0","method":"add","id":1,"params":{"c":1}}',  # names no recipe has
    b'{"jsonrpc":"2.0","method":"add","id":1,"params":{"a":true}}',  # refused by its getter
    b'{"jsonrpc":"2.0","method":"ping","id":1,"params":{"a":1}}',  # none it takes
    b'{"jsonrpc":"2.0","method":"nope","id":1,"params":{"a":1}}',  # unknown
    b'{"jsonrpc":"2.0","method":"later","id":1}',  # async
    b'{"jsonrpc":"2.0","method":"nope","id":1}',  # unknown
    b'{"jsonrpc":"1.0","method":"ping","id":1}',
    b'{"jsonrpc":2.0,"method":"ping","id":1}',
    b'{"method":"ping","id":1}',
    b'{"jsonrpc":"2.0","method":"ping","id":1}\0',
    b'{"jsonrpc":"2.0","method":"ping","id":1}x',
    b'{"jsonrpc":"2.0","method":"ping","id":1,}',
    b'\x0c{"jsonrpc":"2.0","method":"ping","id":1}',  # form feed: not JSON whitespace
    b'{"jsonrpc":"2.0","method":"ping","id":1',
    b"{}",
    b"[]",
    b"",
    b"\xff",
]


@pytest.mark.parametrize("data", RECOGNISED)
def test_a_bare_call_is_answered_without_answer(
    served: tuple[Answer, Spy, Dispatcher], data: bytes
) -> None:
    fast, spy, twin = served
    handled = fast(data)
    assert spy.calls == []
    expected = twin.handle(data)
    assert isinstance(expected, Outcome)
    assert reply_of(handled) == expected.reply
    if isinstance(handled, Outcome):  # an error, or a result only the general path writes
        assert (handled.status, handled.method) == (expected.status, expected.method)


@pytest.mark.parametrize("data", NAMED)
def test_flat_named_params_are_bound_without_answer(
    served: tuple[Answer, Spy, Dispatcher], data: bytes
) -> None:
    fast, spy, twin = served
    handled = fast(data)
    assert spy.calls == []
    expected = twin.handle(data)
    assert isinstance(expected, Outcome)
    assert reply_of(handled) == expected.reply
    if isinstance(handled, Outcome):  # the handler's error: the general path, with the params
        assert (handled.status, handled.method, handled.params) == (
            expected.status,
            expected.method,
            expected.params,
        )


@pytest.mark.parametrize("data", HANDED_ON)
def test_anything_else_goes_to_answer_unread(
    served: tuple[Answer, Spy, Dispatcher], data: bytes
) -> None:
    fast, spy, twin = served
    handled = fast(data)
    assert spy.calls == [data]
    expected = twin.handle(data)
    if isinstance(expected, Pending):
        assert isinstance(handled, Pending)
        expected.coroutine.close()
        handled.coroutine.close()
        return
    assert reply_of(handled) == expected.reply


def test_the_same_method_again_is_answered_the_same(
    served: tuple[Answer, Spy, Dispatcher],
) -> None:
    fast, spy, _ = served
    replies = [
        fast(f'{{"jsonrpc":"2.0","method":"{m}","id":{i}}}'.encode())
        for i, m in enumerate(["ping", "ping", "nothing", "ping", "nothing", "nothing"])
    ]
    assert replies == [
        b'{"jsonrpc":"2.0","result":"pong","id":0}',
        b'{"jsonrpc":"2.0","result":"pong","id":1}',
        b'{"jsonrpc":"2.0","result":"OK","id":2}',
        b'{"jsonrpc":"2.0","result":"pong","id":3}',
        b'{"jsonrpc":"2.0","result":"OK","id":4}',
        b'{"jsonrpc":"2.0","result":"OK","id":5}',
    ]
    assert spy.calls == []


def test_a_failing_handler_is_logged_with_its_traceback(
    served: tuple[Answer, Spy, Dispatcher], caplog: pytest.LogCaptureFixture
) -> None:
    fast, _, _ = served
    with caplog.at_level(logging.ERROR, logger="midgram.engine.dispatch"):
        handled = fast(b'{"jsonrpc":"2.0","method":"boom","id":1}')
    assert isinstance(handled, Outcome)
    assert handled.status is Status.SERVER_ERROR
    [record] = caplog.records
    assert record.exc_info is not None
    assert record.exc_info[0] is Boom
    assert "in boom" in caplog.text  # the handler's own frame is in the traceback
    assert 'raise Boom("handler failed")' in caplog.text


def test_what_is_not_an_exception_goes_through(served: tuple[Answer, Spy, Dispatcher]) -> None:
    fast, _, _ = served
    with pytest.raises(KeyboardInterrupt):
        fast(b'{"jsonrpc":"2.0","method":"interrupt","id":1}')
    assert fast(b'{"jsonrpc":"2.0","method":"ping","id":2}') == (
        b'{"jsonrpc":"2.0","result":"pong","id":2}'
    )


def test_a_command_added_later_is_answered_too(native: ModuleType) -> None:
    registry = build_registry()
    dispatcher = Dispatcher(registry)
    fast = dispatcher.answer_function(native.FastAnswer)
    data = b'{"jsonrpc":"2.0","method":"late","id":1}'
    assert reply_of(fast(data)) == reply_of(dispatcher.handle(data))  # not found, yet

    @registry.command()
    def late() -> str:
        return "here"

    assert fast(data) == b'{"jsonrpc":"2.0","result":"here","id":1}'


def test_it_serves_pretty_replies_as_answer_does(native: ModuleType) -> None:
    """With pretty_printing, ``_compact`` writes cJSON's layout: the native path serves it
    too (issue 16), the same bytes as ``answer`` and ``handle``."""
    pretty = Dispatcher(build_registry(), pretty=True)
    fast = pretty.answer_function(native.FastAnswer)
    assert fast != pretty.answer
    for data in (
        b'{"jsonrpc":"2.0","method":"ping","id":1}',
        b'{"id":"x","jsonrpc":"2.0","method":"nothing"}',
    ):
        reply = fast(data)
        assert reply == pretty.answer(data) == pretty.handle(data).reply
        assert isinstance(reply, bytes)
        assert reply.startswith(b'{\n\t"jsonrpc":\t"2.0"')
    plain = Dispatcher(build_registry())
    assert plain.answer_function(None) == plain.answer


def test_bad_arguments_are_refused(native: ModuleType) -> None:
    dispatcher = Dispatcher(build_registry())
    parts = (dispatcher.registry.bare_handlers(), dispatcher._compact, dispatcher._after_bare)
    with pytest.raises(TypeError):
        native.FastAnswer([], *parts[1:], dispatcher.answer)
    with pytest.raises(TypeError, match="must be callable"):
        native.FastAnswer(*parts, "answer")
    fast = native.FastAnswer(*parts, dispatcher.answer)
    with pytest.raises(TypeError, match="one argument"):
        fast()
    with pytest.raises(TypeError, match="one argument"):
        fast(b"{}", b"{}")
    with pytest.raises(TypeError, match="one argument"):
        fast(data=b"{}")
    unready = native.FastAnswer.__new__(native.FastAnswer)
    with pytest.raises(RuntimeError, match="not initialised"):
        unready(b"{}")


def test_it_leaks_neither_references_nor_memory(native: ModuleType) -> None:
    registry = build_registry()
    result = object()  # one object, returned again and again: its refcount must come back
    odd = {1: result}

    @registry.command()
    def same() -> dict[int, object]:
        return odd

    @registry.command()
    def same_named(tag: str, n: int = 0, on: bool = False) -> dict[int, object]:
        return odd

    dispatcher = Dispatcher(registry)
    fast = dispatcher.answer_function(native.FastAnswer)
    requests = [
        b'{"jsonrpc":"2.0","method":"same_named","id":1,"params":{"tag":"t","n":"2","on":true}}',
        b'{"jsonrpc":"2.0","method":"add","id":1,"params":{"a":1,"b":2}}',
        b'{"jsonrpc":"2.0","method":"add","id":1,"params":{"a":true}}',
        b'{"jsonrpc":"2.0","method":"refuse_with","id":1,"params":{"code":1}}',
        *(b'{"jsonrpc":"2.0","method":"ping","id":%d}' % n for n in range(3)),
        b'{"jsonrpc":"2.0","method":"ping","id":"x"}',
        b'{"jsonrpc":"2.0","method":"nothing","id":1}',
        b'{"jsonrpc":"2.0","method":"boom","id":1}',
        b'{"jsonrpc":"2.0","method":"same","id":1}',
        b'{"jsonrpc":"2.0","method":"nope","id":1}',
        b'{"jsonrpc":"2.0","method":"add","id":1,"params":[1]}',
        b"garbage",
    ]
    logging.getLogger("midgram.engine.dispatch").disabled = True  # boom logs each time
    try:

        def rounds(count: int) -> None:
            for _ in range(count):
                for data in requests:
                    fast(data)
                with pytest.raises(KeyboardInterrupt):
                    fast(b'{"jsonrpc":"2.0","method":"interrupt","id":1}')

        rounds(200)  # warm up: caches, interned objects
        gc.collect()
        refs = sys.getrefcount(result)
        tracemalloc.start()
        try:
            gc.collect()
            start, _ = tracemalloc.get_traced_memory()
            rounds(5_000)
            gc.collect()
            end, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        logging.getLogger("midgram.engine.dispatch").disabled = False
    assert sys.getrefcount(result) == refs
    assert end - start < 64 * 1024, f"{end - start} bytes more after 5000 rounds"


def test_a_reference_cycle_through_it_is_collected(native: ModuleType) -> None:
    dispatcher = Dispatcher(build_registry())
    spy = Spy(dispatcher.answer)
    fast = dispatcher.answer_function(native.FastAnswer)
    fast_twin = native.FastAnswer(
        dispatcher.registry.bare_handlers(), dispatcher._compact, dispatcher._after_bare, spy
    )
    spy.answer = fast_twin  # FastAnswer -> spy -> FastAnswer
    assert gc.is_tracked(fast_twin)
    gone = weakref.finalize(spy, lambda: None)
    del spy, fast_twin, fast
    gc.collect()
    assert not gone.alive


@pytest.mark.parametrize("native_io", [True, False])
def test_a_worker_serves_with_it_when_its_io_is_native(
    native: ModuleType, sockets: Sockets, native_io: bool
) -> None:
    """On real sockets: a worker with native I/O answers bare calls without calling
    ``Dispatcher.answer``; one with the socket module calls it for every datagram."""
    server, client = sockets.server(), sockets.unix("client")
    registry = build_registry()
    dispatcher = Dispatcher(registry)
    spy = Spy(dispatcher.answer)
    dispatcher.answer = spy  # type: ignore[method-assign]
    bufsize = dispatcher.buf_size
    io = NativeIO(server, bufsize) if native_io else SocketIO(server, bufsize)
    stats = ServerStats.declare(registry.stats)
    worker = Worker(server, dispatcher, stats, socket_timeout_ms=1000, io=io)
    bare = b'{"jsonrpc":"2.0","method":"ping","id":1}'
    with_params = b'{"jsonrpc":"2.0","method":"add","params":[2,3],"id":2}'
    for data in (bare, with_params):
        client.sendto(data, server.getsockname())
    deadline = time.monotonic() + DEADLINE
    while stats.received.value < 2:
        assert time.monotonic() < deadline, "the worker did not read both requests"
        worker.serve_once()
    client.settimeout(DEADLINE)
    assert [client.recv(1024) for _ in range(2)] == [
        b'{"jsonrpc":"2.0","result":"pong","id":1}',
        b'{"jsonrpc":"2.0","result":5,"id":2}',
    ]
    assert spy.calls == ([with_params] if native_io else [bare, with_params])
