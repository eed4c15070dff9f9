"""A program's own events: declared on its registry (``mi.event``), listed by
``events_list``, raised from a handler, a task of an ``AsyncServer`` program, or another
thread, and delivered to real subscriber sockets with the server's rules."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

import orjson
import pytest
from servers import midgram_server

from midgram.config.settings import Settings
from midgram.engine.registry import Registry
from midgram.server.asyncserver import AsyncServer

DEADLINE = 5.0


def request(method: str, params: object = None, req_id: int = 1) -> bytes:
    body: dict[str, object] = {"jsonrpc": "2.0", "method": method, "id": req_id}
    if params is not None:
        body["params"] = params
    return orjson.dumps(body)


def test_a_program_declares_and_raises_its_events_in_a_forked_server() -> None:
    with midgram_server("--children", "2", "--app", "apps:events_mi") as server:
        events = server.call("events_list")["result"]["Events"]
        assert events == [
            {"name": "E_CALLS_HIGH", "id": 0},
            {"name": "E_MIDGRAM_WORKER_RESTARTED", "id": 1},
        ]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sub:
            sub.bind(("127.0.0.1", 0))
            sub.settimeout(DEADLINE)
            port = sub.getsockname()[1]
            assert (
                server.call("event_subscribe", ["E_CALLS_HIGH", f"udp:127.0.0.1:{port}"])["result"]
                == "OK"
            )
            assert server.call("set_calls", [120])["result"] == "OK"
            assert (
                sub.recv(4096)
                == b'{"jsonrpc":"2.0","method":"E_CALLS_HIGH","params":{"calls":120}}'
            )
            assert server.call("set_calls_in_thread", [7])["result"] == "OK"
            assert sub.recv(4096) == b'{"jsonrpc":"2.0","method":"E_CALLS_HIGH","params":["7"]}'
            counted = server.call("get_statistics", [["event_datagram:"]])["result"]
            assert counted["event_datagram:raised"] == 2
            assert counted["event_datagram:delivered"] == 2


def test_an_async_server_program_raises_from_a_task_and_a_thread(folder: Path) -> None:
    server_path = f"{folder}/mi.sock"
    mi = Registry("app")
    calls_high = mi.event("E_CALLS_HIGH")
    settings = Settings(socket_name=server_path)

    async def scenario() -> list[bytes]:
        loop = asyncio.get_running_loop()
        client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        client.bind(f"{folder}/client")
        client.setblocking(False)
        sub = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sub.bind(f"{folder}/sub")
        sub.setblocking(False)
        got = []
        try:
            async with AsyncServer(settings, mi):
                subscribe = request("event_subscribe", ["E_CALLS_HIGH", f"unix:{folder}/sub"])
                await loop.sock_sendto(client, subscribe, server_path)
                reply = await asyncio.wait_for(loop.sock_recv(client, 4096), DEADLINE)
                assert orjson.loads(reply)["result"] == "OK"

                async def monitor() -> None:  # the program's own background task
                    calls_high.raise_event({"from": "task"})

                await asyncio.create_task(monitor())
                got.append(await asyncio.wait_for(loop.sock_recv(sub, 4096), DEADLINE))
                thread = threading.Thread(target=calls_high.raise_event, args=([1, "two"],))
                thread.start()
                got.append(await asyncio.wait_for(loop.sock_recv(sub, 4096), DEADLINE))
                thread.join()
        finally:
            client.close()
            sub.close()
        return got

    assert asyncio.run(scenario()) == [
        b'{"jsonrpc":"2.0","method":"E_CALLS_HIGH","params":{"from":"task"}}',
        b'{"jsonrpc":"2.0","method":"E_CALLS_HIGH","params":[1,"two"]}',
    ]
    # Served no more: raising reaches nobody, and says so.
    assert calls_high.raise_event({"from": "after"}) == 0


def test_a_registry_serves_its_events_again_after_a_restart(folder: Path) -> None:
    server_path = f"{folder}/mi.sock"
    mi = Registry("app")
    mi.event("E_AGAIN")
    settings = Settings(socket_name=server_path)

    async def twice() -> list[object]:
        loop = asyncio.get_running_loop()
        listed = []
        for _ in range(2):
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
                client.bind("")  # autobind: an abstract address for the reply
                client.setblocking(False)
                async with AsyncServer(settings, mi):
                    await loop.sock_sendto(client, request("events_list"), server_path)
                    reply = await asyncio.wait_for(loop.sock_recv(client, 4096), DEADLINE)
                    listed.append(orjson.loads(reply)["result"])
        return listed

    assert asyncio.run(twice()) == [{"Events": [{"name": "E_AGAIN", "id": 0}]}] * 2


def test_raising_outside_a_server_reaches_nobody() -> None:
    mi = Registry("app")
    event = mi.event("E_IDLE")
    assert event.raise_event({"a": 1}) == 0
    assert mi.event("E_IDLE") is event  # declared once


@pytest.mark.parametrize("name", ["", "E X", "E_" + "x" * 63])
def test_a_bad_event_name_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="bad event name"):
        Registry("app").event(name)


def test_params_that_are_not_json_are_refused_by_the_raiser() -> None:
    mi = Registry("app")
    event = mi.event("E_X")
    with pytest.raises(TypeError):
        mi.events.raise_event(event, "a string")  # type: ignore[arg-type]


def test_the_example_of_docs_events_md_works(folder: Path) -> None:
    """docs/events.md's five lines, served, subscribed to and raised through a real socket."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "events.md").read_text()
    block = page.split("<!-- example: events-library -->\n```python\n", 1)[1].split("```", 1)[0]
    names: dict[str, object] = {"Registry": Registry}
    exec(block, names)  # noqa: S102 - the documentation's own example
    mi = names["mi"]
    assert isinstance(mi, Registry)
    server_path = f"{folder}/mi.sock"

    async def scenario() -> bytes:
        loop = asyncio.get_running_loop()
        with (
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sub,
        ):
            client.bind("")
            client.setblocking(False)
            sub.bind(("127.0.0.1", 0))
            sub.setblocking(False)
            socket_text = f"udp:127.0.0.1:{sub.getsockname()[1]}"
            async with AsyncServer(Settings(socket_name=server_path), mi):
                for call in (
                    request("event_subscribe", ["E_CALLS_HIGH", socket_text]),
                    request("set_calls", [120]),
                ):
                    await loop.sock_sendto(client, call, server_path)
                    reply = await asyncio.wait_for(loop.sock_recv(client, 4096), DEADLINE)
                    assert orjson.loads(reply)["result"] == "OK"
                return await asyncio.wait_for(loop.sock_recv(sub, 4096), DEADLINE)

    assert asyncio.run(scenario()) == (
        b'{"jsonrpc":"2.0","method":"E_CALLS_HIGH","params":{"calls":120}}'
    )
