"""``midgram events`` against a real midgram server, as a real process (signals, pipes, exit
statuses) or in-process for the output formats.

Each test waits for the command's ``listening on`` line (it is subscribed then) or for what
the server lists, with a deadline; never a sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from servers import ANY_UDP, ROOT, ServerProcess, midgram_server, short_tmpdir, wait_until
from test_cli_client import INTERRUPTIBLE
from test_cli_completion import _shell, terminal

from midgram.cli import cli
from midgram.client import Client

APP = ("--app", "apps:events_mi")
EVENT = "E_CALLS_HIGH"
DEADLINE = 20.0
LISTENING = re.compile(r"midgram: listening on (\S+) for ")


@pytest.fixture(scope="module", params=["unix", "udp"])
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    socket = ANY_UDP if request.param == "udp" else None
    with midgram_server(*APP, socket=socket) as running:
        yield running


@pytest.fixture(scope="module")
def unix_server() -> Iterator[ServerProcess]:
    with midgram_server(*APP) as running:
        yield running


@pytest.fixture
def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MIDGRAM_", "_MIDGRAM_"))}
    clean["PYTHONPATH"] = str(ROOT / "src")
    return clean


class Listener:
    """``midgram events ...`` running: its stderr read line by line as it comes."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [*INTERRUPTIBLE, "events", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.err = b""

    def wait_for(self, pattern: str | re.Pattern[str]) -> re.Match[str]:
        """The first match of ``pattern`` in what it wrote on stderr, once it is there."""
        assert self.proc.stderr is not None
        deadline = time.monotonic() + DEADLINE
        while (found := re.search(pattern, self.err.decode(errors="replace"))) is None:
            ready, _, _ = select.select([self.proc.stderr], [], [], deadline - time.monotonic())
            chunk = os.read(self.proc.stderr.fileno(), 65536) if ready else b""
            if not chunk:
                raise AssertionError(f"{pattern!r} not on stderr:\n{self.err.decode()}")
            self.err += chunk
        return found

    def subscribed(self) -> str:
        """The socket it subscribed, once it has."""
        return self.wait_for(LISTENING).group(1)

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=DEADLINE)
        return self.proc.returncode, out.decode(), (self.err + err).decode()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


@contextlib.contextmanager
def listening(*args: str, env: dict[str, str]) -> Iterator[Listener]:
    listener = Listener(list(args), env)
    try:
        yield listener
    finally:
        listener.kill()


def _sockets(target: str) -> list[str]:
    listed = Client(target).call("subscribers_list", EVENT)["Event"]
    return [entry["socket"] for entry in listed.get("Subscribers", [])]


def test_count_1_prints_the_event_exits_0_and_unsubscribes(
    server: ServerProcess, env: dict[str, str]
) -> None:
    with listening(EVENT, "-t", server.target, "--count", "1", env=env) as listener:
        socket = listener.subscribed()
        assert _sockets(server.target) == [socket]
        Client(server.target).call("set_calls", calls=120)
        status, out, err = listener.finish()
    assert status == 0, err
    line = json.loads(out)
    assert out.count("\n") == 1
    assert (line["event"], line["params"]) == (EVENT, {"calls": 120})
    assert line["sender"].startswith("unix:(pid " if server.target[0] == "/" else "udp:127.0.0.1:")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", line["received"])
    assert _sockets(server.target) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_unsubscribes_and_exits_0(
    unix_server: ServerProcess, env: dict[str, str], sig: signal.Signals
) -> None:
    with listening(EVENT, "-t", unix_server.target, env=env) as listener:
        socket = listener.subscribed()
        assert _sockets(unix_server.target) == [socket]
        listener.proc.send_signal(sig)
        status, out, err = listener.finish()
    assert (status, out) == (0, ""), err
    assert _sockets(unix_server.target) == []
    assert not Path(socket.removeprefix("unix:")).parent.exists()


def test_ctrl_c_unsubscribes_and_exits_130(unix_server: ServerProcess, env: dict[str, str]) -> None:
    with listening(EVENT, "-t", unix_server.target, env=env) as listener:
        listener.subscribed()
        listener.proc.send_signal(signal.SIGINT)
        status, _, err = listener.finish()
    assert status == 130
    assert err.endswith("midgram: interrupted\n")
    assert _sockets(unix_server.target) == []


def test_duration_ends_it_with_0(unix_server: ServerProcess, env: dict[str, str]) -> None:
    with listening(EVENT, "-t", unix_server.target, "--duration", "300ms", env=env) as listener:
        listener.subscribed()
        status, out, err = listener.finish()
    assert (status, out) == (0, ""), err
    assert _sockets(unix_server.target) == []


def test_a_reader_that_goes_away_ends_it(unix_server: ServerProcess, env: dict[str, str]) -> None:
    """``midgram events E | head -1``: once its stdout is closed, it unsubscribes and ends."""
    with listening(EVENT, "-t", unix_server.target, env=env) as listener:
        listener.subscribed()
        client = Client(unix_server.target)
        client.call("set_calls", calls=1)
        assert listener.proc.stdout is not None
        assert json.loads(listener.proc.stdout.readline())["params"] == {"calls": 1}
        listener.proc.stdout.close()
        client.call("set_calls", calls=2)
        assert listener.proc.wait(DEADLINE) == 0
        assert listener.proc.stderr is not None
        rest = listener.proc.stderr.read().decode()
        assert "Traceback" not in rest
        assert "Error" not in rest
    assert _sockets(unix_server.target) == []


def test_a_server_restart_is_followed_by_a_renewal(env: dict[str, str]) -> None:
    folder = short_tmpdir()
    target = f"{folder}/mi.sock"
    try:
        with midgram_server(*APP, socket=target) as first:
            listener = Listener(
                [EVENT, "-t", target, "--check-every", "100ms", "--count", "1"], env
            )
            socket = listener.subscribed()
            assert _sockets(target) == [socket]
            # Its "Up since" then differs from the next server's.
            wait_until(lambda: first.call("uptime")["result"]["Up time"] != "0 [sec]")
        try:
            with midgram_server(*APP, socket=target):
                listener.wait_for("restarted")
                assert _sockets(target) == [socket]
                Client(target).call("set_calls", calls=5)
                status, out, err = listener.finish()
                assert status == 0, err
                assert json.loads(out)["params"] == {"calls": 5}
                # Said once when the server could not be asked, once when subscribed again.
                assert err.count(": still listening, subscribing again once it answers\n") >= 1
                assert (
                    err.count(f"midgram: {target} restarted (or came back): subscribed again") == 1
                )
                assert _sockets(target) == []
        finally:
            listener.kill()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_exec_runs_a_command_per_event(
    unix_server: ServerProcess, env: dict[str, str], tmp_path: Path
) -> None:
    log = tmp_path / "log"
    command = f'printf "%s " "$MIDGRAM_EVENT" >> {log}; cat >> {log}'
    with listening(
        EVENT, "-t", unix_server.target, "--count", "2", "--exec", command, env=env
    ) as listener:
        listener.subscribed()
        client = Client(unix_server.target)
        client.call("set_calls", calls=1)
        client.call("set_calls_in_thread", calls=2)
        status, out, err = listener.finish()
    assert status == 0, err
    lines = log.read_text().splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == [EVENT, EVENT]
    assert [json.loads(line.split(" ", 1)[1])["params"] for line in lines] == [{"calls": 1}, ["2"]]
    assert len(out.splitlines()) == 2  # still printed


def test_a_failing_exec_is_said_and_listening_goes_on(
    unix_server: ServerProcess, env: dict[str, str]
) -> None:
    with listening(
        EVENT, "-t", unix_server.target, "--count", "1", "--exec", "exit 3", env=env
    ) as listener:
        listener.subscribed()
        Client(unix_server.target).call("set_calls", calls=1)
        status, _, err = listener.finish()
    assert status == 0
    assert "midgram: --exec: 'exit 3' exited with status 3 for E_CALLS_HIGH" in err


# --- failures: midgram call's exit statuses --------------------------------------------------


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, ["events", *args], catch_exceptions=False)


def test_an_unknown_event_exits_1_and_says_which(unix_server: ServerProcess) -> None:
    result = invoke(EVENT, "E_NOPE", "-t", unix_server.target)
    assert result.exit_code == 1
    assert "event_subscribe: error 400: Bad parameter value" in result.stderr
    assert f"{unix_server.target} publishes no E_NOPE (it has: E_CALLS_HIGH, " in result.stderr
    assert _sockets(unix_server.target) == []


def test_an_unreachable_server_exits_4(tmp_path: Path) -> None:
    result = invoke(EVENT, "-t", str(tmp_path / "none.sock"), "--timeout", "1")
    assert result.exit_code == 4
    assert "no socket at" in result.stderr


def test_a_silent_server_exits_3(tmp_path: Path) -> None:
    import socket

    path = str(tmp_path / "silent.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as silent:
        silent.bind(path)
        result = invoke(EVENT, "-t", path, "--timeout", "200ms")
    assert result.exit_code == 3
    assert "no reply from" in result.stderr


def test_a_port_in_use_exits_4(unix_server: ServerProcess) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = invoke(EVENT, "-t", unix_server.target, "--listen", f"udp:127.0.0.1:{port}")
    assert result.exit_code == 4
    assert f"cannot listen on udp:127.0.0.1:{port}: Address already in use" in result.stderr


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--listen", "tcp:1.2.3.4:5"], "Invalid value for --listen: no transport 'tcp'"),
        (["--advertise", "udp:1.2.3.4"], "Invalid value for --advertise"),
        (["--dialect", "kamailio"], "the kamailio dialect has no event interface"),
        (["--expire", "1"], "Invalid value for '--expire'"),
        (["-f", "table"], "Invalid value for '-f' / '--format'"),
        (["-t", "/a.sock", "-t", "/b.sock"], "`midgram events` talks to one server, and got 2"),
    ],
)
def test_usage_errors_exit_2(unix_server: ServerProcess, args: list[str], text: str) -> None:
    targets = [] if "-t" in args else ["-t", unix_server.target]
    result = invoke(EVENT, *targets, *args)
    assert result.exit_code == 2
    assert text in result.stderr


def test_no_event_is_a_usage_error() -> None:
    result = invoke()
    assert result.exit_code == 2
    assert "Missing argument 'EVENT...'" in result.stderr


# --- output formats, in-process -------------------------------------------------------------


def _raised_while_listening(target: str, *args: str) -> Result:
    """``midgram events E --count 2 ARGS`` while two events are raised once it listens."""

    def raise_two() -> None:
        wait_until(lambda: _sockets(target), DEADLINE, "the subscription")
        client = Client(target)
        client.call("set_calls", calls=1)
        client.call("set_calls_in_thread", calls=2)

    raiser = threading.Thread(target=raise_two)
    raiser.start()
    try:
        return invoke(EVENT, "-t", target, "--count", "2", "-q", *args)
    finally:
        raiser.join()


def test_format_raw_is_each_datagram_a_line(unix_server: ServerProcess) -> None:
    result = _raised_while_listening(unix_server.target, "-f", "raw")
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == (
        '{"jsonrpc":"2.0","method":"E_CALLS_HIGH","params":{"calls":1}}\n'
        '{"jsonrpc":"2.0","method":"E_CALLS_HIGH","params":["2"]}\n'
    )


def test_format_yaml_is_a_document_an_event(unix_server: ServerProcess) -> None:
    result = _raised_while_listening(unix_server.target, "-f", "yaml")
    documents = list(yaml.safe_load_all(result.stdout))
    assert [(d["event"], d["params"]) for d in documents] == [
        (EVENT, {"calls": 1}),
        (EVENT, ["2"]),
    ]


def test_format_lines_and_pretty(unix_server: ServerProcess) -> None:
    lines = _raised_while_listening(unix_server.target, "-f", "lines").stdout
    first, second = lines.strip("\n").split("\n\n")
    assert "event: E_CALLS_HIGH\nparams.calls: 1\nreceived: " in first
    assert "params[0]: 2" in second
    pretty = _raised_while_listening(unix_server.target, "-f", "pretty").stdout
    assert pretty.startswith('{\n  "event": "E_CALLS_HIGH",\n  "params": {\n    "calls": 1')
    assert "\x1b[" not in pretty


def test_all_subscribes_every_event(unix_server: ServerProcess) -> None:
    def raise_once() -> None:
        wait_until(lambda: _sockets(unix_server.target), DEADLINE, "the subscription")
        Client(unix_server.target).call("set_calls", calls=4)

    raiser = threading.Thread(target=raise_once)
    raiser.start()
    try:
        result = invoke("all", "-t", unix_server.target, "--count", "1")
    finally:
        raiser.join()
    assert result.exit_code == 0
    assert re.search(r"for E_CALLS_HIGH, E_MIDGRAM_WORKER_RESTARTED from ", result.stderr)
    assert json.loads(result.stdout)["params"] == {"calls": 4}


def test_the_help_says_how_it_ends() -> None:
    text = " ".join(CliRunner().invoke(cli, ["events", "--help"]).stdout.split())
    assert "SIGTERM (or SIGHUP) end it with 0, Ctrl-C with 130" in text
    assert "130 interrupted (Ctrl-C)" in text


def test_midgram_call_does_not_load_the_listener() -> None:
    script = "import json, sys, midgram.cli.call; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    loaded: Any = json.loads(done.stdout)
    assert "midgram.client.events" not in loaded
    assert "midgram.client.listen" not in loaded


@pytest.mark.parametrize("shell", [_shell("bash"), _shell("zsh")])
def test_event_names_complete_from_the_server(shell: str) -> None:
    with (
        midgram_server(*APP, socket=ANY_UDP) as udp,
        terminal(shell) as term,
    ):
        since = term.type(f"midgram events -t {udp.target} E_CALLS_H\t")
        term.wait_for("E_CALLS_HIGH ", since)
        term.type("\x15")  # Ctrl-U: a fresh line
        since = term.type(f"midgram events -t {udp.target} al\t")
        term.wait_for("all ", since)
