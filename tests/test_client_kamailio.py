"""Client, AsyncClient and the CLI against a real Kamailio 5.6 (jsonrpcs datagram transport)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import kamailio as kamailio_kit
import pytest
from datagrams import Sockets
from kamailio import KAMAILIO, KAMAILIO_MISSING, kamailio_server

from midgram.client.calls import AsyncClient, Client
from midgram.errors import RemoteError

pytestmark = pytest.mark.skipif(KAMAILIO is None, reason=KAMAILIO_MISSING)


@pytest.fixture(scope="module", params=["unix", "udp"])
def kamailio(request: pytest.FixtureRequest) -> Iterator[str]:
    with kamailio_server(udp=request.param == "udp") as running:
        yield running.target


def test_core_uptime(kamailio: str) -> None:
    result = Client(kamailio, dialect="kamailio", timeout=2).call("core.uptime")
    assert set(result) == {"now", "up_since", "uptime"}
    assert isinstance(result["uptime"], int)


def test_list_methods_and_help(kamailio: str) -> None:
    client = Client(kamailio, dialect="kamailio", timeout=2)
    methods = client.methods()
    assert {"core.uptime", "system.listMethods", "system.methodHelp"} <= set(methods)
    assert client.help("core.uptime") == "Returns uptime of SIP server."
    assert client.recipes("core.uptime") is None  # jsonrpcs cannot tell


def test_error_reply(kamailio: str) -> None:
    with pytest.raises(RemoteError) as caught:
        Client(kamailio, dialect="kamailio", timeout=2).call("no.such.command")
    assert (caught.value.code, caught.value.message) == (500, "Method Not Found")


def test_positional_params(kamailio: str) -> None:
    client = Client(kamailio, dialect="kamailio", timeout=2)
    assert client.call("core.echo", "a", 1) == ["a", "1"]
    with pytest.raises(TypeError, match="positional parameters only"):
        client.call("core.echo", a=1)


def test_notification_answer_is_not_taken_for_a_reply(kamailio: str) -> None:
    # Kamailio answers notifications; the answer goes to a socket that is already closed.
    client = Client(kamailio, dialect="kamailio", timeout=2)
    client.notify("core.uptime")
    assert client.call("core.version").startswith("kamailio")


def test_async_tasks_share_one_client(kamailio: str) -> None:
    async def main() -> list[object]:
        async with AsyncClient(kamailio, dialect="kamailio", timeout=5) as client:
            return await asyncio.gather(*(client.call("core.echo", n) for n in range(40)))

    assert asyncio.run(main()) == [[str(n)] for n in range(40)]


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_a_server_running_as_another_user_can_answer() -> None:
    with kamailio_server(user="nobody") as running:
        target = running.target
        # The default: an abstract reply address, which any user can send to.
        assert Client(target, dialect="kamailio", timeout=5).call("core.echo", 1) == ["1"]
        # reply_dir: a private directory, yet the server (as nobody) can reach the socket.
        # (Under /tmp, which nobody may traverse; pytest's tmp_path is private to root.)
        folder = Path(tempfile.mkdtemp(prefix="mgr", dir="/tmp"))
        folder.chmod(0o755)
        client = Client(target, dialect="kamailio", timeout=5, reply_dir=str(folder))
        assert client.call("core.echo", 2) == ["2"]
        assert list(folder.iterdir()) == []
        # The control: a reply socket only root may reach gets no reply from nobody.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            private = folder / "private"
            private.mkdir(mode=0o700)
            sock.bind(str(private / "r.sock"))
            sock.settimeout(0.5)
            sock.sendto(b'{"jsonrpc":"2.0","method":"core.version","id":1}', target)
            with pytest.raises(TimeoutError):
                sock.recv(65536)
        shutil.rmtree(folder)


def test_a_port_taken_before_kamailio_binds_it_is_replaced(
    monkeypatch: pytest.MonkeyPatch, sockets: Sockets
) -> None:
    """Kamailio cannot bind port 0, so tests/kamailio.py chooses its ports beforehand: one
    another program takes meanwhile makes Kamailio exit, and it starts again on others."""
    taken = sockets.udp().getsockname()[1]  # the other program's
    chosen = iter([taken])
    real = kamailio_kit._candidate_port
    monkeypatch.setattr(kamailio_kit, "_candidate_port", lambda: next(chosen, None) or real())
    with kamailio_server(udp=True) as running:
        assert running.target != f"udp:127.0.0.1:{taken}"
        assert "uptime" in Client(running.target, dialect="kamailio", timeout=5).call("core.uptime")
