"""Access control on real servers, called by real processes as other users (tests run as root;
``tests/as_user.py`` drops to ``nobody``, to ``daemon``, and to a group made for the test).

Through the native path (recvmmsg, ``BatchSocket.serve``, FastAnswer) and the pure-Python
one (``MIDGRAM_NATIVE=0``: recvmsg) alike: the kernel's credentials on a UNIX socket, the
source address on UDP. docs/security.md is the design.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from opensips.mi import OpenSIPSMI, OpenSIPSMIException
from servers import (
    ANY_UDP,
    ROOT,
    ServerProcess,
    midgram_server,
    server_command,
    short_tmpdir,
)
from toolchain import needs_native

from midgram.config.settings import Settings
from midgram.engine.registry import Registry
from midgram.server.asyncserver import AsyncServer

AS_USER = str(Path(__file__).with_name("as_user.py"))
OPENSIPS_MI = str(Path(sys.executable).parent / "opensips-mi")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="calling as other users needs root")
pytestmark = needs_root

#: Both ways a worker reads: the compiled module, and the socket module.
PATHS = [
    pytest.param({}, id="native", marks=needs_native),
    pytest.param({"MIDGRAM_NATIVE": "0"}, id="pure_python"),
]
FORBIDDEN = {"error": "RemoteError", "errno": None, "code": 403}
NOBODY = pwd.getpwnam("nobody")


def as_user(*args: str) -> list[Any]:
    """``tests/as_user.py ARGS...``: the JSON lines it printed."""
    done = subprocess.run(
        [sys.executable, AS_USER, *args], capture_output=True, text=True, timeout=30, check=True
    )
    return [json.loads(line) for line in done.stdout.splitlines()]


def call_as(user: str, target: str, method: str, params: Any = None) -> Any:
    """One call by a process running as ``user`` (``user:group`` for that group id):
    ``{"result": ...}`` or the error it got."""
    [reply] = as_user("call", user, target, method, json.dumps(params))
    return reply


def denied(server: ServerProcess) -> int:
    """``mi_datagram:denied``: asked for by its bare name, as OpenSIPS wants it."""
    value: int = server.call("get_statistics", [["denied"]])["result"]["mi_datagram:denied"]
    return value


def open_socket_server(*acl: str, env: dict[str, str], **kwargs: Any) -> Any:
    """``midgram serve`` on a UNIX socket every user may write to, with ``acl`` rules."""
    flags = [flag for rule in acl for flag in ("--acl", rule)]
    return midgram_server("--mode", "0666", *flags, env=env, **kwargs)


@pytest.mark.parametrize("env", PATHS)
def test_nobody_is_refused_what_root_is_named_for_and_served_the_rest(env: dict[str, str]) -> None:
    with open_socket_server("kill, log_level: root", env=env) as server:
        levels = server.call("log_level")["result"]
        assert call_as("nobody", server.target, "kill") == FORBIDDEN
        assert call_as("nobody", server.target, "log_level") == FORBIDDEN
        assert call_as("nobody", server.target, "log_level", [4]) == FORBIDDEN
        # Named params are bound in C too (FastAnswer), but never for a guarded command.
        assert call_as("nobody", server.target, "log_level", {"level": 4}) == FORBIDDEN
        # A command no rule names: served, by FastAnswer on the native path.
        assert set(call_as("nobody", server.target, "uptime")["result"]) == {
            "Now",
            "Up since",
            "Up time",
        }
        # The server is up, at its level, and root is served what nobody was refused.
        assert server.proc.poll() is None
        assert server.call("log_level")["result"] == levels
        assert call_as("root", server.target, "log_level", [1])["result"] == {
            "New global log level": 1
        }
        assert denied(server) == 4
        server.wait_for_log(
            f"refused MI command kill to uid {NOBODY.pw_uid} (gid {NOBODY.pw_gid}, pid "
        )
        assert "not allowed by acl 'kill, log_level: root'" in server.log()
        # Only one line per command per interval, whatever nobody sends.
        assert server.log().count("refused MI command log_level") == 1
        assert call_as("root", server.target, "kill") == {"result": "OK"}
        assert server.proc.wait(15) == 0


@pytest.mark.parametrize("env", PATHS)
def test_a_caller_cannot_claim_another_users_credentials(env: dict[str, str]) -> None:
    """nobody sends SCM_CREDENTIALS naming root: the kernel refuses the datagram (EPERM), so
    the server never sees it; nobody's own credentials get it its 403."""
    with open_socket_server("kill: root", env=env) as server:
        claimed, honest = as_user("claim", "nobody", server.target, "kill")
        assert claimed == {"claimed": "refused", "errno": errno.EPERM}
        assert honest == {
            "honest": {"jsonrpc": "2.0", "error": {"code": 403, "message": "Forbidden"}, "id": 1}
        }
        assert server.proc.poll() is None
        assert denied(server) == 1


@pytest.mark.parametrize("env", PATHS)
def test_with_a_hook_plugged_in_the_reference_path_checks_alike(env: dict[str, str]) -> None:
    """Debug logging observes every datagram: the worker serves on its reference path
    (``Worker.serve_batch``, ``Dispatcher.handle``), the credentials read with each batch."""
    flags = ["--mode", "0666", "--acl", "kill, log_level: root", "--log-level", "debug"]
    with midgram_server(*flags, env=env) as server:
        assert call_as("nobody", server.target, "kill") == FORBIDDEN
        assert call_as("nobody", server.target, "log_level", [4]) == FORBIDDEN
        # Named params are bound in C too (FastAnswer), but never for a guarded command.
        assert call_as("nobody", server.target, "log_level", {"level": 4}) == FORBIDDEN
        assert "result" in call_as("nobody", server.target, "uptime")
        assert (
            call_as("root", server.target, "log_level")["result"]
            == server.call("log_level")["result"]
        )
        server.wait_for_log(": forbidden")  # the refusals were observed
        assert denied(server) == 3
        assert server.proc.poll() is None


@pytest.mark.parametrize("env", PATHS)
def test_several_workers_check_every_call(env: dict[str, str]) -> None:
    """Each worker reads the credentials of its own datagrams (the socket passes them to
    all: set before the fork)."""
    with midgram_server(
        "--mode", "0666", "--children", "3", "--acl", "kill: root", env=env
    ) as server:
        for _ in range(6):
            assert call_as("nobody", server.target, "kill") == FORBIDDEN
        assert server.proc.poll() is None
        assert denied(server) == 6


@pytest.fixture
def test_group() -> Iterator[str]:
    """A group made for the test, listing ``nobody`` as a member; removed afterwards."""
    if shutil.which("groupadd") is None or shutil.which("gpasswd") is None:
        pytest.skip("groupadd and gpasswd (package passwd) are needed to make a test group")
    name = f"mgacl{uuid.uuid4().hex[:8]}"
    subprocess.run(["groupadd", name], check=True, capture_output=True)
    try:
        subprocess.run(["gpasswd", "-a", "nobody", name], check=True, capture_output=True)
        yield name
    finally:
        subprocess.run(["groupdel", name], check=True, capture_output=True)


@pytest.mark.parametrize("env", PATHS)
def test_a_group_named_lets_its_members_in(env: dict[str, str], test_group: str) -> None:
    with open_socket_server(f"log_level: root, @{test_group}", env=env) as server:
        # nobody is listed in the group's entry (its process has no supplementary group).
        assert "result" in call_as("nobody", server.target, "log_level")
        # daemon is not, but runs with the group as its group id.
        assert "result" in call_as(f"daemon:{test_group}", server.target, "log_level")
        # daemon as itself is neither.
        assert call_as("daemon", server.target, "log_level") == FORBIDDEN
        assert denied(server) == 1


def udp_call(target: Any, source: str, method: str, params: Any = None) -> Any:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(5)
        request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": 1}
        if params is not None:
            request["params"] = params
        sock.sendto(orjson.dumps(request), target)
        return orjson.loads(sock.recv(65536))


@pytest.mark.parametrize("traced", [False, True], ids=["untraced", "traced"])
@pytest.mark.parametrize("env", PATHS)
def test_udp_rules_go_by_source_address(env: dict[str, str], traced: bool) -> None:
    """Traced too: a worker whose one hook is HEP tracing serves in C (serve_traced), and
    hands a guarded call to the reference path with its peer."""
    with contextlib.ExitStack() as stack:
        flags = ["--acl", "kill, log_level: 127.0.0.2"]
        if traced:
            sink = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            sink.bind(("127.0.0.1", 0))
            flags += ["--trace-to", f"udp:127.0.0.1:{sink.getsockname()[1]}"]
        server = stack.enter_context(midgram_server(*flags, socket=ANY_UDP, env=env))
        address = ("127.0.0.1", server.port)
        refused = udp_call(address, "127.0.0.1", "log_level", [1])
        assert refused == {
            "jsonrpc": "2.0",
            "error": {"code": 403, "message": "Forbidden"},
            "id": 1,
        }
        assert udp_call(address, "127.0.0.1", "log_level", {"level": 1}) == refused
        assert "result" in udp_call(address, "127.0.0.1", "uptime")
        assert udp_call(address, "127.0.0.2", "log_level", [1])["result"] == {
            "New global log level": 1
        }
        assert denied(server) == 2
        server.wait_for_log("refused MI command log_level to 127.0.0.1:")


@needs_native
def test_a_traced_unix_socket_still_checks_credentials() -> None:
    """A worker that traces serves in C unless its socket passes credentials: then the
    reference path reads them, and a rule naming root still refuses nobody."""
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        sink.bind(("127.0.0.1", 0))
        trace = ["--trace-to", f"udp:127.0.0.1:{sink.getsockname()[1]}"]
        server = stack.enter_context(
            midgram_server("--mode", "0666", "--acl", "log_level: root", *trace)
        )
        assert call_as("nobody", server.target, "log_level", [4]) == FORBIDDEN
        assert call_as("nobody", server.target, "log_level", {"level": 4}) == FORBIDDEN
        assert "result" in call_as("nobody", server.target, "uptime")
        assert call_as("root", server.target, "log_level", {"level": 1})["result"] == {
            "New global log level": 1
        }
        assert denied(server) == 2


@pytest.mark.parametrize("env", PATHS)
def test_a_programs_default_holds_until_the_operator_overrides_it(env: dict[str, str]) -> None:
    with midgram_server("--mode", "0666", "--app", "apps:guarded", env=env) as server:
        assert call_as("nobody", server.target, "restart") == FORBIDDEN
        assert call_as("root", server.target, "restart") == {"result": "restarting"}
        assert call_as("nobody", server.target, "kill") == {"result": "OK"}  # no rule: open
    with midgram_server(
        "--mode",
        "0666",
        "--app",
        "apps:guarded",
        "--acl",
        "@readonly, restart: *",
        "--acl",
        "*: root",
        env=env,
    ) as server:
        assert call_as("nobody", server.target, "restart") == {"result": "restarting"}
        assert call_as("nobody", server.target, "status") == {"result": "fine"}
        assert "result" in call_as("nobody", server.target, "which")
        assert call_as("nobody", server.target, "pwd") == FORBIDDEN
        assert call_as("nobody", server.target, "kill") == FORBIDDEN


@contextlib.contextmanager
def folder() -> Iterator[Path]:
    path = Path(f"/tmp/mgacl{uuid.uuid4().hex[:8]}")
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (
            ["--acl", "kill: no-such-user"],
            "bad value for acl: 'kill: no-such-user': no user named 'no-such-user'",
        ),
        (["--acl", "kill: @no-such-group"], "no group named 'no-such-group'"),
        (["--acl", "kil: root"], "no MI command is named 'kil'"),
        (["--acl", "@readonyl: root"], "no command is in a set named @readonyl"),
        (["--acl", "kill root"], 'must be "COMMANDS: WHO"'),
        (["--acl", "kill: 10.0.0.0/8"], "a UNIX socket has no source address"),
        (["--acl", "restart: root", "--app", "apps:mi"], "no MI command is named 'restart'"),
    ],
)
def test_bad_rules_stop_the_server_at_start_naming_them(flags: list[str], named: str) -> None:
    with folder() as where:
        target = where / "mi.sock"
        done = subprocess.run(
            server_command("--socket", str(target), *flags),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT / "tests")},
        )
        assert done.returncode != 0
        assert named in done.stderr
        assert not target.exists()  # nothing left behind


def test_a_user_on_udp_is_refused_at_start() -> None:
    done = subprocess.run(
        server_command("--socket", ANY_UDP, "--acl", "kill: root"),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode != 0
    assert "a UDP socket cannot tell users or groups" in done.stderr


def test_a_library_commands_default_rule_in_an_asyncio_server() -> None:
    """A program's own command declares who may call it (``@mi.command(acl=...)``); served
    by ``AsyncServer`` inside the program's loop, on the credentials the kernel gives."""
    mi = Registry(module="app")

    @mi.command(acl="root")
    async def restart() -> str:
        return "restarting"

    @mi.command()
    def status() -> str:
        return "fine"

    folder = short_tmpdir()
    settings = Settings(socket_name=f"{folder}/app.sock", unix_socket_mode=0o666)

    async def main() -> list[Any]:
        async with AsyncServer(settings, mi) as server:
            calls = [("nobody", "restart"), ("nobody", "status"), ("root", "restart")]
            return [
                await asyncio.to_thread(call_as, user, server.address, method)
                for user, method in calls
            ]

    try:
        assert asyncio.run(main()) == [FORBIDDEN, {"result": "fine"}, {"result": "restarting"}]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("transport", ["unix", "udp"])
def test_the_clients_people_use_see_a_refusal_as_an_mi_error(transport: str) -> None:
    """python-opensips and its opensips-mi command, unchanged, against a rule that leaves
    out the caller (root here: a rule naming nobody, or another address)."""
    if transport == "unix":
        server_cm = midgram_server("--acl", "kill, log_level: nobody")
    else:
        server_cm = midgram_server("--acl", "kill, log_level: 127.0.0.2", socket=ANY_UDP)
    with server_cm as server:
        if transport == "unix":
            where: dict[str, Any] = {"datagram_unix_socket": server.target}
            cli = [OPENSIPS_MI, "-t", "datagram", "-ds", server.target, "-dt", "5"]
        else:
            port = server.port
            where = {"datagram_ip": "127.0.0.1", "datagram_port": port}
            cli = [OPENSIPS_MI, "-t", "datagram", "-i", "127.0.0.1", "-p", str(port), "-dt", "5"]
        mi = OpenSIPSMI("datagram", datagram_timeout=5.0, **where)
        with pytest.raises(OpenSIPSMIException) as info:
            mi.execute("kill")
        assert getattr(info.value.__cause__, "code", None) == 403
        assert "Up since" in mi.execute("uptime")
        done = subprocess.run([*cli, "log_level"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 1
        assert "403: Forbidden" in done.stdout + done.stderr
        assert server.proc.poll() is None
        assert denied(server) == 2
