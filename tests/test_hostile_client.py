"""A hostile server (issue 15, item 7): the client fails with a ClientError, and nothing it
sends reaches the terminal raw.

The hostile server is a real UNIX datagram socket in a thread, answering every request with
the reply it was given (the request's id filled in): it is the client under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from servers import short_tmpdir

from midgram.cli import cli
from midgram.cli.output import raw_text
from midgram.client.calls import AsyncClient, Client
from midgram.errors import BadReply, ClientError
from midgram.wire.jsonrpc import MAX_DEPTH

ESC = "\x1b]0;owned\x07\x1b[2J\x1b[31m"  # sets the title, clears the screen, turns red
CSI8 = "\u009b31m"  # the 8-bit CSI: a C1 control
DEL = "\x7f"


@contextlib.contextmanager
def hostile_server(reply: bytes) -> Iterator[str]:
    """A UNIX peer answering each request with ``reply`` (``{id}`` replaced by its id)."""
    folder = short_tmpdir()
    path = f"{folder}/hostile.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if not select.select([sock], [], [], 0.05)[0]:
                continue
            data, peer = sock.recvfrom(65536)
            request_id = json.loads(data).get("id", 0)
            with contextlib.suppress(OSError):
                sock.sendto(reply.replace(b"{id}", str(request_id).encode()), peer)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield path
    finally:
        stop.set()
        thread.join(10)
        sock.close()
        shutil.rmtree(folder, ignore_errors=True)


def result_reply(result_text: bytes) -> bytes:
    return b'{"jsonrpc":"2.0","result":' + result_text + b',"id":{id}}'


def nested(levels: int, inner: bytes = b"") -> bytes:
    return b"[" * levels + inner + b"]" * levels


DEEP_REPLIES = {
    "1100 deep": result_reply(nested(1100)),
    "1024 deep": result_reply(nested(1024)),
    "1000 deep": result_reply(nested(1000)),
    "995 deep, a 20-digit number": result_reply(nested(995, b"12345678901234567890")),
    "a 4400-digit number": result_reply(b"1" * 4400),
    "error data 1100 deep": (
        b'{"jsonrpc":"2.0","error":{"code":1,"message":"m","data":' + nested(1100) + b'},"id":{id}}'
    ),
}


@pytest.mark.parametrize("name", DEEP_REPLIES)
def test_a_deep_or_huge_reply_is_a_client_error(name: str) -> None:
    with hostile_server(DEEP_REPLIES[name]) as target:
        with pytest.raises(ClientError) as raised:
            Client(target, timeout=5).call("uptime")
        assert isinstance(raised.value, BadReply)

        async def call() -> None:
            await AsyncClient(target, timeout=5).call("uptime")

        with pytest.raises(BadReply):
            asyncio.run(call())


def test_a_reply_at_the_depth_limit_is_still_read() -> None:
    with hostile_server(result_reply(nested(MAX_DEPTH - 1, b"1"))) as target:
        result = Client(target, timeout=5).call("uptime")
    depth = 0
    while isinstance(result, list):
        result, depth = result[0], depth + 1
    assert (depth, result) == (MAX_DEPTH - 1, 1)


# --- the CLI: nothing from the server reaches the terminal raw -------------------------------

HOSTILE_TEXT = f"a{ESC}b{CSI8}c{DEL}d\ne"
HOSTILE = json.dumps({f"k{ESC}": [HOSTILE_TEXT, {"x": HOSTILE_TEXT}]}).encode()
RAW_CONTROLS = (ESC[0], CSI8, DEL)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def assert_no_raw_controls(text: str) -> None:
    for control in RAW_CONTROLS:
        assert control not in text, repr(text)


@pytest.mark.parametrize("fmt", ["json", "pretty", "yaml", "lines", "table"])
def test_every_format_escapes_what_the_server_sent(fmt: str) -> None:
    with hostile_server(result_reply(HOSTILE)) as target:
        result = invoke("call", "-t", target, "uptime", "-f", fmt)
    assert result.exit_code == 0, result.output
    assert_no_raw_controls(result.stdout)
    if fmt in ("json", "pretty"):
        assert json.loads(result.stdout) == json.loads(HOSTILE)  # still the same JSON
    if fmt == "lines":  # one leaf a line: a newline in a value cannot add one
        assert len(result.stdout.splitlines()) == 2


def test_pretty_in_colour_escapes_too() -> None:
    from midgram.cli.output import render

    text = render(json.loads(HOSTILE), "pretty", colour=True)
    assert_no_raw_controls(text.replace("\x1b[", "").replace("\x1b", "ESC"))
    assert "\\u001b]0;owned" in text


def test_which_and_help_escape_names_and_texts() -> None:
    names = json.dumps([f"up{ESC}time", "ps"]).encode()
    with hostile_server(result_reply(names)) as target:
        which = invoke("which", "-t", target)
    assert which.exit_code == 0
    assert_no_raw_controls(which.stdout)
    assert which.stdout.splitlines()[1] == "ps"
    recipes = json.dumps([[f"n{ESC}"]]).encode()
    with hostile_server(result_reply(recipes)) as target:
        usage = invoke("which", "-t", target, "cmd")
        assert_no_raw_controls(usage.stdout)
        assert usage.stdout.startswith("cmd n\\x1b")
    info = json.dumps({"Help": HOSTILE_TEXT, f"Exported{ESC}": "m"}).encode()
    with hostile_server(result_reply(info)) as target:
        result = invoke("help", "-t", target, "--dialect", "kamailio", "cmd")
    assert result.exit_code == 0
    assert_no_raw_controls(result.stdout)


def test_error_messages_escape_the_servers_words() -> None:
    error = json.dumps({"code": 7, "message": f"bad{ESC}", "data": HOSTILE_TEXT}).encode()
    with hostile_server(b'{"jsonrpc":"2.0","error":' + error + b',"id":{id}}') as target:
        result = invoke("call", "-t", target, "uptime")
        assert result.exit_code == 1
        assert_no_raw_controls(result.stderr)
        assert "bad\\x1b" in result.stderr
        which = invoke("which", "-t", target)
        assert_no_raw_controls(which.stderr)


def test_verbose_escapes_the_reply_bytes() -> None:
    with hostile_server(result_reply(json.dumps(HOSTILE_TEXT, ensure_ascii=False).encode())) as t:
        result = invoke("call", "-t", t, "uptime", "-v")
    assert_no_raw_controls(result.stderr)


# Not JSON (raw control bytes in a string), so a BadReply; --format raw shows it anyway.
RAW_REPLY = b'{"jsonrpc":"2.0","result":"a\x1b[2Jb\xc2\x9b31m\x7f","id":{id}}'


def test_raw_is_the_exact_bytes_in_a_pipe() -> None:
    with hostile_server(RAW_REPLY) as target:
        result = invoke("call", "-t", target, "uptime", "-f", "raw")
    assert result.exit_code == 1  # not JSON: a bad reply, shown as it came
    head, _, _ = RAW_REPLY.partition(b"{id}")
    assert result.stdout_bytes.startswith(head)
    assert_no_raw_controls(result.stderr)


def test_raw_is_escaped_on_a_terminal() -> None:
    with hostile_server(RAW_REPLY) as target:
        seen = on_a_terminal(
            [sys.executable, "-m", "midgram", "call", "-t", target, "uptime", "-f", "raw"]
        )
    for control in (b"\x1b", b"\xc2\x9b", b"\x7f"):
        assert control not in seen, seen
    assert b'"a\\x1b[2Jb\\x9b31m\\x7f"' in seen


def on_a_terminal(args: list[str]) -> bytes:
    """What a command writes to a terminal (stdout and stderr on a pseudo-terminal)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 0.1)[0]:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the process ended and closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    finally:
        proc.wait(10)
        os.close(master)
    return seen


def test_raw_text() -> None:
    assert raw_text(b"a\x1bb\n\tc", tty=False) == b"a\x1bb\n\tc"
    assert raw_text(b"a\x1bb\n\tc", tty=True) == "a\\x1bb\n\tc"


def test_the_shell_escapes_errors_and_results(tmp_path: Path) -> None:
    error = json.dumps({"code": 7, "message": f"bad{ESC}"}).encode()
    with hostile_server(b'{"jsonrpc":"2.0","error":' + error + b',"id":{id}}') as target:
        result = CliRunner().invoke(cli, ["shell", "-t", target], input="uptime\n")
    assert_no_raw_controls(result.stderr)
    assert "bad\\x1b" in result.stderr
