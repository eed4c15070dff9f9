"""Stuck handlers are noticed (issue 15 item 9): ``worker_timeout``.

A handler that never returned held its worker forever: two of them and the server answered
nothing, and SIGTERM took 10 s. Now the supervisor reads, in each worker's shared record,
since when it holds its datagram, and replaces a worker held longer than ``worker_timeout``.
"""

from __future__ import annotations

import contextlib
import signal
import time

import orjson
import pytest
from servers import ServerProcess, midgram_server, wait_until

from midgram.config.settings import Settings
from midgram.errors import ConfigError
from midgram.server.supervisor import WorkerStates, hold, let_go

STUCK = b'{"jsonrpc":"2.0","method":"slow","params":{"seconds":1000},"id":%d}'
UPTIME = b'{"jsonrpc":"2.0","method":"uptime","id":%d}'


def started(server: ServerProcess, count: int) -> None:
    wait_until(lambda: server.log().count("slow command started") >= count, 10, "slow calls")


def answered_uptime(server: ServerProcess, within: float) -> float:
    """Seconds until an ``uptime`` call is answered (one call every 0.2 s), failing after
    ``within``."""
    start = time.monotonic()
    with server.client() as client:
        for n in range(int(within / 0.2) + 1):
            client.send(UPTIME % n)
            turn = time.monotonic() + 0.2
            while (left := turn - time.monotonic()) > 0:
                reply = client.recv(left)  # the replies to earlier calls come first
                if reply is not None and orjson.loads(reply)["id"] == n:
                    return time.monotonic() - start
    raise AssertionError(f"uptime not answered within {within} s:\n{server.log()}")


def statistic(server: ServerProcess, name: str) -> int:
    value: int = server.call("get_statistics", [[name]])["result"][f"mi_datagram:{name}"]
    return value


def test_stuck_handlers_are_replaced_after_worker_timeout() -> None:
    with midgram_server("--children", "2", "--app", "apps:mi", "--worker-timeout", "1s") as server:
        pids = set(server.worker_pids())
        with contextlib.ExitStack() as stack:
            clients = [stack.enter_context(server.client()) for _ in range(2)]
            for n, client in enumerate(clients):
                client.send(STUCK % n)
                started(server, n + 1)  # one after the other: one each
            waited = answered_uptime(server, within=5)  # both workers are held till then
            assert 0.5 < waited < 3
            wait_until(lambda: statistic(server, "stuck_requests") == 2, 5, "both counted")
            wait_until(lambda: not pids & set(server.worker_pids()), 5, "both replaced")
            assert server.log().count("beyond worker_timeout (1 s): killing it") == 2
            assert all(client.recv(0.1) is None for client in clients)  # answered by nobody


def test_without_worker_timeout_a_stuck_handler_keeps_its_worker() -> None:
    with midgram_server("--children", "1", "--app", "apps:mi") as server:
        with server.client() as client:
            client.send(STUCK % 1)
            started(server, 1)
            with server.client() as other:
                assert other.exchange(UPTIME % 2, 1.5) is None
        server.stop()
        assert "worker_timeout" not in server.log()


@pytest.mark.parametrize("timeout", ["1s", "0"])
def test_sigterm_with_a_stuck_handler_stops_within_its_deadline(timeout: str) -> None:
    """With worker_timeout, once the request is that old; without, after 10 s."""
    deadline = 3.0 if timeout != "0" else 12.0
    with midgram_server(
        "--children", "1", "--app", "apps:mi", "--worker-timeout", timeout
    ) as server:
        with server.client() as client:
            client.send(STUCK % 1)
            started(server, 1)
            begin = time.monotonic()
            assert server.stop(signal.SIGTERM, timeout=deadline + 5) == 0
            took = time.monotonic() - begin
        assert took < deadline, server.log()
        if timeout == "0":
            assert took > 9  # stop_timeout: the worker is killed then


def test_worker_timeout_is_checked_and_named() -> None:
    assert Settings().worker_timeout == 0
    assert Settings(worker_timeout="2.5").worker_timeout == 2.5
    for bad in ("soon", -1, 86_401, float("nan"), True):
        with pytest.raises(ConfigError) as info:
            Settings(worker_timeout=bad)
        assert info.value.parameter == "worker_timeout"


def test_a_workers_record_says_since_when_it_holds_its_datagram() -> None:
    states = WorkerStates(1)
    assert states.busy_for(0) is None
    hold(states.in_hand(0), b"{}")
    busy = states.busy_for(0)
    assert busy is not None
    assert 0 <= busy < 0.5
    assert states.held(0) == (2, b"{}")
    let_go(states.in_hand(0))
    assert states.busy_for(0) is None
