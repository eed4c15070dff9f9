"""Hostile datagrams (issue 15): no datagram, however built, ends a worker or forges a log line.

Each poison below once ended the worker that read it (a RecursionError or a ValueError out of
``Dispatcher.answer``), and a few dozen stopped the whole server. Now each gets the reply
OpenSIPS's rules give it, from every path: ``handle``, ``answer`` and its C twin, and real
``midgram serve`` processes whose worker pids must not change.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from datagrams import Sockets
from servers import ANY_UDP, RawClient, ServerProcess, midgram_server, wait_until
from toolchain import needs_native

from midgram.engine.builtins import with_builtins
from midgram.engine.dispatch import Dispatcher, Outcome, Status
from midgram.engine.registry import Registry
from midgram.engine.runtime import LocalRuntime
from midgram.server.batchio import NativeIO
from midgram.server.binding import set_recv_timeout
from midgram.server.hooks import Admission
from midgram.server.supervisor import WorkerStates
from midgram.server.worker import ServerStats, Worker
from midgram.wire.jsonrpc import MAX_DEPTH, PARSE_ERROR_REPLY


def _native() -> Any:
    """The compiled module (built at install time; needs_native marks the tests using it)."""
    from midgram.server import _batchio

    return _batchio


NEST = 1000  # within orjson's 1024 levels, beyond Python's recursion limit
LONG_ID = 123456789012345678901234567890  # beyond 64 bits: orjson reads it as a float
DIGITS = "1" * 4400  # beyond Python's 4300-digit int-string limit


def request(method: str, params: Any = None, req_id: Any = 1, *, raw: bytes = b"") -> bytes:
    """A request; ``raw`` (JSON text) goes in as the params, verbatim."""
    body = b'{"jsonrpc":"2.0","method":' + orjson.dumps(method)
    if raw:
        body += b',"params":' + raw
    elif params is not None:
        body += b',"params":' + orjson.dumps(params)
    if req_id is not None:
        body += b',"id":' + str(req_id).encode()
    return body + b"}"


def nested(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


TOO_MANY = "Too few or too many parameters"


def invalid_params(data: str, req_id: Any) -> dict[str, Any]:
    error = {"code": -32602, "message": "Invalid params", "data": data}
    return {"jsonrpc": "2.0", "error": error, "id": req_id}


def too_deep(req_id: Any) -> dict[str, Any]:
    data = f"Command result nested deeper than {MAX_DEPTH} levels"
    error = {"code": -32000, "message": "Server error", "data": data}
    return {"jsonrpc": "2.0", "error": error, "id": req_id}


# The poison datagrams of issue 15, item 1, as written, and what each is answered.
POISON: dict[str, tuple[bytes, Any]] = {
    "float id, params 1000 deep": (
        request("uptime", req_id="1.5", raw=nested(NEST)),
        invalid_params(TOO_MANY, 1.5),
    ),
    "64+ bit id, params 1000 deep": (
        request("uptime", req_id=LONG_ID, raw=nested(NEST)),
        invalid_params(TOO_MANY, LONG_ID),
    ),
    "float id, 1000 deep in another member": (
        b'{"x":' + nested(NEST) + b',"jsonrpc":"2.0","method":"uptime","id":2.5}',
        {"jsonrpc": "2.0", "result": "<uptime>", "id": 2.5},
    ),
    "4400-digit int param": (
        request("log_level", [DIGITS], 3),
        invalid_params("Bad type for parameter 'level'", 3),
    ),
    "4400-digit int param, notification": (request("log_level", [DIGITS], None), None),
    "result 600 deep": (request("deep", [600], 4), too_deep(4)),
    "params 1100 deep": (request("uptime", req_id=5, raw=nested(1100)), PARSE_ERROR_REPLY),
}


def app() -> Registry:
    registry = Registry(module="hostile")

    @registry.command()
    def deep(levels: int) -> list[Any]:
        result: list[Any] = []
        for _ in range(levels - 1):
            result = [result]
        return result

    return registry


@pytest.fixture
def quiet_log_level() -> Iterator[None]:
    """log_level changes this process's midgram logger (LocalRuntime): put it back."""
    logger = logging.getLogger("midgram")
    level = logger.level
    yield
    logger.setLevel(level)


def check_reply(reply: bytes | None, expected: Any) -> None:
    if expected is None or isinstance(expected, bytes):
        assert reply == expected
        return
    assert reply is not None
    decoded = json.loads(reply)  # the stdlib: a 64+ bit id stays exact
    if expected.get("result") == "<uptime>":
        assert set(decoded["result"]) == {"Now", "Up since", "Up time"}
        expected = {**expected, "result": decoded["result"]}
    assert decoded == expected


def reply_of(handled: bytes | Outcome | Any) -> bytes | None:
    if isinstance(handled, bytes):
        return handled
    assert isinstance(handled, Outcome)
    return handled.reply


ANSWERS = ["handle", "answer", "pretty", "native"]


def answer_with(kind: str) -> Any:
    dispatcher = Dispatcher(with_builtins(app(), LocalRuntime()), pretty=kind == "pretty")
    if kind == "handle":
        return dispatcher.handle
    if kind == "native":
        return dispatcher.answer_function(_native().FastAnswer)
    return dispatcher.answer


@pytest.mark.usefixtures("quiet_log_level")
@pytest.mark.parametrize("kind", [pytest.param(k, marks=needs_native) for k in ANSWERS])
@pytest.mark.parametrize("name", POISON)
def test_every_poison_gets_its_reply_from_every_path(name: str, kind: str) -> None:
    data, expected = POISON[name]
    check_reply(reply_of(answer_with(kind)(data)), expected)


@pytest.mark.parametrize("pretty", [False, True], ids=["compact", "pretty"])
def test_a_result_at_the_depth_limit_is_still_answered(pretty: bool) -> None:
    dispatcher = Dispatcher(with_builtins(app(), LocalRuntime()), pretty=pretty)
    outcome = dispatcher.handle(request("deep", [MAX_DEPTH], 1))
    assert isinstance(outcome, Outcome)
    assert outcome.status is Status.OK
    assert outcome.reply is not None
    assert outcome.reply.count(b"[") == MAX_DEPTH
    assert reply_of(dispatcher.handle(request("deep", [MAX_DEPTH + 1], 1))) is not None
    assert dispatcher.handle(request("deep", [MAX_DEPTH + 1], 1)).status is Status.SERVER_ERROR  # type: ignore[union-attr]


@pytest.mark.usefixtures("quiet_log_level")
def test_log_level_beyond_a_c_int_saturates_as_opensips_does() -> None:
    dispatcher = Dispatcher(with_builtins(Registry(), LocalRuntime()))
    for level, expected in ((1e30, 2**31 - 1), ("-" + "9" * 30, -(2**31)), (4, 4)):
        reply = reply_of(dispatcher.handle(request("log_level", [level], 7)))
        assert reply is not None
        assert orjson.loads(reply)["result"] == {"New global log level": expected}


# --- log lines a datagram cannot forge ------------------------------------------------------

FORGED = "\n2026-01-01 00:00:00,000 midgram[1] CRITICAL midgram: FORGED"


def test_an_unknown_method_cannot_forge_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    """Item 8: a reply too big (a long string id) logs the method name: escaped."""
    dispatcher = Dispatcher(with_builtins(Registry(), LocalRuntime()))
    caplog.set_level(logging.WARNING, logger="midgram")
    data = request("x" + FORGED, req_id=orjson.dumps("i" * 70_000).decode())
    assert dispatcher.handle(data).status is Status.REPLY_TOO_BIG  # type: ignore[union-attr]
    [message] = caplog.messages
    assert "\n" not in message
    assert "\\n2026-01-01" in message


def test_a_failing_command_logs_one_traceback_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = Registry()

    @registry.command()
    def fail() -> None:
        raise RuntimeError("no")

    dispatcher = Dispatcher(with_builtins(registry, LocalRuntime()))
    caplog.set_level(logging.ERROR, logger="midgram")
    for i in range(50):
        reply = reply_of(dispatcher.answer(request("fail", req_id=i)))
        assert reply is not None
        assert orjson.loads(reply)["error"]["code"] == -32000
    assert len(caplog.records) == 1


# --- real servers ---------------------------------------------------------------------------


def poison_run(running: ServerProcess, client: RawClient, rounds: int = 60) -> None:
    """Send ``rounds`` poison datagrams (each kind in turn); check every reply."""
    kinds = list(POISON.values())
    for index in range(rounds):
        data, expected = kinds[index % len(kinds)]
        if expected is None:
            client.send(data)
            continue
        check_reply(client.exchange(data, timeout=5.0), expected)


@pytest.mark.parametrize("transport", ["unix", "udp", "unix, traced"])
def test_sixty_poison_datagrams_leave_the_same_workers_serving(
    transport: str, sockets: Sockets
) -> None:
    socket_name = ANY_UDP if transport == "udp" else None
    # traced: each datagram served on its own in Python, and traced as HEP (to nobody)
    nobody = f"udp:127.0.0.1:{sockets.unanswered()}"
    tracing = ("--trace-to", nobody) if "traced" in transport else ()
    flags = ("--children", "2", "--app", "apps:mi", *tracing)
    with midgram_server(*flags, socket=socket_name) as running:
        pids = running.worker_pids()
        with running.client() as client:
            poison_run(running, client)
        assert running.worker_pids() == pids
        assert "Traceback" not in running.log()
        assert "died" not in running.log()
        assert "crashed" not in running.log()


def test_poison_leaves_an_in_process_server_serving() -> None:
    with midgram_server("--children", "0", "--app", "apps:mi") as running:
        with running.client() as client:
            poison_run(running, client, rounds=len(POISON))
            assert client.call("uptime")["result"]
        assert running.proc.poll() is None


def test_received_counts_every_datagram_of_a_poisoned_batch() -> None:
    """Item 11: the datagrams of a batch that crashed were never counted."""
    with midgram_server("--children", "1", "--app", "apps:mi") as running:
        with running.client() as client:
            uptime = request("uptime", req_id=9)
            sent = 0
            for data, _ in POISON.values():
                for message in (uptime, data, uptime):
                    client.send(message)
                    sent += 1
            replies = sum(1 for _, expected in POISON.values() if expected is not None)
            for _ in range(replies + 2 * len(POISON)):
                assert client.recv(timeout=5.0) is not None
            stats = client.call("get_statistics", [["received"]])["result"]
        assert stats["mi_datagram:received"] == sent  # the get_statistics call not yet counted


def test_log_level_beyond_int64_under_the_forked_server() -> None:
    """Item 11: it answered -32000 and logged a traceback (the process table holds int64)."""
    with midgram_server("--children", "2") as running:
        reply = running.call("log_level", [1e30])
        assert reply["result"] == {"New global log level": 2**31 - 1}
        reply = running.call("log_level", ["9" * 25])
        assert reply["result"] == {"New global log level": 2**31 - 1}
        running.call("log_level", [3])
        assert "Traceback" not in running.log()


def test_a_worker_killed_while_serving_is_not_a_boot_failure() -> None:
    """Item 1: a worker that died within 1 s of its restart counted as a boot failure, and
    five stopped the server. A worker killed by its datagram is restarted, and the log says
    which datagram it was serving."""
    crash = request("crash", req_id=1)
    with midgram_server("--children", "1", "--app", "apps:mi") as running:
        for count in range(1, 8):
            with running.client() as client:
                client.send(crash)
            wait_until(
                lambda n=count: running.log().count("while serving a datagram") >= n,  # type: ignore[misc]
                what=f"death {count} to be logged",
            )
            # the replacement answers at once: each death comes within 1 s of its start
            assert running.call("uptime")["result"]
        assert running.proc.poll() is None
        assert "died at start-up" not in running.log()
        line = next(line for line in running.log().splitlines() if "while serving" in line)
        assert f"while serving a datagram of {len(crash)} bytes: {crash!r}" in line


def test_a_forged_method_name_stays_on_its_line_at_debug_level() -> None:
    """Item 8: any socket writer can turn debug logging on, which logged methods raw."""
    with midgram_server("--children", "1") as running:
        running.call("log_level", [4])
        with running.client() as client:

            def logged() -> bool:
                # a worker applies a new level between bursts: send until one logs it
                assert client.exchange(request("x" + FORGED, req_id=1)) is not None
                return "FORGED" in running.log()

            wait_until(logged, what="the forged method to be logged at debug level")
            client.call("log_level", [3])
        assert not any("FORGED" in line and "\\n" not in line for line in running.lines)


def test_allow_from_refusals_are_rate_limited() -> None:
    """Item 8: 50,000 refused datagrams wrote 50,000 lines. One allowed client (127.0.0.2)
    reads the statistics; the refused ones come from 127.0.0.1."""
    flags = ("--allow-from", "127.0.0.2/32", "--children", "1")
    with midgram_server(*flags, socket=ANY_UDP) as running:
        target = running.target
        allowed = RawClient(target)
        allowed.sock.bind(("127.0.0.2", 0))
        with allowed, RawClient(target) as refused:
            for _ in range(20):
                for _ in range(100):
                    refused.send(request("uptime"))
                # one worker, one queue: once this is answered, the 100 before it were read
                assert allowed.call("uptime")["result"]
            stats = allowed.call("get_statistics", [["refused"]])["result"]
        assert stats["mi_datagram:refused"] == 2000
        lines = [line for line in running.lines if "not in allow_from" in line]
        assert 1 <= len(lines) <= 2, lines


def test_what_a_unix_client_names_itself_is_escaped_in_the_log() -> None:
    """A UNIX client chooses its own address: a vanished one is logged by that name."""
    with midgram_server("--children", "1") as running:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind("\0gone" + FORGED)
        sock.sendto(request("uptime"), running.target)
        sock.close()  # the reply finds nobody
        running.wait_for_log("the client is gone")
        assert not re.search(r"^\S* ?FORGED", running.log(), re.MULTILINE)
        assert not any(line.startswith("2026-01-01") for line in running.lines)


# --- the worker's last line of defence ------------------------------------------------------


class BuggyDispatcher(Dispatcher):
    """A stand-in for a bug of midgram's: answering an oversize datagram raises."""

    def handle_oversize(self, size: int) -> Outcome:
        raise RuntimeError("a bug")


@needs_native
@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_a_worker_survives_a_bug_and_serves_the_rest_of_the_batch(
    native: bool, caplog: pytest.LogCaptureFixture
) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(f"\0mgtest-worker-{id(server)}")
    set_recv_timeout(server, 0.05)
    states = WorkerStates(1)
    dispatcher = BuggyDispatcher(with_builtins(Registry(), LocalRuntime()), buf_size=1024)
    stats = ServerStats.declare(dispatcher.registry.stats)
    io = NativeIO(server, 1024, in_hand=states.in_hand(0))
    worker = Worker(
        server, dispatcher, stats, socket_timeout_ms=1000, io=io if native else None,
        in_hand=states.in_hand(0),
        admission=() if native else [Admission(lambda peer: True, "none")],
    )  # fmt: skip
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop.is_set,))
    caplog.set_level(logging.ERROR, logger="midgram.server.worker")
    thread.start()
    try:
        with RawClient("@" + server.getsockname()[1:].decode()) as client:
            client.send(b"x" * 2000)  # truncated: handle_oversize raises
            client.send(request("uptime", req_id=5))  # in the same batch, most likely
            assert client.recv() == b"500 Internal error"
            reply = client.recv()  # the rest of the batch is served
            assert reply is not None
            assert json.loads(reply)["id"] == 5
    finally:
        stop.set()
        thread.join(10)
        server.close()
    [message] = caplog.messages
    assert message.startswith("serving a datagram of 1024 bytes: b'xxxxxxxx")
    assert message.endswith("failed: the worker goes on")
    assert states.held(0) is None  # the batch is over
