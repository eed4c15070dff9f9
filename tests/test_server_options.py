"""The parameters that shape replies and their delivery, over real sockets."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from servers import RawClient, midgram_server, server_command, short_tmpdir, wait_until

from midgram.config.settings import Settings
from midgram.engine.registry import Registry
from midgram.errors import TransportError
from midgram.server.asyncserver import AsyncServer
from midgram.server.wiring import serve

UPTIME = b'{"jsonrpc":"2.0","method":"uptime","id":1}'


def test_pretty_printing() -> None:
    with midgram_server("--pretty") as running, running.client() as client:
        reply = client.exchange(b'{"jsonrpc":"2.0","method":"nope","id":3}')
    assert reply == (
        b'{\n\t"jsonrpc":\t"2.0",\n\t"error":\t{\n\t\t"code":\t-32601,\n'
        b'\t\t"message":\t"Method not found"\n\t},\n\t"id":\t3\n}'
    )


def test_json_errors_and_buffer_size() -> None:
    flags = ("--json-errors", "--buf-size", "2048", "--app", "apps:mi")
    with midgram_server(*flags) as running, running.client() as client:
        parse = json.loads(client.exchange(b"{nope") or b"")
        assert parse["error"]["code"] == -32700
        oversize = json.loads(client.exchange(b" " * 3000 + UPTIME) or b"")
        assert "2048-byte limit" in oversize["error"]["data"]
        too_big = json.loads(
            client.exchange(b'{"jsonrpc":"2.0","method":"big","params":[3000],"id":2}') or b""
        )
        assert too_big["error"]["code"] == -32603
        assert too_big["id"] == 2
        stats = client.call("get_statistics", [["mi_datagram:"]])["result"]
        assert stats["mi_datagram:oversize_requests"] == 1
        assert stats["mi_datagram:oversize_replies"] == 1
        assert stats["mi_datagram:parse_errors"] == 1


def test_reply_dropped_after_socket_timeout() -> None:
    with midgram_server("--children", "1", "--timeout", "300") as running:
        never_reads = running.client()
        for i in range(300):
            never_reads.send(b'{"jsonrpc":"2.0","method":"pwd","id":%d}' % i)
        assert running.call("uptime")["result"]  # the worker is not stalled meanwhile
        dropped = wait_until(
            lambda: running.call("get_statistics", [["dropped_replies"]])["result"][
                "mi_datagram:dropped_replies"
            ],
            what="replies to expire",
        )
        assert dropped > 0
        running.wait_for_log("socket_timeout")
        never_reads.close()


@pytest.mark.parametrize("children", ["1", "0"])
def test_sighup_reopens_the_log_file(children: str, folder: Path) -> None:
    # With children_count 0 the one process is the worker: its loop re-opens the file.
    log_file = Path(folder, "midgram.log")
    rotated = Path(folder, "midgram.log.1")
    with midgram_server("--log-file", str(log_file), "--children", children) as running:
        wait_until(lambda: log_file.exists() and "listening" in log_file.read_text())
        os.rename(log_file, rotated)
        running.proc.send_signal(signal.SIGHUP)
        wait_until(log_file.exists, what="the log file to be re-opened")
        wait_until(lambda: "re-opened" in log_file.read_text())
    assert "stopped" in log_file.read_text()
    assert "stopped" not in rotated.read_text()


def test_unix_socket_owned_by_another_user_still_answers_abstract_clients() -> None:
    with (
        midgram_server("--user", "nobody", "--mode", "0666") as running,
        RawClient(running.target) as client,
    ):
        assert client.call("uptime")["result"]


def test_async_server_in_the_programs_own_loop(folder: Path) -> None:
    path = f"{folder}/mi.sock"
    registry = Registry(module="app")

    @registry.command()
    async def ping(text: str = "pong") -> str:
        await asyncio.sleep(0)
        return text

    async def scenario() -> list[object]:
        server = AsyncServer(Settings(socket_name=path), registry)
        await server.start()
        loop = asyncio.get_running_loop()
        client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        client.bind(f"\0mgtest-async-{os.getpid()}")
        client.setblocking(False)
        replies = []
        for request in (
            b'{"jsonrpc":"2.0","method":"ping","params":["hi"],"id":1}',
            b'{"jsonrpc":"2.0","method":"uptime","id":2}',
            b'{"jsonrpc":"2.0","method":"kill","id":3}',
        ):
            await loop.sock_sendto(client, request, path)
            replies.append(json.loads(await asyncio.wait_for(loop.sock_recv(client, 65536), 5)))
        await asyncio.wait_for(server.serve_forever(), 5)  # `kill` closed it
        client.close()
        return replies

    replies = asyncio.run(scenario())
    assert replies[0] == {"jsonrpc": "2.0", "result": "hi", "id": 1}
    assert "Up time" in replies[1]["result"]  # type: ignore[index]
    assert replies[2] == {"jsonrpc": "2.0", "result": "OK", "id": 3}
    assert not os.path.exists(path)


def test_parameters_from_an_opensips_cfg_and_a_toml_file(folder: Path) -> None:
    cfg = folder / "opensips.cfg"
    cfg.write_text(
        'loadmodule "mi_datagram.so"\n'
        'modparam("mi_datagram", "children_count", 3)  # three workers\n'
        'modparam("mi_datagram", "unix_socket_mode", 0600)\n'
        'modparam("mi_datagram", "children_count", 2)  /* the last one wins */\n'
    )
    with midgram_server("--config", str(cfg)) as running:
        assert len(running.worker_pids()) == 2
        assert os.stat(running.target).st_mode & 0o777 == 0o600
    toml = folder / "midgram.toml"
    toml.write_text("[mi_datagram]\npretty_printing = 1\nchildren_count = 0\n")
    # The flags win over the file.
    with midgram_server("--config", str(toml), "--children", "1") as running:
        with running.client() as client:
            reply = client.exchange(UPTIME) or b""
        assert reply.startswith(b'{\n\t"jsonrpc":\t"2.0",')
        assert len(running.worker_pids()) == 1


def test_pid_file_is_written_while_serving_and_removed_after(folder: Path) -> None:
    pid_file = Path(folder, "midgram.pid")
    with midgram_server("--pid-file", str(pid_file)) as running:
        assert int(pid_file.read_text()) == running.proc.pid
        assert running.stop() == 0
    assert not pid_file.exists()


# --- serve() in a program: its logs, its log_level, its errors (issue 10 item 7) -------------

PROGRAM = """
import logging, sys
from midgram import Settings, serve
{setup}
status = serve(Settings(socket_name={path!r}, children_count=1, log_level={level!r},
                        unix_socket_mode=0))
root, midgram = logging.getLogger(), logging.getLogger("midgram")
print(root.level, len(root.handlers), midgram.level, len(midgram.handlers))
sys.exit(status)
"""


def run_program(setup: str, level: str) -> tuple[str, list[object], str]:
    """A program that serves: its stderr, what ``log_level`` reported, and the state of its
    loggers after serve() returned (root level and handlers, midgram's)."""
    folder = short_tmpdir()
    path = f"{folder}/mi.sock"
    code = PROGRAM.format(setup=setup, path=path, level=level)
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        wait_until(lambda: os.path.exists(path) or proc.poll() is not None, what="the socket")
        with RawClient(path) as client:
            levels = [p["Log level"] for p in client.call("log_level")["result"]["Processes"]]
            client.call("kill")
        after, stderr = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    return stderr, levels, after.strip()


def test_serve_logs_to_stderr_when_the_program_set_up_no_logging() -> None:
    stderr, levels, after = run_program("", "info")
    assert re.search(r"midgram\[\d+\] INFO midgram.server.wiring: listening on /", stderr), stderr
    assert "WARNING midgram.server.wiring: cannot specify unix_socket_mode = 0" in stderr
    assert "stopped" in stderr
    assert levels == [3, 3]
    assert after == "30 0 0 0"  # nothing left behind: root WARNING, no handler anywhere


def test_serve_honours_settings_log_level() -> None:
    quiet, levels, _ = run_program("", "error")
    assert quiet == ""
    assert levels == [0, 0]
    verbose, levels, _ = run_program("", "debug")
    assert " DEBUG midgram." in verbose
    assert levels == [4, 4]


def test_serve_leaves_the_programs_own_logging_alone() -> None:
    setup = "logging.basicConfig(level=logging.WARNING, format='APP %(levelname)s %(message)s')"
    stderr, _, after = run_program(setup, "warning")
    assert stderr.splitlines() == [
        "APP WARNING cannot specify unix_socket_mode = 0, forcing it to rw------- (0600)"
    ]
    assert after == "30 1 0 0"  # the program's root logger and handler, as it set them
    stderr, _, _ = run_program(setup, "debug")
    lines = stderr.splitlines()
    assert "APP DEBUG" in stderr
    assert all(line.startswith("APP ") for line in lines), stderr  # its handler, its format


def test_a_socket_in_a_missing_folder_is_one_line_naming_it(folder: Path) -> None:
    path = f"{folder}/no/such/mi.sock"
    with pytest.raises(TransportError) as info:
        serve(Settings(socket_name=path))
    assert str(info.value) == (
        f"cannot bind {path}: no folder {folder}/no/such: create it first "
        "(writable by the user midgram runs as)"
    )
    done = subprocess.run(
        server_command("--socket", path), capture_output=True, text=True, timeout=30, check=False
    )
    assert (done.returncode, done.stderr) == (4, f"midgram: {info.value}\n")
