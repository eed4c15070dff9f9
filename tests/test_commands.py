"""The registry, OpenSIPS's recipe matching and getters, and dispatch outcomes."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from midgram.engine.coercion import UNCHANGED, coercer_for, get_bool, get_int, get_str
from midgram.engine.dispatch import Dispatcher, Outcome, Pending, Status
from midgram.engine.registry import (
    Registry,
    bind_arguments,
    make_command,
    recipes_from_signature,
    select_recipe,
)
from midgram.errors import InvalidParams, MIError


def call(method: str, params: Any = None, req_id: Any = 1) -> bytes:
    request: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        request["params"] = params
    if req_id is not ...:
        request["id"] = req_id
    return json.dumps(request).encode()


def run(dispatcher: Dispatcher, data: bytes) -> Outcome:
    outcome = dispatcher.handle(data)
    if isinstance(outcome, Pending):
        return asyncio.run(_finish(outcome))
    return outcome


async def _finish(pending: Pending) -> Outcome:
    try:
        result = await pending.coroutine
    except Exception as exc:
        return pending.finish(error=exc)
    return pending.finish(result)


def reply_of(dispatcher: Dispatcher, data: bytes) -> Any:
    outcome = run(dispatcher, data)
    assert outcome.reply is not None
    return json.loads(outcome.reply)


@pytest.fixture
def mi() -> Registry:
    registry = Registry()

    @registry.command(help="get or set the call limit")
    def call_limit(limit: int | None = None, scope: str = "global") -> dict[str, Any]:
        return {"limit": limit, "scope": scope}

    @registry.command(recipes=[["id"], ["pid"], ["level"]])
    def profiling(id: int = 0, pid: int = 0, level: int = 0) -> list[int]:
        return [id, pid, level]

    @registry.command(named_only=True)
    def t_uac(method: str, ruri: str) -> str:
        return f"{method} {ruri}"

    @registry.command()
    def boom() -> None:
        raise ZeroDivisionError("secret detail")

    @registry.command()
    def refuse() -> None:
        raise MIError(404, "Not here")

    @registry.command()
    def nothing() -> None:
        return None

    @registry.command()
    def unserialisable() -> Any:
        return {1, 2}

    @registry.command()
    async def later(delay: int = 0) -> dict[str, int]:
        await asyncio.sleep(0)
        return {"delay": delay}

    @registry.command()
    async def later_fails() -> None:
        await asyncio.sleep(0)
        raise MIError(480, "Temporarily Unavailable")

    @registry.command()
    def stats(statistics: list[str]) -> list[str]:
        return statistics

    return registry


@pytest.fixture
def dispatcher(mi: Registry) -> Dispatcher:
    return Dispatcher(mi)


# --- recipes ---------------------------------------------------------------------------------


def test_recipes_from_signature() -> None:
    def f(a: int, b: int = 1, c: int = 2) -> None: ...

    def g() -> None: ...

    assert recipes_from_signature(f) == (("a",), ("a", "b"), ("a", "b", "c"))
    assert recipes_from_signature(g) == ((),)


def test_which_shows_signature_recipes(mi: Registry) -> None:
    command = mi.get("call_limit")
    assert command is not None
    assert command.recipes == ((), ("limit",), ("limit", "scope"))
    assert command.help == "get or set the call limit"


def test_bad_handlers_are_refused_at_registration() -> None:
    def star(*args: int) -> None: ...

    def recipe_typo(a: int = 0) -> None: ...

    with pytest.raises(TypeError, match="nameable"):
        make_command(star)
    with pytest.raises(TypeError, match="not parameters"):
        make_command(recipe_typo, recipes=[["b"]])
    with pytest.raises(TypeError, match="twice"):
        make_command(recipe_typo, recipes=[["a", "a"]])
    registry = Registry()
    registry.command(name="x")(recipe_typo)
    with pytest.raises(ValueError, match="already registered"):
        registry.command(name="x")(recipe_typo)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (None, ()),
        ([5], ("limit",)),
        ([5, "x"], ("limit", "scope")),
        ({"limit": 5}, ("limit",)),
        ({"scope": "x", "limit": 5}, ("limit", "scope")),
    ],
)
def test_select_recipe(mi: Registry, params: Any, expected: tuple[str, ...]) -> None:
    command = mi.get("call_limit")
    assert command is not None
    assert select_recipe(command, params) == expected


@pytest.mark.parametrize(
    ("method", "params", "data"),
    [
        ("call_limit", [1, 2, 3], "Too few or too many parameters"),
        ("call_limit", {"scope": "x"}, "Named parameters do not match"),
        ("call_limit", {"Limit": 1}, "Named parameters do not match"),  # case-sensitive
        ("call_limit", {"a": 1, "b": 2, "c": 3}, "Too few or too many parameters"),
        ("profiling", [5], "Ambiguous call, use named parameters instead"),
        ("profiling", None, "Too few or too many parameters"),
        ("t_uac", ["INVITE", "sip:a@b"], "Command only supports named parameters"),
        ("nothing", [1], "Too few or too many parameters"),
        ("call_limit", ["x"], "Bad type for parameter 'limit'"),
        ("call_limit", [True], "Bad type for parameter 'limit'"),
        ("call_limit", [5, None], "Bad type for parameter 'scope'"),
        ("stats", ["all"], "Bad type for parameter 'statistics'"),
        ("stats", [[]], "Empty array in parameter 'statistics'"),
        ("stats", [["a", {}]], "Bad type for array item in parameter 'statistics'"),
    ],
)
def test_invalid_params_texts(dispatcher: Dispatcher, method: str, params: Any, data: str) -> None:
    reply = reply_of(dispatcher, call(method, params, 9))
    assert reply == {
        "jsonrpc": "2.0",
        "error": {"code": -32602, "message": "Invalid params", "data": data},
        "id": 9,
    }


def test_named_and_positional_calls(dispatcher: Dispatcher) -> None:
    assert reply_of(dispatcher, call("profiling", {"pid": 7}))["result"] == [0, 7, 0]
    assert reply_of(dispatcher, call("call_limit", ["12", 3]))["result"] == {
        "limit": 12,
        "scope": "3",
    }
    result = reply_of(dispatcher, call("t_uac", {"method": "INVITE", "ruri": "sip:a"}))["result"]
    assert result == "INVITE sip:a"
    assert reply_of(dispatcher, call("stats", [["a", 1.9]]))["result"] == ["a", "1"]


# --- getters (docs/compatibility.md, "Parameter types and their errors") ----------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(5, 5), (1.9, 1), (-1.9, -1), ("42", 42), ("-7", -7), ("+3", 3), ("-", 0)],
)
def test_int_getter(value: Any, expected: int) -> None:
    assert get_int(value, "x") == expected


@pytest.mark.parametrize("value", ["4x", "", "0x1F", None, True, [], {}, " 1", "١"])
def test_int_getter_refuses(value: Any) -> None:
    with pytest.raises(InvalidParams, match="Bad type for parameter 'x'"):
        get_int(value, "x")


def test_str_and_bool_getters() -> None:
    assert get_str(1.9, "s") == "1"
    assert get_str("a", "s") == "a"
    assert [get_bool(v, "b") for v in ("0", "n", "N", "1", "y", "Y", 0, 2, True)] == [
        False,
        False,
        False,
        True,
        True,
        True,
        False,
        True,
        True,
    ]
    with pytest.raises(InvalidParams):
        get_str(None, "s")
    with pytest.raises(InvalidParams):
        get_bool("maybe", "b")


JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text()
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=6,
)


@given(value=JSON_VALUES)
def test_each_getter_hands_its_unchanged_type_on_as_it_is(value: Any) -> None:
    # What lets bind_arguments skip a getter: for a value of exactly that type it is the
    # value itself.
    for getter, kind in UNCHANGED.items():
        if type(value) is kind:
            assert getter(value, "x") is value


def _bind_with_every_getter(command: Any, params: dict[str, Any]) -> dict[str, Any]:
    """The reference binding: select_recipe's recipe, each value through its getter."""
    recipe = select_recipe(command, params)
    return {name: command.coercers[name](params[name], name) for name in recipe}


@given(
    params=st.dictionaries(
        st.sampled_from(["s", "i", "b", "f", "o", "a", "z"]), JSON_VALUES, max_size=7
    )
)
def test_named_params_bind_as_their_getters_would(params: dict[str, Any]) -> None:
    def handler(
        *,
        s: str,
        i: int = 0,
        b: bool = False,
        f: float = 0.0,
        o: dict[str, Any] | None = None,
        a: Any = None,
    ) -> None:
        pass

    command = make_command(handler)
    try:
        expected: dict[str, Any] | Exception = _bind_with_every_getter(command, params)
    except InvalidParams as exc:
        expected = exc
    try:
        bound: dict[str, Any] | Exception = bind_arguments(command, params)
    except InvalidParams as exc:
        bound = exc
    if isinstance(expected, Exception):
        assert isinstance(bound, InvalidParams)
        assert str(bound) == str(expected)
    else:
        assert bound == expected
        assert all(type(bound[k]) is type(v) for k, v in expected.items())


def test_coercer_for_unknown_annotations_passes_values_through() -> None:
    sentinel = object()
    assert coercer_for(Any)(sentinel, "x") is sentinel
    assert coercer_for(int | str)(sentinel, "x") is sentinel


# --- dispatch outcomes ----------------------------------------------------------------------


def test_unknown_method(dispatcher: Dispatcher) -> None:
    outcome = run(dispatcher, call("nope", None, 10))
    assert outcome.status is Status.UNKNOWN_METHOD
    assert outcome.reply == (
        b'{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found"},"id":10}'
    )


def test_command_error(dispatcher: Dispatcher) -> None:
    outcome = run(dispatcher, call("refuse"))
    assert outcome.status is Status.COMMAND_ERROR
    assert json.loads(outcome.reply or b"")["error"] == {"code": 404, "message": "Not here"}


def test_handler_crash_is_a_server_error_and_logged(
    dispatcher: Dispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="midgram.engine.dispatch"):
        outcome = run(dispatcher, call("boom"))
    assert outcome.status is Status.SERVER_ERROR
    error = json.loads(outcome.reply or b"")["error"]
    assert error == {
        "code": -32000,
        "message": "Server error",
        "data": "Command handler raised ZeroDivisionError",
    }
    assert "secret detail" not in (outcome.reply or b"").decode()
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)


def test_unserialisable_result_is_a_server_error(dispatcher: Dispatcher) -> None:
    assert run(dispatcher, call("unserialisable")).status is Status.SERVER_ERROR


def test_none_result_means_ok(dispatcher: Dispatcher) -> None:
    assert reply_of(dispatcher, call("nothing"))["result"] == "OK"


def test_async_handlers(dispatcher: Dispatcher) -> None:
    pending = dispatcher.handle(call("later", [3]))
    assert isinstance(pending, Pending)
    pending.coroutine.close()
    assert reply_of(dispatcher, call("later", [3]))["result"] == {"delay": 3}
    error = reply_of(dispatcher, call("later_fails"))["error"]
    assert error == {"code": 480, "message": "Temporarily Unavailable"}
    later = dispatcher.handle(call("later", {"delay": 4}))
    assert isinstance(later, Pending)
    outcome = asyncio.run(later.settle())
    assert json.loads(outcome.reply or b"")["result"] == {"delay": 4}


@pytest.mark.parametrize("method", ["nothing", "nope", "boom", "refuse", "later"])
def test_notifications_get_no_reply(dispatcher: Dispatcher, method: str) -> None:
    outcome = run(dispatcher, call(method, None, ...))
    assert outcome.reply is None
    assert outcome.method == method


def test_invalid_notification_is_answered_with_null_id(dispatcher: Dispatcher) -> None:
    outcome = run(dispatcher, b'{"jsonrpc":"2.0","method":"nothing","params":null}')
    assert outcome.status is Status.INVALID_REQUEST
    assert outcome.reply == (
        b'{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request"},"id":null}'
    )


def test_parse_error_and_empty_datagram(dispatcher: Dispatcher) -> None:
    assert run(dispatcher, b"{").reply == b"400 Parse_error"
    assert run(dispatcher, b"").reply is None
    assert dispatcher.handle_oversize(70000).reply == b"400 Parse_error"


def test_reply_too_big_is_an_internal_error() -> None:
    registry = Registry()

    @registry.command()
    def big(size: int) -> str:
        return "x" * size

    dispatcher = Dispatcher(registry, buf_size=1000)
    assert run(dispatcher, call("big", [900])).status is Status.OK
    outcome = run(dispatcher, call("big", [1000]))
    assert outcome.status is Status.REPLY_TOO_BIG
    assert outcome.reply == b"500 Internal error"


def test_json_errors_option() -> None:
    registry = Registry()

    @registry.command()
    def big() -> str:
        return "x" * 2000

    dispatcher = Dispatcher(registry, buf_size=1000, json_errors=True)
    parse = json.loads(run(dispatcher, b"nope").reply or b"")
    assert parse["error"]["code"] == -32700
    assert parse["error"]["message"] == "Parse error"
    assert parse["id"] is None
    too_big = json.loads(run(dispatcher, call("big", None, "q")).reply or b"")
    assert too_big["error"]["code"] == -32603
    assert "exceeds the 1000-byte limit" in too_big["error"]["data"]
    assert too_big["id"] == "q"
    oversize = json.loads(dispatcher.handle_oversize(5000).reply or b"")
    assert "1000-byte limit" in oversize["error"]["data"]


def test_pretty_replies(mi: Registry) -> None:
    dispatcher = Dispatcher(mi, pretty=True)
    reply = run(dispatcher, call("nope", None, 1)).reply
    assert reply == (
        b'{\n\t"jsonrpc":\t"2.0",\n\t"error":\t{\n\t\t"code":\t-32601,\n'
        b'\t\t"message":\t"Method not found"\n\t},\n\t"id":\t1\n}'
    )


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_any_bytes_give_a_reply_a_plain_error_or_nothing(data: bytes) -> None:
    registry = Registry()
    registry.command(name="ps")(lambda: "OK")
    outcome = Dispatcher(registry).handle(data)
    assert isinstance(outcome, Outcome)
    assert (
        outcome.reply is None
        or outcome.reply == b"400 Parse_error"
        or (json.loads(outcome.reply)["jsonrpc"] == "2.0")
    )


@settings(max_examples=300)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "jsonrpc": st.sampled_from(["2.0", "1.0", 2]),
            "method": st.sampled_from(["ps", "nope", 1, None]),
            "params": st.one_of(st.none(), st.lists(st.integers(), max_size=2), st.just({})),
            "id": st.one_of(st.none(), st.integers(), st.text(max_size=3), st.booleans()),
        },
    )
)
def test_any_request_shape_gets_a_valid_reply_or_nothing(request_obj: dict[str, Any]) -> None:
    registry = Registry()
    registry.command(name="ps")(lambda: "OK")
    outcome = Dispatcher(registry).handle(json.dumps(request_obj).encode())
    assert isinstance(outcome, Outcome)
    if outcome.reply is not None:
        reply = json.loads(outcome.reply)
        assert next(iter(reply)) == "jsonrpc"
        assert list(reply)[-1] == "id"


def opensips_scan(recipes: list[tuple[str, ...]], params: Any) -> tuple[str, ...] | str:
    """get_cmd_recipe as OpenSIPS writes it (mi.c), literally: the reference."""
    if params is None:
        return next((r for r in recipes if not r), "Too few or too many parameters")
    if isinstance(params, list):
        found = [r for r in recipes if r and len(r) == len(params)]
        if len(found) == 1:
            return found[0]
        return (
            "Ambiguous call, use named parameters instead"
            if found
            else ("Too few or too many parameters")
        )
    err = "Too few or too many parameters"
    for recipe in recipes:
        if recipe and len(recipe) == len(params):
            err = "Named parameters do not match"
            if all(name in params for name in recipe):
                return recipe
    return err


names = st.sampled_from(["a", "b", "c", "d"])


@settings(max_examples=500)
@given(
    st.lists(st.lists(names, unique=True, max_size=4).map(tuple), min_size=1, max_size=5),
    st.one_of(
        st.none(),
        st.lists(st.integers(), min_size=1, max_size=4),
        st.dictionaries(names, st.integers(), min_size=1, max_size=4),
    ),
)
def test_recipe_selection_is_opensips_scan(recipes: list[tuple[str, ...]], params: Any) -> None:
    def handler(a: Any = 0, b: Any = 0, c: Any = 0, d: Any = 0) -> None: ...

    command = make_command(handler, recipes=recipes)
    expected = opensips_scan(recipes, params)
    if isinstance(expected, tuple):
        assert select_recipe(command, params) == expected
    else:
        with pytest.raises(InvalidParams) as info:
            select_recipe(command, params)
        assert info.value.data == expected
