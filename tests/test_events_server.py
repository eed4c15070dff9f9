"""Events served by a real ``midgram serve``, on real sockets: one subscribers' table for
every worker, delivery that never blocks a worker, the server's own event, and each
deliberate difference from OpenSIPS (docs/compatibility.md, differences 22 to 28) that the
capture replay (test_events_replay) cannot show by itself."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from datagrams import drain, receive, wait_readable
from golden_events import raw_records
from servers import ServerProcess, midgram_server, wait_until

THRESHOLD = "E_CORE_THRESHOLD"
RESTARTED = "E_MIDGRAM_WORKER_RESTARTED"


@contextlib.contextmanager
def udp_subscriber(host: str = "127.0.0.1") -> Iterator[socket.socket]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        yield sock


def udp_name(sock: socket.socket, host: str | None = None) -> str:
    address, port = sock.getsockname()[:2]
    shown = host or address
    return f"udp:[{shown}]:{port}" if ":" in shown else f"udp:{shown}:{port}"


def received(sock: socket.socket) -> Any:
    """The next notification on ``sock`` (awaited with a deadline), parsed."""
    (data,) = receive(sock, 1)
    return orjson.loads(data)


def stats(server: ServerProcess) -> dict[str, int]:
    result: dict[str, int] = server.call("get_statistics", [["event_datagram:"]])["result"]
    return result


def ok(server: ServerProcess, method: str, params: Any) -> None:
    reply = server.call(method, params)
    assert reply.get("result") == "OK", reply


def error(server: ServerProcess, method: str, params: Any) -> tuple[int, str]:
    reply = server.call(method, params)
    assert "error" in reply, reply
    return reply["error"]["code"], reply["error"]["message"]


@pytest.fixture(scope="module")
def served() -> Iterator[ServerProcess]:
    """Two workers serving OpenSIPS's core events (and midgram's own)."""
    with midgram_server("--children", "2", "--app", "apps:opensips_events") as server:
        yield server


# --- one table for every worker ----------------------------------------------------------


def test_every_worker_delivers_to_a_subscription_made_through_one(served: ServerProcess) -> None:
    with udp_subscriber() as sub:
        ok(served, "event_subscribe", [THRESHOLD, udp_name(sub), 480])
        senders = set()  # each process sends from its own socket: a source port a worker
        for n in range(200):  # 20, and more until both workers have raised
            if n >= 20 and len(senders) == 2:
                break
            with served.client() as client:  # a new client each: either worker serves it
                reply = client.call("raise_event", [THRESHOLD, f'{{"n":{n}}}'], req_id=n)
            assert reply["result"] == "OK"
            wait_readable(sub)
            data, sender = sub.recvfrom(1 << 16)
            assert orjson.loads(data) == {"jsonrpc": "2.0", "method": THRESHOLD, "params": {"n": n}}
            senders.add(sender)
        assert drain(sub) == []
        assert len(senders) == 2, "one worker served all 200: the test proves nothing"
        # expire 0 unsubscribes at once, whichever worker is asked next.
        ok(served, "event_subscribe", [THRESHOLD, udp_name(sub), 0])
        for _ in range(4):
            assert error(served, "raise_event", [THRESHOLD]) == (480, "Temporarily Unavailable")
        assert drain(sub) == []


def test_events_list_adds_midgrams_own_event_after_the_programs(served: ServerProcess) -> None:
    from golden_events import CORE_EVENTS

    events = served.call("events_list")["result"]["Events"]
    assert events == [{"name": n, "id": i} for i, n in enumerate([*CORE_EVENTS, RESTARTED])]


def test_a_killed_workers_replacement_delivers_and_the_restart_is_raised() -> None:
    with (
        midgram_server("--children", "2", "--app", "apps:opensips_events") as server,
        udp_subscriber() as sub,
        udp_subscriber() as watcher,
    ):
        ok(server, "event_subscribe", [THRESHOLD, udp_name(sub)])
        ok(server, "event_subscribe", [RESTARTED, udp_name(watcher)])
        before = server.worker_pids()
        os.kill(before[0], signal.SIGKILL)
        restart = received(watcher)  # raised by the supervisor once it has replaced it
        assert restart["method"] == RESTARTED
        params = restart["params"]
        assert params["old_pid"] == before[0]
        assert params["reason"] == "was killed by SIGKILL"
        assert params["restarts"] == 1
        after = wait_until(
            lambda: (pids := server.worker_pids_if_answered()) and before[0] not in pids and pids,
            what="the replacement in ps",
        )
        assert params["pid"] in after
        assert params["id"] in (1, 2)
        # Every worker, the replacement among them, still delivers to the table.
        for n in range(10):
            with server.client() as client:
                assert client.call("raise_event", [THRESHOLD, [str(n)]])["result"] == "OK"
            assert received(sub)["params"] == [str(n)]
        listed = server.call("subscribers_list", [THRESHOLD])["result"]["Event"]["Subscribers"]
        assert [s["socket"] for s in listed] == [udp_name(sub)]


# --- delivery never blocks, drops are counted and logged ---------------------------------


def test_a_subscriber_that_does_not_read_costs_only_its_own_notifications(folder: Path) -> None:
    with (
        midgram_server("--children", "1", "--app", "apps:opensips_events") as server,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as asleep,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as awake,
    ):
        asleep.bind(str(folder / "asleep.sock"))
        awake.bind(str(folder / "awake.sock"))
        for sock in ("asleep", "awake"):
            ok(server, "event_subscribe", [THRESHOLD, f"unix:{folder}/{sock}.sock"])
        ok(server, "event_subscribe", [THRESHOLD, f"unix:{folder}/gone.sock"])
        payload = '{"pad":"' + "x" * 30_000 + '"}'
        raised = 0
        # Until asleep, which never reads, has missed one (gone.sock misses every one).
        while stats(server)["event_datagram:dropped"] <= raised:
            assert raised < 500, "asleep's queue never filled"
            ok(server, "raise_event", [THRESHOLD, payload])
            raised += 1
            assert len(drain(awake)) == 1  # awake misses none
        counted = stats(server)
        assert counted["event_datagram:raised"] == raised
        assert counted["event_datagram:delivered"] + counted["event_datagram:dropped"] == 3 * raised
        assert len(drain(asleep)) == counted["event_datagram:delivered"] - raised
        log = server.log()
        assert f"cannot send event {THRESHOLD} to unix:{folder}/gone.sock: it is gone" in log
        assert log.count("gone.sock: it is gone") < raised  # rate-limited (once a 10 s)
        assert "asleep.sock: its queue is full" in log
        # Nobody was unsubscribed: they stay until they expire, as in OpenSIPS.
        listed = server.call("subscribers_list", [THRESHOLD])["result"]["Event"]["Subscribers"]
        assert len(listed) == 3


@pytest.mark.parametrize("count", [4700, 7000])
def test_a_notification_too_big_for_udp_is_dropped_and_unix_gets_it(
    count: int, folder: Path
) -> None:
    """The capture's C_raise_big_numbers_*: 65856 and 98056 bytes, too big for UDP (OpenSIPS
    logs "Message too long"); a UNIX subscriber got them. Same bytes from midgram."""
    records = raw_records()
    (request_size,) = [
        r["request_bytes"] for r in records if r["name"] == f"C_raise_big_numbers_{count}"
    ]
    (captured,) = [
        r
        for r in records
        if r["name"] == f"C_notif_big_numbers_{count}_size_only" and r["transport"] == "unix"
    ]
    params = "{" + ",".join(['"":1e9'] * count) + "}"
    request = orjson.dumps(
        {
            "jsonrpc": "2.0",
            "method": "raise_event",
            "params": [THRESHOLD, params],
            "id": count + 900,
        }
    )
    assert len(request) == request_size  # the capture's request, rebuilt
    with (
        midgram_server("--children", "1", "--app", "apps:opensips_events") as server,
        udp_subscriber() as udp,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unix,
        server.client() as client,
    ):
        unix.bind(str(folder / "big.sock"))
        ok(server, "event_subscribe", [THRESHOLD, udp_name(udp)])
        ok(server, "event_subscribe", [THRESHOLD, f"unix:{folder}/big.sock"])
        assert client.exchange(request) == b'{"jsonrpc":"2.0","result":"OK","id":%d}' % (
            count + 900
        )
        (got,) = drain(unix)
        assert len(got) == captured["bytes"]
        assert got.startswith(captured["datagram_head"].encode())
        assert got.endswith(captured["datagram_tail"].encode())
        assert drain(udp) == []
        counted = stats(server)
        assert (counted["event_datagram:delivered"], counted["event_datagram:dropped"]) == (1, 1)
        assert "the notification is too big for one datagram" in server.log()


# --- the deliberate differences ----------------------------------------------------------


def test_expire_0_unsubscribes_at_once_and_subscribes_nobody(served: ServerProcess) -> None:
    """Difference 22: OpenSIPS keeps delivering for the rest of the second, lists the
    subscriber as "expired", and an expire 0 of nobody makes a subscriber for that second."""
    with udp_subscriber() as sub:
        ok(served, "event_subscribe", ["E_CORE_SHM_THRESHOLD", udp_name(sub), 0])
        assert served.call("subscribers_list", ["E_CORE_SHM_THRESHOLD"])["result"] == {"Event": {}}
        assert error(served, "raise_event", ["E_CORE_SHM_THRESHOLD"])[0] == 480
        assert drain(sub) == []


def test_an_expired_subscription_is_not_raised_to() -> None:
    """Difference 22: OpenSIPS answers the first raise_event after the expiry "OK" (and sends
    nothing); midgram answers 480 as soon as nobody is live. The subscriber is listed and
    delivered to until ``expire`` whole seconds have passed since the second it was made in,
    as in OpenSIPS."""
    with (
        midgram_server("--children", "1", "--app", "apps:opensips_events") as server,
        udp_subscriber() as sub,
    ):
        ok(server, "event_subscribe", ["E_CORE_PROC_AUTO_SCALE", udp_name(sub), 1])
        made = int(time.time())  # the subscription's second is this one or the one before
        wait_until(lambda: time.time() >= made + 2, 5.0, "the expiry")
        assert error(server, "raise_event", ["E_CORE_PROC_AUTO_SCALE"]) == (
            480,
            "Temporarily Unavailable",
        )
        assert server.call("subscribers_list")["result"] == {"Events": []}


def test_ipv6_subscribers_get_their_notifications(served: ServerProcess) -> None:
    """Difference 23: OpenSIPS can have no IPv6 subscriber."""
    with udp_subscriber("::1") as sub:
        port = sub.getsockname()[1]
        ok(served, "event_subscribe", ["E_CORE_LOG", f"udp:[::1]:{port}", 60])
        ok(served, "raise_event", ["E_CORE_LOG", '{"v6":"yes"}'])
        assert receive(sub, 1) == [b'{"jsonrpc":"2.0","method":"E_CORE_LOG","params":{"v6":"yes"}}']
        ok(served, "event_subscribe", ["E_CORE_LOG", f"udp:::1:{port}", 0])  # the same one
        assert served.call("subscribers_list", ["E_CORE_LOG"])["result"] == {"Event": {}}


@pytest.mark.parametrize(
    "socket_text",
    ["udp:127.0.0.1:70000", "unix:/run/opensips/" + "p" * 136],
)
def test_sockets_opensips_takes_and_never_reaches_are_refused(
    served: ServerProcess, socket_text: str
) -> None:
    """Difference 23: OpenSIPS takes port 70000 as 4464, and a path longer than sun_path
    (the capture's C_subscribe_dangerous[unix_path_150]), which it never reaches."""
    assert error(served, "event_subscribe", [THRESHOLD, socket_text]) == (
        400,
        "Bad parameter value",
    )
    assert "event socket" in served.log()


def test_one_socket_is_one_subscriber_however_it_is_written(served: ServerProcess) -> None:
    """Difference 24: OpenSIPS matches the text, so udp:localhost:P and udp:127.0.0.1:P are
    two subscribers (two datagrams each raise to one socket), and a prefix of a subscriber's
    text (udp:127.0.0.1:P for udp:127.0.0.10:P) renews that subscriber instead."""
    with udp_subscriber() as sub:
        port = sub.getsockname()[1]
        ok(served, "event_subscribe", ["E_CORE_TCP_DISCONNECT", f"udp:127.0.0.1:{port}", 100])
        ok(served, "event_subscribe", ["E_CORE_TCP_DISCONNECT", f"udp:localhost:{port}", 200])
        listed = served.call("subscribers_list", ["E_CORE_TCP_DISCONNECT"])["result"]["Event"]
        assert listed["Subscribers"] == [
            {"socket": f"udp:127.0.0.1:{port}", "expire": 200, "ttl": 200}
        ]
        ok(served, "raise_event", ["E_CORE_TCP_DISCONNECT", ["once"]])
        assert drain(sub) == [
            b'{"jsonrpc":"2.0","method":"E_CORE_TCP_DISCONNECT","params":["once"]}'
        ]
        with udp_subscriber("127.0.0.10") as other:
            ok(served, "event_subscribe", ["E_CORE_TCP_DISCONNECT", udp_name(other), 300])
            ok(served, "raise_event", ["E_CORE_TCP_DISCONNECT", ["both"]])
            assert len(drain(other)) == 1
            assert len(drain(sub)) == 1
            ok(served, "event_subscribe", ["E_CORE_TCP_DISCONNECT", udp_name(other), 0])
        ok(served, "event_subscribe", ["E_CORE_TCP_DISCONNECT", f"udp:localhost:{port}", 0])
        assert served.call("subscribers_list", ["E_CORE_TCP_DISCONNECT"])["result"] == {"Event": {}}


def test_a_prefix_of_a_unix_path_is_another_subscriber(served: ServerProcess, folder: Path) -> None:
    """Difference 24: OpenSIPS renews unix:/x/sub.sock for unix:/x/sub.so, and finds it in
    subscribers_list by the prefix."""
    full, prefix = f"unix:{folder}/sub.sock", f"unix:{folder}/sub.so"
    ok(served, "event_subscribe", ["E_CORE_SR_STATUS_CHANGED", full, 60])
    ok(served, "event_subscribe", ["E_CORE_SR_STATUS_CHANGED", prefix, 77])
    listed = served.call("subscribers_list", ["E_CORE_SR_STATUS_CHANGED"])["result"]["Event"]
    assert [(s["socket"], s["expire"]) for s in listed["Subscribers"]] == [
        (prefix, 77),
        (full, 60),
    ]
    found = served.call("subscribers_list", ["E_CORE_SR_STATUS_CHANGED", prefix])["result"]
    assert found["Event"]["Subscriber"]["socket"] == prefix
    for text in (full, prefix):
        ok(served, "event_subscribe", ["E_CORE_SR_STATUS_CHANGED", text, 0])


def test_an_empty_event_or_socket_always_says_so(served: ServerProcess) -> None:
    """Difference 27: OpenSIPS's text is whatever parameter error came last in its process
    (C_subscribe_empty_event_after_empty_array: "Empty array in parameter 'event'")."""
    with udp_subscriber() as sub:
        ok(served, "event_subscribe", ["E_CORE_PKG_THRESHOLD", udp_name(sub), 30])
        ok(served, "raise_event", ["E_CORE_PKG_THRESHOLD", []])
        reply = served.call("event_subscribe", {"event": "", "socket": udp_name(sub)})
        assert reply["error"] == {
            "code": -32602,
            "message": "Invalid params",
            "data": "Bad type for parameter 'event'",
        }
        ok(served, "event_subscribe", ["E_CORE_PKG_THRESHOLD", udp_name(sub), 0])


def test_subscribers_beyond_max_event_subscribers_are_refused_and_counted() -> None:
    """Difference 28: OpenSIPS takes subscribers until its shared memory runs out."""
    with (
        midgram_server(
            "--children", "1", "--app", "apps:opensips_events", "--max-event-subscribers", "2"
        ) as server,
        udp_subscriber() as a,
        udp_subscriber() as b,
        udp_subscriber() as c,
    ):
        ok(server, "event_subscribe", [THRESHOLD, udp_name(a)])
        ok(server, "event_subscribe", ["E_CORE_LOG", udp_name(b)])
        reply = server.call("event_subscribe", [THRESHOLD, udp_name(c)])
        assert reply["error"] == {
            "code": 500,
            "message": "Too many subscribers",
            "data": "max_event_subscribers is 2",
        }
        ok(server, "event_subscribe", [THRESHOLD, udp_name(a), 60])  # a renewal still works
        ok(server, "event_subscribe", ["E_CORE_LOG", udp_name(b), 0])  # a row freed
        ok(server, "event_subscribe", [THRESHOLD, udp_name(c)])
        assert stats(server)["event_datagram:refused"] == 1
        assert stats(server)["event_datagram:subscribers"] == 2
        assert "max_event_subscribers" in server.log()


@pytest.mark.parametrize(
    ("method", "params", "answer"),
    [
        ("event_subscribe", [THRESHOLD, "udp:" + "a" * 300 + ":5"], (400, "Bad parameter value")),
        (
            "event_subscribe",
            [THRESHOLD, "udp:no.such.host.invalid:5"],
            (400, "Bad parameter value"),
        ),
        ("event_subscribe", [THRESHOLD, "unix:/tmp/a\x00b"], (400, "Bad parameter value")),
        ("event_subscribe", [THRESHOLD, "udp:[::1%nosuch]:5"], (400, "Bad parameter value")),
        ("raise_event", [THRESHOLD, "[" * 60_000], (400, "Bad Params")),
        ("raise_event", [THRESHOLD, '{"a":' * 5000 + "1" + "}" * 5000], (400, "Bad Params")),
        ("subscribers_list", [THRESHOLD, "\n" * 100], (404, "Subscriber does not exist")),
    ],
)
def test_hostile_event_input_gets_an_answer(
    served: ServerProcess, method: str, params: Any, answer: tuple[int, str]
) -> None:
    with udp_subscriber() as sub:  # someone subscribed: raise_event reads its params
        ok(served, "event_subscribe", [THRESHOLD, udp_name(sub), 30])
        assert error(served, method, params) == answer
        ok(served, "event_subscribe", [THRESHOLD, udp_name(sub), 0])
    assert "Traceback" not in served.log()
