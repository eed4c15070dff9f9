"""The real clients people use today, from PyPI, against our server, unchanged.

python-opensips (``opensips-mi`` and its ``OpenSIPSMI`` class) and opensips-cli, over the
UNIX socket and over UDP, invoked as their users invoke them (docs/compatibility.md,
"Clients"); and socat, as the README runs it (it drops a reply that does not come from the
address it sent to).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import pytest
from opensips.mi import OpenSIPSMI, OpenSIPSMIException
from servers import ServerProcess
from toolchain import SOCAT, needs_socat

BIN = Path(sys.executable).parent
OPENSIPS_MI = str(BIN / "opensips-mi")
OPENSIPS_CLI = str(BIN / "opensips-cli")


def _transport(server: ServerProcess) -> dict[str, object]:
    if server.target.startswith("udp:"):
        host, _, port = server.target[4:].rpartition(":")
        return {"datagram_ip": host, "datagram_port": int(port)}
    return {"datagram_unix_socket": server.target}


@pytest.fixture(params=["unix", "udp"])
def any_server(
    request: pytest.FixtureRequest, midgram: ServerProcess, midgram_udp: ServerProcess
) -> ServerProcess:
    return midgram if request.param == "unix" else midgram_udp


def test_python_opensips_library(any_server: ServerProcess) -> None:
    mi = OpenSIPSMI("datagram", datagram_timeout=5.0, **_transport(any_server))
    assert set(mi.execute("uptime")) == {"Now", "Up since", "Up time"}
    assert "uptime" in mi.execute("which")
    assert mi.execute("which", ["log_level"]) == [[], ["level"], ["level", "pid"]]
    stats = mi.execute("get_statistics", {"statistics": ["core:"]})
    assert all(key.startswith("core:") for key in stats)
    with pytest.raises(OpenSIPSMIException) as info:
        mi.execute("no_such_command")
    assert getattr(info.value.__cause__, "code", None) == -32601


def _mi_cli(server: ServerProcess) -> list[str]:
    if server.target.startswith("udp:"):
        host, _, port = server.target[4:].rpartition(":")
        return [OPENSIPS_MI, "-t", "datagram", "-i", host, "-p", port, "-dt", "5"]
    return [OPENSIPS_MI, "-t", "datagram", "-ds", server.target, "-dt", "5"]


def test_opensips_mi_command(any_server: ServerProcess) -> None:
    base = _mi_cli(any_server)
    done = subprocess.run([*base, "uptime"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Up since" in json.loads(done.stdout)
    done = subprocess.run([*base, "-s", "core:"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "core:timestamp" in json.loads(done.stdout)
    done = subprocess.run(
        [*base, "which", "-j", '{"command":"uptime"}'], capture_output=True, text=True, timeout=60
    )
    assert json.loads(done.stdout) == [[]]
    done = subprocess.run([*base, "nosuch"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "-32601: Method not found" in done.stdout + done.stderr


def _cli(server: ServerProcess) -> list[str]:
    options = [OPENSIPS_CLI, "-o", "communication_type=datagram", "-o", "datagram_timeout=5"]
    for key, value in _transport(server).items():
        options += ["-o", f"{key}={value}"]
    return options


def test_opensips_cli(any_server: ServerProcess, tmp_path: Path) -> None:
    base = _cli(any_server)
    env = {**os.environ, "HOME": str(tmp_path)}  # no ~/.opensips-cli.cfg of the machine's

    def run(*words: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*base, "-x", "mi", *words], capture_output=True, text=True, timeout=60, env=env
        )

    done = run("uptime")
    assert done.returncode == 0, done.stderr
    assert "Up since" in json.loads(done.stdout)
    done = run("which")
    assert "get_statistics" in json.loads(done.stdout)
    done = run("get_statistics", "core:", "mi_datagram:")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert "core:timestamp" in result
    assert "mi_datagram:received" in result
    done = run("log_level")
    assert "Processes" in json.loads(done.stdout)
    # opensips-cli checks names against `which` first: an unknown one never reaches us.
    done = run("no_such_command")
    assert done.returncode != 0


def _socat_address(server: ServerProcess, folder: Path) -> str:
    if server.target.startswith("udp:"):
        return f"UDP-SENDTO:{server.target[4:]}"
    return f"UNIX-SENDTO:{server.target},bind={folder}/me.sock"


def _read_json(pipe: IO[bytes], timeout: float) -> Any:
    """One JSON document from ``pipe`` (socat prints the reply without a newline); None if
    the pipe closed or ``timeout`` passed first."""
    data = b""
    deadline = time.monotonic() + timeout
    while select.select([pipe], [], [], max(0.0, deadline - time.monotonic()))[0]:
        chunk = os.read(pipe.fileno(), 1 << 16)
        if not chunk:
            break
        data += chunk
        with contextlib.suppress(ValueError):
            return json.loads(data)
    return None


@needs_socat
def test_socat_as_the_readme_runs_it(any_server: ServerProcess, tmp_path: Path) -> None:
    """`socat - UNIX-SENDTO:$SOCK,bind=/tmp/me.sock <<< '{...}'`: socat ignores a reply from
    any address but the one it sent to, so this prints nothing unless the server answers
    from its socket_name itself. stdin stays open until the reply is read (socat waits for
    one only half a second after EOF)."""
    assert SOCAT is not None
    with subprocess.Popen(
        [SOCAT, "-", _socat_address(any_server, tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as socat:
        assert socat.stdin is not None
        assert socat.stdout is not None
        socat.stdin.write(b'{"jsonrpc":"2.0","method":"ps","id":1}\n')
        socat.stdin.flush()
        reply = _read_json(socat.stdout, timeout=10)
        socat.stdin.close()
        assert socat.wait(60) == 0
    assert reply is not None, "socat printed no reply"
    assert reply["id"] == 1
    assert [p["Type"] for p in reply["result"]["Processes"]] == [
        "attendant",
        "MI Datagram",
        "MI Datagram",
    ]
