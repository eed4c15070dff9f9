"""``async def`` handlers in a forked worker run beside everything else (issue 10 item 5).

With ``--children 1``, ``uptime`` once waited 2.8 s behind a 3 s async handler, and timed out
behind a 10 s one: the worker ran each coroutine to completion. Now its event loop runs them
while it goes on serving (``midgram.server.inflight``), up to ``ASYNC_MAX`` at once.
"""

from __future__ import annotations

import contextlib
import signal
import time

import orjson
from servers import ServerProcess, midgram_server, wait_until

from midgram.server.inflight import ASYNC_MAX

UPTIME = b'{"jsonrpc":"2.0","method":"uptime","id":0}'


def snooze(seconds: float, req_id: int) -> bytes:
    return orjson.dumps(
        {"jsonrpc": "2.0", "method": "snooze", "params": {"seconds": seconds}, "id": req_id}
    )


def started(server: ServerProcess, what: str, count: int = 1) -> None:
    wait_until(lambda: server.log().count(f"{what} started") >= count, 10, what)


def test_uptime_answers_at_once_beside_an_async_call_in_flight() -> None:
    with (
        midgram_server("--children", "1", "--app", "apps:mi") as server,
        server.client() as slow,
        server.client() as client,
    ):
        slow.send(snooze(3, 1))
        started(server, "snooze")
        begin = time.monotonic()
        assert client.exchange(UPTIME, 5) is not None
        assert time.monotonic() - begin < 0.5
        reply = slow.recv(5)  # and the async call is answered when it completes
        assert reply is not None
        assert orjson.loads(reply) == {"jsonrpc": "2.0", "result": {"slept": 3}, "id": 1}


def test_async_calls_up_to_the_bound_and_beyond_are_all_answered() -> None:
    count = ASYNC_MAX + 16  # beyond it, the worker reads nothing until one completes
    with midgram_server("--children", "1", "--app", "apps:mi") as server:
        with contextlib.ExitStack() as stack:
            clients = [stack.enter_context(server.client()) for _ in range(count)]
            begin = time.monotonic()
            for n, client in enumerate(clients):
                client.send(snooze(1, n))
            for n, client in enumerate(clients):
                reply = client.recv(10)
                assert reply is not None
                assert orjson.loads(reply)["id"] == n
            took = time.monotonic() - begin
        assert took < 4, f"{count} calls of 1 s took {took:.1f} s"  # ~2 rounds, not 80 s


def test_an_async_call_past_worker_timeout_is_cancelled_and_counted() -> None:
    with midgram_server("--children", "1", "--app", "apps:mi", "--worker-timeout", "1s") as server:
        pids = server.worker_pids()
        with server.client() as slow:
            slow.send(snooze(1000, 1))
            started(server, "snooze")
            wait_until(
                lambda: (
                    server.call("get_statistics", [["stuck_requests"]])["result"][
                        "mi_datagram:stuck_requests"
                    ]
                    == 1
                ),
                5,
                "the call to be cancelled",
            )
            assert slow.recv(0.2) is None  # answered by nobody
        assert "an async call ran past worker_timeout (1 s): cancelled" in server.log()
        assert server.worker_pids() == pids  # the worker itself was not stuck


def test_an_async_call_that_blocks_the_loop_gets_its_worker_replaced() -> None:
    with midgram_server("--children", "1", "--app", "apps:mi", "--worker-timeout", "1s") as server:
        pids = server.worker_pids()
        with server.client() as hog:
            hog.send(b'{"jsonrpc":"2.0","method":"hog","params":{"seconds":1000},"id":1}')
            started(server, "hog")
            server.wait_for_log("beyond worker_timeout (1 s): killing it", 5)
        wait_until(lambda: server.worker_pids_if_answered() not in (None, pids), 10, "new pid")


def test_sigterm_answers_the_async_calls_in_flight() -> None:
    with midgram_server("--children", "1", "--app", "apps:mi") as server:
        with server.client() as slow:
            slow.send(snooze(1, 7))
            started(server, "snooze")
            server.proc.send_signal(signal.SIGTERM)
            reply = slow.recv(5)
            assert reply is not None
            assert orjson.loads(reply)["id"] == 7
        assert server.stop() == 0
