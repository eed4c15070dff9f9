"""``Client.events`` and ``AsyncClient.events`` against a real midgram server, on real UNIX,
UDP and IPv6 sockets; OpenSIPS's side held to its captures (tests/golden/opensips-3.6/events).

The server publishes ``E_CALLS_HIGH`` (``apps:events_mi``); ``set_calls`` raises it from its
handler. Each test waits for what it needs (a subscriber listed, an event received) with a
deadline, never a sleep.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from golden_cases import GOLDEN
from golden_events import CAPTURED_UNIX, Notification, load_run
from golden_events import Exchange as CapturedExchange
from servers import ANY_UDP, ANY_UDP6, ServerProcess, midgram_server, wait_until

from midgram.client import AsyncClient, Client
from midgram.client.events import Event, Upkeep, _listed_names, _Upkeep
from midgram.errors import AddressError, ConnectError, RemoteError, ReplyTimeout, TransportError

APP = ("--app", "apps:events_mi")
EVENT = "E_CALLS_HIGH"
DEADLINE = 20.0
TRANSPORTS = ("unix", "udp", "udp6")


def _socket_name(kind: str) -> str | None:
    return {"udp": ANY_UDP, "udp6": ANY_UDP6}.get(kind)


@pytest.fixture(scope="module", params=TRANSPORTS)
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    with midgram_server(*APP, socket=_socket_name(request.param)) as running:
        yield running


@pytest.fixture(scope="module")
def unix_server() -> Iterator[ServerProcess]:
    with midgram_server(*APP) as running:
        yield running


def _subscribers(client: Client, event: str = EVENT) -> list[dict[str, Any]]:
    listed = client.call("subscribers_list", event)["Event"]
    return list(listed.get("Subscribers", []))


def _sockets(client: Client, event: str = EVENT) -> list[str]:
    return [entry["socket"] for entry in _subscribers(client, event)]


def test_a_stream_gets_what_is_raised_and_unsubscribes_when_closed(server: ServerProcess) -> None:
    client = Client(server.target)
    with client.events([EVENT]) as stream:
        assert stream.socket is not None
        assert _sockets(client) == [stream.socket]
        client.call("set_calls", calls=120)
        event = stream.next(DEADLINE)
        assert event is not None
        assert (event.name, event.params) == (EVENT, {"calls": 120})
        assert event.data == b'{"jsonrpc":"2.0","method":"E_CALLS_HIGH","params":{"calls":120}}'
        assert event.sender.startswith("unix:(pid " if server.target[0] == "/" else "udp:")
    assert _sockets(client) == []


def test_it_listens_where_the_target_is_reached_from(server: ServerProcess) -> None:
    """A UDP listener on the address that reaches the server, in its family; a UNIX one in
    a private folder (an absolute path the server can send to), removed with the stream."""
    with Client(server.target).events(EVENT) as stream:
        assert stream.socket is not None
        where = stream.socket
        if server.target.startswith("udp:[::1]"):
            assert where.startswith("udp:[::1]:")
        elif server.target.startswith("udp:"):
            assert where.startswith("udp:127.0.0.1:")
        else:
            path = Path(where.removeprefix("unix:"))
            assert path.is_absolute()
            assert path.is_socket()
            assert (path.stat().st_mode & 0o777, path.parent.stat().st_mode & 0o777) == (
                0o622,
                0o711,
            )
    if where.startswith("unix:"):
        assert not path.parent.exists()


def test_a_for_loop_subscribes_and_a_break_unsubscribes(unix_server: ServerProcess) -> None:
    client = Client(unix_server.target)

    def raise_once_subscribed() -> None:
        wait_until(lambda: _sockets(client), DEADLINE, "the loop's subscription")
        client.call("set_calls", calls=1)

    raiser = threading.Thread(target=raise_once_subscribed)
    raiser.start()
    for event in client.events([EVENT]):
        assert event.params == {"calls": 1}
        break
    raiser.join()
    assert _sockets(client) == []


def test_all_is_every_event_the_server_lists(unix_server: ServerProcess) -> None:
    client = Client(unix_server.target)
    listed = [entry["name"] for entry in client.call("events_list")["Events"]]
    assert EVENT in listed
    assert len(listed) > 1
    with client.events(["all"]) as stream:
        assert list(stream.names) == listed
        for name in listed:
            assert _sockets(client, name) == [stream.socket]
    for name in listed:
        assert _sockets(client, name) == []


def test_next_gives_none_when_nothing_came_in_time(unix_server: ServerProcess) -> None:
    with Client(unix_server.target).events([EVENT]) as stream:
        assert stream.next(0.05) is None


def test_the_async_stream(server: ServerProcess) -> None:
    async def listen() -> tuple[Event, list[str]]:
        client = AsyncClient(server.target)
        async with client.events([EVENT]) as stream:
            during = await client.call("subscribers_list", EVENT)
            await client.call("set_calls", calls=7)
            async for event in stream:
                return event, [s["socket"] for s in during["Event"]["Subscribers"]]
        raise AssertionError("the stream ended")

    event, subscribed = asyncio.run(listen())
    assert (event.name, event.params) == (EVENT, {"calls": 7})
    assert len(subscribed) == 1
    assert _sockets(Client(server.target)) == []


def test_an_async_for_break_unsubscribes(unix_server: ServerProcess) -> None:
    """Without ``async with``: the loop's generator is closed by asyncio, which unsubscribes."""
    client = Client(unix_server.target)

    def raise_once_subscribed() -> None:
        wait_until(lambda: _sockets(client), DEADLINE, "the loop's subscription")
        client.call("set_calls", calls=8)

    async def listen() -> Event:
        async with asyncio.timeout(DEADLINE):
            async for event in AsyncClient(unix_server.target).events([EVENT]):
                return event
        raise AssertionError("the stream ended")

    raiser = threading.Thread(target=raise_once_subscribed)
    raiser.start()
    assert asyncio.run(listen()).params == {"calls": 8}
    raiser.join()
    assert _sockets(client) == []


def test_the_async_stream_waits_without_blocking_the_loop(unix_server: ServerProcess) -> None:
    async def listen() -> Event | None:
        client = AsyncClient(unix_server.target)
        async with client.events([EVENT]) as stream:
            raising = asyncio.create_task(client.call("set_calls", calls=3))
            event = await stream.next(DEADLINE)
            await raising
            return event

    event = asyncio.run(listen())
    assert event is not None
    assert event.params == {"calls": 3}


def test_subscriptions_are_renewed_before_they_expire(unix_server: ServerProcess) -> None:
    """With expire 2 a renewal is due after 1 s: the same event_subscribe again, answered."""
    sent: list[bytes] = []
    upkeeps: list[Upkeep] = []
    client = Client(unix_server.target, on_exchange=lambda ex: sent.append(ex.request))
    with client.events([EVENT], expire=2, on_upkeep=upkeeps.append) as stream:

        def renewed() -> bool:
            stream.next(0.05)
            return any(u.reason == "expiry" and u.error is None for u in upkeeps)

        wait_until(renewed, DEADLINE, "a renewal")
        subscribes = [json.loads(r) for r in sent if b'"event_subscribe"' in r]
        assert len(subscribes) >= 2
        assert {json.dumps(r["params"]) for r in subscribes} == {
            json.dumps({"event": EVENT, "socket": stream.socket, "expire": 2})
        }
        assert _subscribers(Client(unix_server.target))[0]["expire"] == 2


def test_an_unknown_event_raises_and_leaves_nothing_subscribed(unix_server: ServerProcess) -> None:
    client = Client(unix_server.target)
    stream = client.events([EVENT, "E_NO_SUCH_EVENT"])
    with pytest.raises(RemoteError) as refused:
        stream.open()
    assert (refused.value.code, refused.value.message) == (400, "Bad parameter value")
    assert _sockets(client) == []
    assert stream.socket is not None
    assert not Path(stream.socket.removeprefix("unix:")).parent.exists()


def test_an_unreachable_server_raises(tmp_path: Path) -> None:
    stream = Client(str(tmp_path / "nobody.sock"), timeout=0.5).events([EVENT])
    with pytest.raises(ConnectError, match=r"nobody\.sock"):
        stream.open()


def test_a_socket_in_use_is_a_transport_error(unix_server: ServerProcess) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        stream = Client(unix_server.target).events(EVENT, listen=f"udp:127.0.0.1:{port}")
        with pytest.raises(TransportError, match=f"cannot listen on udp:127.0.0.1:{port}"):
            stream.open()


def test_listen_and_advertise(unix_server: ServerProcess, tmp_path: Path) -> None:
    """``listen`` binds, ``advertise`` is what the server is told: a wildcard listen on
    port 0 is advertised with the port bound, on the address that reaches the server (here:
    loopback); then that port named outright, bound on every address and advertised on
    loopback, as behind NAT."""
    client = Client(unix_server.target)
    with client.events(EVENT, listen="udp:0.0.0.0:0") as stream:
        assert stream.socket is not None
        port = int(stream.socket.rsplit(":", 1)[1])
        assert port != 0
        assert stream.socket == f"udp:127.0.0.1:{port}"
        client.call("set_calls", calls=9)
        event = stream.next(DEADLINE)
        assert event is not None
        assert event.sender.startswith("udp:127.0.0.1:")
    # The port the kernel just gave the first stream, named: a listener told its port binds
    # it itself, so none can be held for it (the kernel hands out ports at random, and this
    # one was ours a moment ago).
    named = (
        {"listen": f"udp:0.0.0.0:{port}", "advertise": f"udp:127.0.0.1:{port}"},
        {"advertise": f"udp:127.0.0.1:{port}"},
        {"listen": f"udp:0.0.0.0:{port}"},
    )
    for options in named:
        with client.events(EVENT, **options) as stream:  # type: ignore[arg-type]
            assert stream.socket == f"udp:127.0.0.1:{port}"
            client.call("set_calls", calls=11)
            assert stream.next(DEADLINE) is not None
    path = tmp_path / "here.sock"
    with client.events(EVENT, listen=f"unix:{path}") as stream:
        assert stream.socket == f"unix:{path}"
        client.call("set_calls", calls=10)
        assert stream.next(DEADLINE) is not None
    assert not path.exists()


def test_bad_options_are_refused_before_anything_is_done(unix_server: ServerProcess) -> None:
    client = Client(unix_server.target)
    for options, text in (
        ({"expire": 1}, "expire must be"),
        ({"check_every": 0}, "check_every must be"),
        ({"listen": "udp:127.0.0.1:5", "advertise": "unix:/x"}, "must both be udp: or both unix:"),
    ):
        with pytest.raises(ValueError, match=text):
            client.events(EVENT, **options).open()  # type: ignore[arg-type]
    with pytest.raises(AddressError, match=r"bad value for listen: 'tcp:127\.0\.0\.1:5'"):
        client.events(EVENT, listen="tcp:127.0.0.1:5")
    with pytest.raises(ValueError, match="event names"):
        client.events([])
    with pytest.raises(ValueError, match="no event interface"):
        Client(unix_server.target, dialect="kamailio").events(EVENT)
    assert _sockets(client) == []


def test_a_closed_stream_stays_closed(unix_server: ServerProcess) -> None:
    stream = Client(unix_server.target).events(EVENT)
    with stream:
        pass
    stream.close()
    with pytest.raises(RuntimeError, match="closed"):
        stream.open()


def test_only_the_servers_user_may_send_to_a_unix_listener(unix_server: ServerProcess) -> None:
    """A notification from another user's unbound socket is dropped; root's (the server's
    user here) is taken. Like a reply (docs/cli.md), from the kernel's credentials."""
    datagram = b'{"jsonrpc":"2.0","method":"E_CALLS_HIGH","params":{"calls":666}}'
    with Client(unix_server.target).events(EVENT) as stream:
        assert stream.socket is not None
        address = stream.socket.removeprefix("unix:")
        child = os.fork()
        if child == 0:  # pragma: no cover - the forger
            try:
                os.setgid(65534)
                os.setuid(65534)
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as forger:
                    forger.sendto(datagram, address)
            finally:
                os._exit(0)
        _, status = os.waitpid(child, 0)
        assert status == 0
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as own:
            own.sendto(datagram.replace(b"666", b"1"), address)
        event = stream.next(DEADLINE)
        assert event is not None
        assert event.params == {"calls": 1}


def test_what_is_not_a_notification_of_an_event_subscribed_is_dropped(
    unix_server: ServerProcess,
) -> None:
    with Client(unix_server.target).events(EVENT) as stream:
        assert stream.socket is not None
        address = stream.socket.removeprefix("unix:")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            for junk in (
                b"not json",
                b'{"jsonrpc":"2.0","method":"E_CALLS_HIGH","id":1}',  # a request
                b'{"jsonrpc":"2.0","method":"E_OTHER"}',  # not subscribed
                b"[1,2]",
                # Params nested deeper than any reply may be: dropped unparsed.
                b'{"jsonrpc":"2.0","method":"E_CALLS_HIGH","params":'
                + b"[" * 500
                + b"]" * 500
                + b"}",
                b'{"jsonrpc":"2.0","method":"E_CALLS_HIGH","params":'
                + b"[" * 5000
                + b"]" * 5000
                + b"}",
            ):
                sender.sendto(junk, address)
            sender.sendto(b'{"jsonrpc":"2.0","method":"E_CALLS_HIGH"}', address)
        event = stream.next(DEADLINE)
        assert event is not None
        assert (event.name, event.params) == (EVENT, None)


def test_junk_arriving_does_not_hold_next_past_its_timeout(unix_server: ServerProcess) -> None:
    """With its time up, ``next`` returns after the datagram at hand, not once the queue is
    empty: under a steady flood of junk it would never be."""
    with Client(unix_server.target).events([EVENT]) as stream:
        assert stream.socket is not None
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as flood:
            for _ in range(5):
                flood.sendto(b'{"jsonrpc":"2.0","method":"E_OTHER"}', stream.socket[5:])
        assert stream.next(0) is None
        readable, _, _ = select.select([stream._socket], [], [], 0)
        assert readable  # the rest of the junk is still there
        assert stream.next(0.05) is None  # and goes, one datagram per look, while time is left


# --- OpenSIPS's side, from its captures ----------------------------------------------------


@pytest.fixture(scope="module")
def core_server() -> Iterator[ServerProcess]:
    """The 7 events of OpenSIPS 3.6.8's core, as the captures were made against."""
    with midgram_server("--app", "apps:opensips_events", "--children", "0") as running:
        yield running


def _captured(name: str) -> CapturedExchange:
    for entry in load_run("B_"):
        if isinstance(entry, CapturedExchange) and entry.name == name:
            return entry
    raise AssertionError(f"no capture {name}")


def test_the_requests_are_those_opensips_answered(core_server: ServerProcess) -> None:
    """The subscription and the unsubscription a stream sends are OpenSIPS's captured
    ``event_subscribe`` (named params, with ``expire``), but for their socket, expire and
    id; and the socket is of the grammar OpenSIPS takes (``unix:`` and an absolute path)."""
    sent: list[bytes] = []
    client = Client(core_server.target, on_exchange=lambda ex: sent.append(ex.request))
    with client.events(["E_CORE_THRESHOLD"], expire=120) as stream:
        pass
    subscribes = [json.loads(request) for request in sent if b"event_subscribe" in request]
    captured = json.loads(_captured("B_subscribe_threshold_unix").request)
    assert captured["params"]["socket"] == CAPTURED_UNIX
    assert stream.socket is not None
    assert stream.socket.startswith("unix:/")
    for request, expire in zip(subscribes, (120, 0), strict=True):
        expected = {**captured, "id": request["id"]}
        expected["params"] = {**captured["params"], "socket": stream.socket, "expire": expire}
        assert list(request) == list(captured)
        assert request == expected


def test_opensips_event_list_and_uptime_replies_are_read() -> None:
    (events_list,) = [
        e for e in load_run() if isinstance(e, CapturedExchange) and e.name == "events_list"
    ]
    assert events_list.reply is not None
    result = json.loads(events_list.reply)["result"]
    assert _listed_names(result, "opensips")[:2] == ["E_CORE_SR_STATUS_CHANGED", "E_CORE_THRESHOLD"]
    uptime = json.loads((GOLDEN / "opensips-3.6" / "unix" / "00_uptime.rsp").read_text())
    upkeep = _Upkeep(300, 5.0)
    upkeep.baseline(uptime["result"])
    later = {**uptime["result"], "Up time": "7 [sec]"}
    assert upkeep.checked(later) is None
    assert upkeep.step() is None  # the same server: nothing to do before the renewal


@pytest.mark.parametrize(
    ("change", "restarted"),
    [
        ({}, False),
        ({"Up time": "9 [sec]"}, False),
        ({"Up since": "Thu Nov 26 12:20:00 2026", "Up time": "0 [sec]"}, True),
        ({"Up time": "0 [sec]"}, True),  # restarted within the same second
    ],
)
def test_a_restart_is_seen_in_uptime(change: dict[str, str], restarted: bool) -> None:
    first = {"Now": "x", "Up since": "Thu Nov 26 12:14:48 2026", "Up time": "1 [sec]"}
    upkeep = _Upkeep(300, 5.0)
    upkeep.baseline(first)
    assert upkeep.checked({**first, **change}) is None
    assert upkeep.step() == ("restart" if restarted else None)


def test_a_server_that_could_not_be_asked_is_subscribed_to_again_once_it_answers() -> None:
    first = {"Now": "x", "Up since": "Thu Nov 26 12:14:48 2026", "Up time": "1 [sec]"}
    upkeep = _Upkeep(300, 5.0)
    upkeep.baseline(first)
    failure = upkeep.checked(ReplyTimeout("/x.sock", 1.0))
    assert failure is not None
    assert failure.reason == "check"
    assert upkeep.checked(first) is None
    assert upkeep.step() == "restart"
    note = upkeep.renewed("restart", None)
    assert (note.reason, note.error, upkeep.step()) == ("restart", None, None)


@pytest.mark.parametrize("transport", ["udp", "unix"])
def test_opensips_notifications_are_received_as_it_sends_them(
    core_server: ServerProcess, transport: str
) -> None:
    """Every captured notification datagram (the exact bytes), sent as OpenSIPS sends it:
    over UDP from a port of its own, over UNIX from an unbound socket, to a stream
    subscribed to all of OpenSIPS's core events."""
    notifications = [
        entry
        for entry in load_run()
        if isinstance(entry, Notification) and entry.datagram and entry.transport == transport
    ]
    assert len(notifications) > 10
    listen = "udp:127.0.0.1:0" if transport == "udp" else None
    with Client(core_server.target).events(["all"], listen=listen) as stream:
        assert stream.socket is not None
        if transport == "udp":
            family, address = socket.AF_INET, ("127.0.0.1", int(stream.socket.rsplit(":", 1)[1]))
        else:
            family, address = socket.AF_UNIX, stream.socket.removeprefix("unix:")
        with socket.socket(family, socket.SOCK_DGRAM) as opensips:
            for notification in notifications:
                assert notification.datagram is not None
                opensips.sendto(notification.datagram, address)
                event = stream.next(DEADLINE)
                assert event is not None
                assert event.data == notification.datagram
                sent = json.loads(notification.datagram.decode(errors="replace"))
                assert event.name == sent["method"]


def test_the_listener_example_of_docs_events_md_works(unix_server: ServerProcess) -> None:
    """docs/events.md's Python listener, run as written but for its target and event."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "events.md").read_text()
    block = page.split("<!-- example: events-listener -->\n```python\n", 1)[1].split("```", 1)[0]
    assert block.count('"/run/opensips/mi.sock"') == block.count('"E_CORE_THRESHOLD"') == 1
    block = block.replace('"/run/opensips/mi.sock"', repr(unix_server.target))
    block = block.replace('"E_CORE_THRESHOLD"', repr(EVENT))
    client = Client(unix_server.target)
    printed: list[tuple[Any, ...]] = []

    class Heard(Exception):
        pass

    def record(*args: Any) -> None:
        printed.append(args)
        raise Heard

    def raise_once_subscribed() -> None:
        wait_until(lambda: _sockets(client), DEADLINE, "the example's subscription")
        client.call("set_calls", calls=2)

    raiser = threading.Thread(target=raise_once_subscribed)
    raiser.start()
    with pytest.raises(Heard):
        exec(block, {"print": record})  # noqa: S102 - the documentation's own example
    raiser.join()
    ((name, params, sender),) = printed
    assert (name, params) == (EVENT, {"calls": 2})
    assert sender.startswith("unix:(pid ")
    assert _sockets(client) == []
