"""``Dispatcher.answer`` (the flat fast path) against ``Dispatcher.handle`` on any datagram.

The contract: a valid request with an id (a string, a number or null) whose compact reply is
far below the size limit gives the reply's bytes; anything else gives exactly what ``handle``
gives. Either way each handler runs at most once, and the reply is ``handle``'s byte for
byte. Every check runs ``answer`` on one dispatcher and ``handle`` on a twin with the same
commands but its own call counters, and compares replies, outcomes and handler runs.

Each check runs twice: with ``answer`` itself ("python") and with its native twin,
``Dispatcher.answer_function(FastAnswer)`` ("native"), which must keep the same contract.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import json
import time
import types
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from golden_cases import GOLDEN, OPENSIPS_UNIX, REQUEST_SETS, Case, assert_matches, load_cases
from hypothesis import example, given, settings
from hypothesis import strategies as st
from strategies import json_values
from toolchain import needs_native

from midgram.engine import builtins as builtin_commands
from midgram.engine.builtins import with_builtins
from midgram.engine.dispatch import Answer, Dispatcher, Outcome, Pending, Status
from midgram.engine.registry import Registry, make_command
from midgram.engine.runtime import LocalRuntime
from midgram.errors import InvalidParams, MIError
from midgram.wire.jsonrpc import ALWAYS_FITS_MARGIN, DEFAULT_BUF_SIZE, Request, decode_request

HUGE = "x" * 70_000  # a result over the 65457-byte limit whatever the id
SMALL_BUF = 256  # a second buffer size, where ordinary results straddle the size rule


# --- the registry: one of each kind of command, each counting its runs -----------------------


def build_registry(calls: Counter[str]) -> Registry:
    """The same commands every time; ``calls`` counts each handler's runs (for an async
    command: ``name`` when the coroutine is made, ``name:body`` when it runs)."""
    registry = Registry(module="fast")

    @registry.command()
    def ping() -> str:
        calls["ping"] += 1
        return "pong"

    @registry.command()
    def nothing() -> None:
        calls["nothing"] += 1

    @registry.command()
    def add(a: int, b: int = 0) -> int:
        calls["add"] += 1
        return a + b

    @registry.command()
    def echo(value: Any) -> Any:
        calls["echo"] += 1
        return value

    @registry.command(recipes=[["id"], ["pid"], ["level"]])
    def profiling(id: int = 0, pid: int = 0, level: int = 0) -> list[int]:
        calls["profiling"] += 1
        return [id, pid, level]

    @registry.command(named_only=True)
    def t_uac(method: str, ruri: str) -> str:
        calls["t_uac"] += 1
        return f"{method} {ruri}"

    @registry.command()
    def flags(on: bool, ratio: float = 1.0, items: list[int] | None = None) -> dict[str, Any]:
        calls["flags"] += 1
        return {"on": on, "ratio": ratio, "items": items}

    @registry.command(name="état_ñ")
    def unicode_name(x: str | None = None) -> str:
        calls["état_ñ"] += 1
        return f"é{x}"

    @registry.command()
    def refuse() -> None:
        calls["refuse"] += 1
        raise MIError(404, "Not here")

    @registry.command()
    def refuse_params(x: Any = None) -> None:
        calls["refuse_params"] += 1
        raise InvalidParams("Bad thing")

    @registry.command()
    def boom() -> None:
        calls["boom"] += 1
        raise ZeroDivisionError("secret detail")

    @registry.command()
    def unserialisable() -> Any:
        calls["unserialisable"] += 1
        return {1, 2}

    @registry.command()
    def non_str_keys() -> Any:
        calls["non_str_keys"] += 1
        return {1: "a", None: [2**70]}

    @registry.command()
    def big_int() -> int:
        calls["big_int"] += 1
        return 2**70

    @registry.command()
    def pair() -> tuple[int, str]:
        calls["pair"] += 1
        return (1, "two")

    @registry.command()
    def huge() -> str:
        calls["huge"] += 1
        return HUGE

    @registry.command()
    def sized(n: int) -> str:
        calls["sized"] += 1
        if not 0 <= n <= 100_000:
            raise MIError(400, "n out of range")
        return "x" * n

    async def later(delay: int = 0) -> dict[str, int]:
        calls["later:body"] += 1
        return {"delay": delay}

    async def later_fails() -> None:
        calls["later_fails:body"] += 1
        raise MIError(480, "Temporarily Unavailable")

    async def later_boom() -> None:
        calls["later_boom:body"] += 1
        raise RuntimeError("async detail")

    async def later_huge() -> str:
        calls["later_huge:body"] += 1
        return HUGE

    for handler in (later, later_fails, later_boom, later_huge):
        registry.add(_counting_async(make_command(handler, module="fast"), calls))
    return registry


def _counting_async(command: Any, calls: Counter[str]) -> Any:
    """The async command with a handler that also counts the coroutines it makes."""
    make = command.handler

    def handler(**kwargs: Any) -> Coroutine[Any, Any, Any]:
        calls[command.name] += 1
        return make(**kwargs)

    return dataclasses.replace(command, handler=handler)


FAST_CALLS: Counter[str] = Counter()
SLOW_CALLS: Counter[str] = Counter()
FAST_REGISTRY = build_registry(FAST_CALLS)
SLOW_REGISTRY = build_registry(SLOW_CALLS)
COMMAND_NAMES = FAST_REGISTRY.names()


# --- the comparison ---------------------------------------------------------------------------

#: The two implementations of ``answer`` under test.
KINDS = [pytest.param("python"), pytest.param("native", marks=needs_native)]


@functools.cache
def native_module() -> ModuleType:
    return importlib.import_module("midgram.server._batchio")


def answering(dispatcher: Dispatcher, kind: str) -> Answer:
    """``dispatcher.answer``, or its native twin."""
    if kind == "python":
        return dispatcher.answer
    return dispatcher.answer_function(native_module().FastAnswer)


def drive(coroutine: Coroutine[Any, Any, Any]) -> tuple[Any, BaseException | None]:
    """Run a coroutine that awaits nothing real to its end: (result, exception)."""
    try:
        for _ in range(100):
            coroutine.send(None)
    except StopIteration as stop:
        return stop.value, None
    except Exception as exc:
        return None, exc
    raise AssertionError("the coroutine did not finish")


def same_outcome(fast: Outcome, slow: Outcome, data: bytes) -> None:
    assert fast.reply == slow.reply, data
    assert fast.status is slow.status, data
    assert fast.method == slow.method, data
    assert fast.params == slow.params, data
    assert (fast.command and fast.command.name) == (slow.command and slow.command.name), data


def check(
    fast_dispatcher: Dispatcher, slow_dispatcher: Dispatcher, data: bytes, kind: str = "python"
) -> bool:
    """``answer`` on one side, ``handle`` on the other: same reply, same handler runs.
    True when ``answer`` gave bytes (the fast path)."""
    FAST_CALLS.clear()
    SLOW_CALLS.clear()
    fast = answering(fast_dispatcher, kind)(data)
    slow = slow_dispatcher.handle(data)
    assert FAST_CALLS == SLOW_CALLS, data
    assert all(runs <= 1 for runs in FAST_CALLS.values()), (data, FAST_CALLS)
    assert sum(FAST_CALLS.values()) <= 1, (data, FAST_CALLS)  # no async body has run yet

    if isinstance(slow, Pending):
        assert isinstance(fast, Pending), (data, fast)
        for pending in (fast, slow):
            assert inspect.getcoroutinestate(pending.coroutine) == inspect.CORO_CREATED
        fast_outcome = fast.finish(*drive(fast.coroutine))
        slow_outcome = slow.finish(*drive(slow.coroutine))
        same_outcome(fast_outcome, slow_outcome, data)
        assert FAST_CALLS == SLOW_CALLS, data
        assert all(runs == 1 for runs in FAST_CALLS.values()), (data, FAST_CALLS)
        return False

    assert isinstance(slow, Outcome), (data, slow)
    if should_be_fast(fast_dispatcher, slow, data):
        assert isinstance(fast, bytes), (data, fast)
    if isinstance(fast, bytes):
        assert fast_dispatcher.pretty is False, data
        assert slow.status is Status.OK, (data, slow)
        assert fast == slow.reply, data
        assert len(fast) <= fast_dispatcher.buf_size - ALWAYS_FITS_MARGIN, data
        return True
    assert isinstance(fast, Outcome), (data, fast)
    same_outcome(fast, slow, data)
    return False


#: Commands whose result plain orjson cannot encode (non-string keys): the fast path's one
#: orjson call gives up on them and the general path answers, with the same bytes.
NOT_PLAIN_JSON = {"non_str_keys"}


def beyond_64_bits(value: Any) -> bool:
    """Whether a reply value holds an integer orjson cannot write (the general path does)."""
    if type(value) is int:
        return not -(2**63) <= value < 2**64
    if type(value) is list:
        return any(beyond_64_bits(item) for item in value)
    if type(value) is dict:
        return any(beyond_64_bits(item) for item in value.values())
    return False


def should_be_fast(dispatcher: Dispatcher, slow: Outcome, data: bytes) -> bool:
    """Whether the contract promises bytes: a compact OK reply far below the limit, to a
    request with an id plain orjson can write (not an integer beyond 64 bits; the request
    ends at a NUL byte, if it has one) and a result plain orjson can write."""
    if dispatcher.pretty or slow.status is not Status.OK or slow.reply is None:
        return False
    if slow.method in NOT_PLAIN_JSON:
        return False
    if len(slow.reply) > dispatcher.buf_size - ALWAYS_FITS_MARGIN:
        return False
    call = decode_request(data)
    return (
        isinstance(call, Request)
        and not beyond_64_bits(call.id)
        and not beyond_64_bits(json.loads(slow.reply)["result"])
    )


def twins(*, pretty: bool, json_errors: bool, buf_size: int) -> tuple[Dispatcher, Dispatcher]:
    options: dict[str, Any] = {"pretty": pretty, "json_errors": json_errors, "buf_size": buf_size}
    return Dispatcher(FAST_REGISTRY, **options), Dispatcher(SLOW_REGISTRY, **options)


# --- datagrams: valid, near-valid and garbage ------------------------------------------------


def dumps(value: Any, ascii_only: bool = True) -> bytes:
    """JSON text as Python writes it (integers of any size, NaN allowed as a parse error);
    lone surrogates become invalid UTF-8."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


ABSENT: Any = object()

valid_ids = st.one_of(st.text(max_size=10), st.integers(min_value=-(2**63), max_value=2**64 - 1))
any_ids = st.one_of(
    valid_ids,
    st.integers(min_value=2**64, max_value=2**100),
    st.integers(min_value=-(2**100), max_value=-(2**63) - 1),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.lists(st.integers(), max_size=2),
)
raw_ids = st.sampled_from([b"1e2", b"-0", b"1.0", b"-0.0", b"1E400", b"00", b"0x1", b"NaN"])

sizes = st.one_of(
    st.integers(DEFAULT_BUF_SIZE - 200, DEFAULT_BUF_SIZE + 5),
    st.integers(SMALL_BUF - 130, SMALL_BUF + 5),
)
param_items = st.one_of(
    st.integers(-5, 5),
    st.sampled_from(["1", "-2", "+3", "x", "", "1.5", "0", "n", "Y", "1e3", 1.5, True, False]),
    st.sampled_from([None, [], {}, [1, 2], ["a"], [1.5, "2"], 2**70, -(2**64), 1e300]),
    sizes,
    sizes.map(str),
    st.integers(150, 260).map(lambda n: "é" * n),
    json_values,
)
#: The commands' parameter names, and some no command has.
param_names = st.sampled_from(
    [
        *("a", "b", "value", "id", "pid", "level", "method", "ruri", "on", "ratio", "items"),
        *("n", "x", "delay", "zz", "Value"),
    ]
)
any_params = st.one_of(
    st.just([]),
    st.just({}),
    st.none(),
    st.lists(param_items, max_size=4),
    st.dictionaries(param_names, param_items, max_size=4),
    st.text(max_size=3),
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
)
#: Params each command accepts (or nearly), so most valid requests reach the handler.
fitting_params: dict[str, Any] = {
    "add": st.one_of(
        st.lists(st.integers(-9, 9) | st.sampled_from(["4", "x"]), min_size=1, max_size=2),
        st.fixed_dictionaries({"a": st.integers()}, optional={"b": param_items}),
    ),
    "echo": st.one_of(
        st.tuples(param_items).map(list), st.fixed_dictionaries({"value": param_items})
    ),
    "profiling": st.one_of(
        st.dictionaries(st.sampled_from(["id", "pid", "level"]), param_items, max_size=1),
        st.lists(st.integers(), max_size=1),
    ),
    "t_uac": st.one_of(
        st.fixed_dictionaries({"method": param_items, "ruri": param_items}),
        st.lists(st.text(max_size=3), min_size=2, max_size=2),
    ),
    "flags": st.one_of(
        st.lists(param_items, min_size=1, max_size=3),
        st.fixed_dictionaries({"on": param_items}, optional={"ratio": param_items}),
    ),
    "état_ñ": st.one_of(st.just(ABSENT), st.lists(param_items, max_size=1)),
    "sized": st.one_of(st.tuples(sizes).map(list), st.fixed_dictionaries({"n": sizes})),
    "later": st.one_of(st.just(ABSENT), st.tuples(st.integers()).map(list)),
    "refuse_params": st.one_of(st.just(ABSENT), st.tuples(param_items).map(list)),
}
no_params = st.sampled_from([ABSENT, ABSENT, [], {}])


@st.composite
def valid_members(draw: st.DrawFn) -> list[tuple[str, bytes]]:
    """A well-formed request as (member, JSON text) pairs, in any order."""
    ascii_only = draw(st.booleans())
    method = draw(st.sampled_from([*COMMAND_NAMES, "nope", "Ping", "échec"]))
    params = draw(fitting_params.get(method, no_params))
    members = [
        ("jsonrpc", b'"2.0"'),
        ("method", dumps(method, ascii_only)),
        ("id", dumps(draw(valid_ids), ascii_only)),
    ]
    if params is not ABSENT:
        members.append(("params", dumps(params, ascii_only)))
    return draw(st.permutations(members))


def near_values(member: str) -> st.SearchStrategy[bytes]:
    """A replacement value for one member: right, wrong-typed or odd JSON text."""
    ascii_only = st.booleans()
    if member == "jsonrpc":
        values = st.sampled_from(["2.0", "1.0", 2.0, 2, None, "2", " 2.0", ["2.0"]])
    elif member == "method":
        values = st.one_of(
            st.sampled_from([*COMMAND_NAMES, "nope", "core:ping", "Ping", "", " ping"]),
            st.text(max_size=6),
            st.integers(),
            st.none(),
            st.lists(st.sampled_from(COMMAND_NAMES), max_size=2),
            st.booleans(),
        )
    elif member == "id":
        return st.one_of(st.builds(dumps, any_ids, ascii_only), raw_ids)
    elif member == "params":
        values = any_params
    else:
        values = json_values
    return st.builds(dumps, values, ascii_only)


@st.composite
def near_valid_members(draw: st.DrawFn) -> list[tuple[str, bytes]]:
    """A valid request with a few members replaced, dropped, added or duplicated."""
    members = draw(valid_members())
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["replace", "drop", "add", "duplicate"]))
        known = ["jsonrpc", "method", "id", "params"]
        if action == "add" or not members:
            key = draw(st.sampled_from([*known, "extra", "Id", "PARAMS", ""]) | st.text(max_size=3))
            value = draw(near_values(key))
            members.insert(draw(st.integers(0, len(members))), (key, value))
            continue
        index = draw(st.integers(0, len(members) - 1))
        key = members[index][0]
        if action == "replace":
            members[index] = (key, draw(near_values(key)))
        elif action == "drop":
            del members[index]
        else:  # the same key twice: orjson keeps the last one
            value = draw(st.just(members[index][1]) | near_values(key))
            members.insert(draw(st.integers(0, len(members))), (key, value))
    return members


spaces = st.sampled_from([b"", b"", b" ", b"\n", b"\t", b"\r\n  ", b" \n\t "])


@st.composite
def object_text(draw: st.DrawFn, members: list[tuple[str, bytes]]) -> bytes:
    """The members as raw JSON object text (duplicates kept), with random whitespace."""
    parts = []
    for key, value in members:
        key_text = dumps(key, draw(st.booleans()))
        parts.append(draw(spaces) + key_text + draw(spaces) + b":" + draw(spaces) + value)
    return b"{" + b",".join(part + draw(spaces) for part in parts) + b"}"


tails = st.one_of(
    spaces,
    st.sampled_from([b"\0", b"\0garbage", b"\0\0", b"\0{}", b"}", b"x", b",", b" {}"]),
    st.binary(max_size=8).map(lambda junk: b"\0" + junk),
    st.binary(max_size=8),
)


#: The usual suspects, one member at a time: each is what a fast path gets wrong first.
ONE_OFF: dict[str, list[bytes]] = {
    "jsonrpc": [b'"1.0"', b"2.0", b"2", b"null", b'"2"', b'"2.0 "'],
    "method": [b"1", b"null", b'["ping"]', b"true", b'"nope"', b'""'],
    "id": [
        *(b"true", b"false", b"null", b"1.5", b"1.0", b"1e2", b"-0", b"{}", b"[]", b'["a"]'),
        *(b"18446744073709551616", b"-9223372036854775809", b"18446744073709551615"),
    ],
    "params": [b"null", b"[]", b"{}", b'"x"', b'""', b"1", b"1.5", b"true", b"false", b"[null]"],
}


@st.composite
def one_off_members(draw: st.DrawFn) -> list[tuple[str, bytes]]:
    """A valid request with one member made wrong, dropped or given twice."""
    members = draw(valid_members())
    key = draw(st.sampled_from(list(ONE_OFF)))
    value = draw(st.sampled_from(ONE_OFF[key]))
    kept = [member for member in members if member[0] != key]
    action = draw(st.sampled_from(["replace", "replace", "drop", "twice"]))
    if action == "drop":
        return kept
    if action == "replace":
        kept.insert(draw(st.integers(0, len(kept))), (key, value))
        return kept
    return [*members, (key, value)] if draw(st.booleans()) else [(key, value), *members]


@st.composite
def request_datagrams(
    draw: st.DrawFn, members: st.SearchStrategy[list[tuple[str, bytes]]]
) -> bytes:
    text = draw(object_text(draw(members)))
    if draw(st.integers(0, 3)) == 0:  # now and then, decorate it
        text = draw(spaces) + text + draw(tails)
    return text


datagrams = st.one_of(
    request_datagrams(valid_members()),
    request_datagrams(valid_members()),
    request_datagrams(valid_members()),
    request_datagrams(one_off_members()),
    request_datagrams(one_off_members()),
    request_datagrams(one_off_members()),
    request_datagrams(near_valid_members()),
    st.binary(max_size=200),
    json_values.map(dumps),
    st.builds(lambda v, tail: dumps(v) + tail, json_values, tails),
)

EXAMPLES = [
    b'{"jsonrpc":"2.0","method":"ping","id":1}',
    b'{"jsonrpc":"2.0","method":"ping","id":1}\0garbage',
    b'{"jsonrpc":"2.0","method":"ping","id":1,"id":"a"}',
    b'{"jsonrpc":"2.0","method":"ping","id":"a","id":1.5}',
    b'{"jsonrpc":"2.0","method":"ping","id":18446744073709551616}',
    b'{"jsonrpc":"2.0","method":"ping","id":-9223372036854775809}',
    b'{"jsonrpc":"2.0","method":"ping","id":18446744073709551615}',
    b'{"jsonrpc":"2.0","method":"ping","id":true}',
    b'{"jsonrpc":"2.0","method":"ping","id":null}',
    b'{"jsonrpc":"2.0","method":"ping"}',
    b'{"jsonrpc":"2.0","method":"ping","id":1,"params":null}',
    b'{"jsonrpc":"2.0","method":"ping","id":1,"params":[]}',
    b'{"jsonrpc":"2.0","method":"ping","id":1,"params":"x"}',
    b'{"jsonrpc":2.0,"method":"ping","id":1}',
    b'{"method":"ping","id":1}',
    b'{"jsonrpc":"2.0","method":"huge","id":1}',
    b'{"jsonrpc":"2.0","method":"later","id":"x"}',
    b'{"jsonrpc":"2.0","method":"later_huge","id":7}',
    b'{"jsonrpc":"2.0","method":"non_str_keys","id":7}',
    b'{"jsonrpc":"2.0","method":"\\u00e9tat_\\u00f1","id":7}',
    b'{"jsonrpc":"2.0","method":"sized","params":[65357],"id":-1}',
    b" \n",
    b"",
]


def with_examples(test: Any) -> Any:
    for data in EXAMPLES:
        test = example(data=data, small=False)(test)
    return test


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("json_errors", [False, True])
@settings(max_examples=600)
@given(data=datagrams, small=st.booleans())
@with_examples
def test_answer_is_handle_on_any_datagram(
    kind: str, json_errors: bool, data: bytes, small: bool
) -> None:
    buf_size = SMALL_BUF if small else DEFAULT_BUF_SIZE
    fast, slow = twins(pretty=False, json_errors=json_errors, buf_size=buf_size)
    check(fast, slow, data, kind)


@pytest.mark.parametrize("json_errors", [False, True])
@settings(max_examples=200)
@given(data=datagrams, small=st.booleans())
@with_examples
def test_answer_is_handle_on_any_datagram_pretty(
    json_errors: bool, data: bytes, small: bool
) -> None:
    buf_size = SMALL_BUF if small else DEFAULT_BUF_SIZE
    fast, slow = twins(pretty=True, json_errors=json_errors, buf_size=buf_size)
    check(fast, slow, data)


# --- the size rule, swept across its boundary -------------------------------------------------

SWEEP_IDS: list[Any] = [0, 7, -1, 2**31, -(2**63), 2**64 - 1, "", "a", "é" * 9, "x" * 40]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("json_errors", [False, True])
@pytest.mark.parametrize("buf_size", [DEFAULT_BUF_SIZE, SMALL_BUF])
def test_answer_is_handle_across_the_size_limit(
    buf_size: int, json_errors: bool, kind: str
) -> None:
    fast, slow = twins(pretty=False, json_errors=json_errors, buf_size=buf_size)
    fast_paths = slow_paths = 0
    for req_id in SWEEP_IDS:
        overhead = len(
            json.dumps({"jsonrpc": "2.0", "result": "", "id": req_id}, separators=(",", ":"))
        )
        start = buf_size - ALWAYS_FITS_MARGIN - overhead - 3
        for n in range(start, buf_size - overhead + 3):
            request = {"jsonrpc": "2.0", "method": "sized", "params": [n], "id": req_id}
            data = json.dumps(request).encode()
            if check(fast, slow, data, kind):
                fast_paths += 1
            else:
                slow_paths += 1
    assert fast_paths  # both sides of the boundary were reached
    assert slow_paths


# --- the golden OpenSIPS requests through the core registry ----------------------------------

FROZEN_NOW = 1_700_000_000.25
STARTED = FROZEN_NOW - 12_345.5
OPENSIPS_CASES = load_cases()
#: Every golden request, OpenSIPS's and the others (Kamailio's dialect): (folder, case).
ALL_CASES = [
    pytest.param(folder, case, id=f"{folder.relative_to(GOLDEN)}/{case}")
    for folder in REQUEST_SETS
    for case in load_cases(folder)
]


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """midgram.engine.builtins reads a clock that stands still (uptime, core:timestamp)."""
    clock = types.SimpleNamespace(time=lambda: FROZEN_NOW, ctime=time.ctime)
    monkeypatch.setattr(builtin_commands, "time", clock)


def core_twins(*, json_errors: bool) -> tuple[Dispatcher, Dispatcher]:
    def served() -> Registry:
        return with_builtins(Registry(), LocalRuntime(started=STARTED))

    return (
        Dispatcher(served(), json_errors=json_errors),
        Dispatcher(served(), json_errors=json_errors),
    )


def test_golden_cases_are_there() -> None:
    assert len(OPENSIPS_CASES) >= 30
    assert len(ALL_CASES) > len(OPENSIPS_CASES)


@pytest.mark.usefixtures("frozen_clock")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("json_errors", [False, True])
@pytest.mark.parametrize(("folder", "case"), ALL_CASES)
def test_golden_request_answer_is_handle(
    folder: Path, case: Case, json_errors: bool, kind: str
) -> None:
    fast, slow = core_twins(json_errors=json_errors)
    answered = answering(fast, kind)(case.request)
    handled = slow.handle(case.request)
    assert isinstance(handled, Outcome)
    if isinstance(answered, bytes):
        assert handled.status is Status.OK
        assert answered == handled.reply
        reply = answered
    else:
        assert isinstance(answered, Outcome)
        same_outcome(answered, handled, case.request)
        reply = answered.reply
    if folder == OPENSIPS_UNIX and not json_errors:  # and it is OpenSIPS's reply
        if len(case.request) > fast.buf_size:  # the transport never parses these
            reply = fast.handle_oversize(len(case.request)).reply
        assert_matches(case, reply)


@pytest.mark.usefixtures("frozen_clock")
@pytest.mark.parametrize("kind", KINDS)
def test_the_golden_common_requests_take_the_fast_path(kind: str) -> None:
    fast, _ = core_twins(json_errors=False)
    answer = answering(fast, kind)
    by_name = {case.name: case for case in OPENSIPS_CASES}
    common = ("00_uptime", "02_ps", "03_version", "18_id_string", "38_duplicate_id_keys")
    for name in (*common, "19_id_null", "20_id_float", "40_nul_byte_inside"):
        assert isinstance(answer(by_name[name].request), bytes), name
    for name in ("21_notification_no_id",):
        assert not isinstance(answer(by_name[name].request), bytes), name
