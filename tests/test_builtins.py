"""The built-in commands, and every golden OpenSIPS exchange pushed through the engine."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import pytest
from golden_cases import Case, assert_matches, load_cases

from midgram.engine.builtins import SERVER_NAME, with_builtins
from midgram.engine.dispatch import Dispatcher, Outcome
from midgram.engine.registry import Registry
from midgram.engine.runtime import LocalRuntime

CASES = load_cases()


def engine(registry: Registry | None = None) -> tuple[Dispatcher, LocalRuntime]:
    runtime = LocalRuntime()
    served = with_builtins(registry if registry is not None else Registry(), runtime)
    return Dispatcher(served), runtime


def serve_bytes(dispatcher: Dispatcher, data: bytes) -> bytes | None:
    """What the transport does before the engine: an oversize datagram is never parsed."""
    if len(data) > dispatcher.buf_size:
        return dispatcher.handle_oversize(len(data)).reply
    outcome = dispatcher.handle(data)
    assert isinstance(outcome, Outcome)
    return outcome.reply


def test_all_golden_cases_are_loaded() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=str)
def test_golden_reply(case: Case) -> None:
    dispatcher, _ = engine()
    assert_matches(case, serve_bytes(dispatcher, case.request))


def mi(dispatcher: Dispatcher, method: str, params: Any = None) -> Any:
    request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": 1}
    if params is not None:
        request["params"] = params
    reply = serve_bytes(dispatcher, json.dumps(request).encode())
    assert reply is not None
    decoded = json.loads(reply)
    return decoded.get("result", decoded.get("error"))


def test_which_and_help() -> None:
    dispatcher, _ = engine()
    names = mi(dispatcher, "which")
    assert names[:4] == [
        "get_statistics",
        "list_statistics",
        "reset_statistics",
        "reset_all_statistics",
    ]
    assert names[-1] == "help"
    assert mi(dispatcher, "which", ["log_level"]) == [[], ["level"], ["level", "pid"]]
    assert mi(dispatcher, "which", {"command": "get_statistics"}) == [["statistics"]]
    assert mi(dispatcher, "which", ["nope"]) == {"code": 404, "message": "unknown MI command"}
    assert mi(dispatcher, "help") == "Usage: help mi_cmd - returns information about 'mi_cmd'"
    assert mi(dispatcher, "help", ["nope"]) == {"code": 404, "message": "unknown MI command"}


def test_program_commands_follow_the_core_ones() -> None:
    registry = Registry(module="calls")

    @registry.command()
    def calls_active() -> int:
        return 3

    @registry.command()
    def undocumented() -> int:
        return 0

    dispatcher, _ = engine(registry)
    assert mi(dispatcher, "which")[-2:] == ["calls_active", "undocumented"]
    assert mi(dispatcher, "help", ["undocumented"]) == {
        "Help": "not available for this command",
        "Exported by": "calls",
    }


def test_a_program_command_may_not_shadow_a_builtin() -> None:
    registry = Registry()
    registry.command(name="ps")(lambda: None)
    with pytest.raises(ValueError, match="built-in"):
        engine(registry)


def test_version_pwd_arg() -> None:
    dispatcher, _ = engine()
    assert mi(dispatcher, "version") == {"Server": SERVER_NAME}
    assert SERVER_NAME.startswith("midgram ")
    assert set(mi(dispatcher, "version", ["x"])) == {"Server", "release"}
    assert mi(dispatcher, "pwd") == {"WD": os.getcwd()}
    assert mi(dispatcher, "arg") == sys.argv


def test_uptime_shape() -> None:
    dispatcher, _ = engine()
    result = mi(dispatcher, "uptime")
    assert list(result) == ["Now", "Up since", "Up time"]
    assert result["Up time"].endswith(" [sec]")


def test_ps_kill_log_level() -> None:
    dispatcher, runtime = engine()
    assert mi(dispatcher, "ps") == {
        "Processes": [{"ID": 0, "PID": os.getpid(), "Type": "MI Datagram"}]
    }
    assert mi(dispatcher, "log_level") == {
        "Processes": [{"PID": os.getpid(), "Log level": 3, "Type": "MI Datagram"}]
    }
    assert mi(dispatcher, "log_level", [4]) == {"New global log level": 4}
    assert mi(dispatcher, "log_level", {"level": "2", "pid": os.getpid()}) == {"Log level": 2}
    assert mi(dispatcher, "log_level", [1, 1]) == {
        "code": -32602,
        "message": "Invalid params",
        "data": "Bad PID",
    }
    assert mi(dispatcher, "log_level")["Processes"][0]["Log level"] == 2
    assert not runtime.stop_requested
    assert mi(dispatcher, "kill") == "OK"
    assert runtime.stop_requested


def test_statistics_commands() -> None:
    registry = Registry()
    started = registry.stats.counter("calls:started")
    active = registry.stats.gauge("calls:active")
    started.inc(5)
    active.add(2)
    dispatcher, _ = engine(registry)

    assert mi(dispatcher, "get_statistics", [["calls:"]]) == {
        "calls:started": 5,
        "calls:active": 2,
    }
    assert mi(dispatcher, "get_statistics", {"statistics": ["STARTED"]}) == {"calls:started": 5}
    assert "core:timestamp" in mi(dispatcher, "get_statistics", [["all"]])
    not_found = {"code": 404, "message": "Statistics Not Found"}
    assert mi(dispatcher, "get_statistics", [["calls:started"]]) == not_found
    assert mi(dispatcher, "list_statistics", [["started", "calls:"]]) == {
        "started": "incremental",
        "calls:started": "incremental",
        "calls:active": "non-incremental",
    }
    assert mi(dispatcher, "list_statistics")["core:timestamp"] == "non-incremental"
    assert mi(dispatcher, "reset_statistics", [["nope"]]) == not_found
    assert mi(dispatcher, "reset_statistics", [["started"]]) == "OK"
    assert mi(dispatcher, "get_statistics", [["started"]]) == {"calls:started": 0}
    started.inc()
    assert mi(dispatcher, "reset_all_statistics") == "OK"
    assert mi(dispatcher, "get_statistics", [["started"]]) == {"calls:started": 0}
