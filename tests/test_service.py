"""``midgram serve`` under a service manager, with the real things systemd gives a service:
the journal's stream (``$JOURNAL_STREAM``), a notification socket (``$NOTIFY_SOCKET``) bound
by the test, and the process titles ``ps`` and ``top`` read from /proc."""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import ANY_UDP, ROOT, ServerProcess, command_line, midgram_server, wait_until

APP = ("--app", "apps:mi")


def journal_pipe() -> tuple[tuple[int, int], str]:
    """A pipe for a server's stderr and the ``$JOURNAL_STREAM`` that names it, as systemd
    names the journal's stream it gives a service: ``device:inode``."""
    read, write = os.pipe()
    found = os.fstat(write)
    return (read, write), f"{found.st_dev}:{found.st_ino}"


def test_on_the_journal_lines_have_no_time_and_carry_their_syslog_priority() -> None:
    """journald stamps each line itself and reads `<N>` as its priority: midgram's own
    timestamp was a second one, and every line was `info` to journalctl."""
    pipe, stream = journal_pipe()
    with midgram_server(
        "--children", "1", *APP, stderr_pipe=pipe, env={"JOURNAL_STREAM": stream}
    ) as running:
        assert running.call("fail")["error"]["code"] == -32000
        running.wait_for_log("RuntimeError: a bug in the command")
        pid = running.worker_pids()[0]
    lines = [line for line in running.log().splitlines() if line.startswith("<")]
    listening = next(line for line in lines if "listening on" in line)
    where = f"{running.target} (1 worker(s))"
    assert listening == f"<6>[{running.proc.pid}] INFO midgram.server.wiring: listening on {where}"
    failed = lines.index(f"<3>[{pid}] ERROR midgram.engine.dispatch: MI command fail failed")
    traceback = lines[failed + 1 :]
    assert traceback[0] == "<3>Traceback (most recent call last):"
    assert "<3>RuntimeError: a bug in the command" in traceback
    # every line has its priority; the banner (how to call, Ctrl-C) is for a terminal
    assert lines == running.log().splitlines()
    assert "call it:" not in running.log()


def test_a_stream_that_is_not_the_journals_keeps_the_time() -> None:
    """stderr redirected elsewhere inside a unit (2>file): $JOURNAL_STREAM names another
    stream, and the lines keep their own time."""
    pipe, _ = journal_pipe()
    other, stream = journal_pipe()
    os.close(other[0])
    os.close(other[1])
    with midgram_server(
        "--children", "1", stderr_pipe=pipe, env={"JOURNAL_STREAM": stream}
    ) as running:
        pass
    line = next(line for line in running.lines if "listening on" in line)
    assert re.match(
        rf"\d{{4}}-\d\d-\d\d \S+ midgram\[{running.proc.pid}\] INFO "
        r"midgram.server.wiring: listening on ",
        line,
    )


# --- process titles ---------------------------------------------------------------------------


def comm(pid: int) -> str:
    """What top, `ps -o comm` and pgrep show."""
    return Path(f"/proc/{pid}/comm").read_text().rstrip("\n")


def ids(running: ServerProcess) -> dict[int, int]:
    """`ps`'s rows: ID to PID."""
    return {p["ID"]: p["PID"] for p in running.call("ps")["result"]["Processes"]}


def await_name(pid: int, name: str) -> None:
    """Listed by ps as soon as it is forked, a worker names itself a moment later (comm is
    set last, after the command line)."""
    wait_until(lambda: comm(pid) == name, what=f"process {pid} named {name!r}")


def test_ps_and_top_tell_the_attendant_from_each_worker() -> None:
    """Every process was `python3 -m midgram serve ...`, in top and in ps alike."""
    with midgram_server("--children", "2") as running:
        where = running.target
        rows = ids(running)
        for number in (1, 2):
            await_name(rows[number], f"midgram w{number}")
        assert comm(rows[0]) == "midgram"
        assert command_line(rows[0]) == f"midgram: attendant {where}"
        for number in (1, 2):
            assert comm(rows[number]) == f"midgram w{number}"
            assert command_line(rows[number]) == f"midgram: worker {number} {where}"
        os.kill(rows[2], signal.SIGKILL)  # a restarted worker is named as the one it replaces

        # the first `ps` may be read by the dying worker: asked again until one is answered
        def restarted() -> bool:
            pids = running.worker_pids_if_answered()
            return pids is not None and len(pids) == 2 and rows[2] not in pids

        wait_until(restarted, what="worker 2's restart")
        await_name(ids(running)[2], "midgram w2")


def test_without_setproctitle_top_still_tells_them_apart(tmp_path: Path) -> None:
    """setproctitle is optional: without it the command line stays as started, and comm,
    set through prctl, still names each process."""
    (tmp_path / "setproctitle.py").write_text("raise ImportError('not installed')\n")
    path = f"{tmp_path}:{ROOT / 'tests'}"
    with midgram_server("--children", "1", env={"PYTHONPATH": path}) as running:
        rows = ids(running)
        await_name(rows[1], "midgram w1")
        assert [comm(rows[0]), comm(rows[1])] == ["midgram", "midgram w1"]
        assert command_line(rows[1]) == command_line(running.proc.pid)
        assert " -m midgram serve --socket " in command_line(rows[1])


# --- notifications ($NOTIFY_SOCKET) -----------------------------------------------------------

_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


class NotifySocket:
    """A socket in the place of systemd's notification socket, bound by the test: what the
    server sends there, and which process sent it (SCM_CREDENTIALS, as systemd checks)."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(address)
        self.env = address if isinstance(address, str) else "@" + address[1:].decode()

    def next(self, timeout: float = 10.0) -> tuple[list[str], int]:
        """The next notification's lines and its sender's pid, waiting at most ``timeout``."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        assert ready, f"no notification within {timeout} s"
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(_CREDENTIALS.size))
        pid = next(
            _CREDENTIALS.unpack(cdata[: _CREDENTIALS.size])[0]
            for level, kind, cdata in ancillary
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)
        )
        return data.decode().split("\n"), pid

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifySocket]:
    address: str | bytes = str(tmp_path / "notify")
    if request.param == "abstract":
        address = f"\0mgtest-notify-{uuid.uuid4().hex}".encode()
    notify = NotifySocket(address)
    yield notify
    notify.close()


def test_systemd_hears_ready_each_restart_and_stopping(notify_socket: NotifySocket) -> None:
    """Type=notify: systemd learns from the supervisor, and from it alone, that the server
    serves, that a worker was restarted, and that it stops."""
    env = {"NOTIFY_SOCKET": notify_socket.env}
    with midgram_server("--children", "2", *APP, env=env) as running:
        serving = f"listening on {running.target} (2 worker(s))"
        assert notify_socket.next() == (["READY=1", f"STATUS={serving}"], running.proc.pid)
        # workers never notify: the variable is not in their environment
        assert running.call("environ", ["NOTIFY_SOCKET"])["result"] == {"NOTIFY_SOCKET": None}
        os.kill(ids(running)[1], signal.SIGKILL)
        restarted = (["STATUS=" + serving + "; 1 restart(s)"], running.proc.pid)
        assert notify_socket.next() == restarted
        assert running.stop() == 0
    stopping = (["STOPPING=1", "STATUS=stopping (SIGTERM)"], running.proc.pid)
    assert notify_socket.next() == stopping


def test_an_in_process_server_notifies_too(notify_socket: NotifySocket) -> None:
    env = {"NOTIFY_SOCKET": notify_socket.env}
    with midgram_server("--children", "0", env=env) as running:
        ready = ["READY=1", f"STATUS=listening on {running.target} (in-process)"]
        assert notify_socket.next() == (ready, running.proc.pid)
        assert running.call("kill")["result"] == "OK"
        assert notify_socket.next() == (["STOPPING=1", "STATUS=stopping"], running.proc.pid)
        assert running.proc.wait(15) == 0


@pytest.mark.parametrize(("children", "processes"), [("0", "in-process"), ("2", "2 worker(s)")])
def test_on_the_journal_and_to_systemd_port_0_is_the_port_it_took(
    notify_socket: NotifySocket, children: str, processes: str
) -> None:
    """docs/compatibility.md, difference 29: on the journal, where no banner is written,
    the log line names the port (``midgram_server`` read it there); systemd's status too."""
    pipe, stream = journal_pipe()
    env = {"NOTIFY_SOCKET": notify_socket.env, "JOURNAL_STREAM": stream}
    with midgram_server(
        "--children", children, socket=ANY_UDP, stderr_pipe=pipe, env=env
    ) as running:
        assert "call it:" not in running.log()
        assert running.call("uptime")["result"]
        ready = ["READY=1", f"STATUS=listening on {running.target} ({processes})"]
        assert notify_socket.next() == (ready, running.proc.pid)


@pytest.mark.parametrize(
    ("named", "said"),
    [
        ("vsock:2:1234", "NOTIFY_SOCKET=vsock:2:1234 is not a socket path or an @abstract name"),
        ("/nonexistent/notify", "cannot notify systemd at /nonexistent/notify: No such file"),
    ],
)
def test_a_notification_socket_that_cannot_be_used_is_said_and_serving_goes_on(
    named: str, said: str
) -> None:
    with midgram_server("--children", "1", env={"NOTIFY_SOCKET": named}) as running:
        assert running.call("uptime")["result"]
        running.wait_for_log(said)


# --- the watchdog ($WATCHDOG_USEC) -------------------------------------------------------------

WATCHDOG = ["WATCHDOG=1"]


def drain(notify: NotifySocket) -> list[list[str]]:
    """What is still waiting on the notification socket."""
    found = []
    while select.select([notify.sock], [], [], 0)[0]:
        found.append(notify.next(0)[0])
    return found


def test_the_supervisor_pings_the_watchdog_while_its_workers_live(
    notify_socket: NotifySocket,
) -> None:
    """WatchdogSec= (0.4 s here): WATCHDOG=1 every half of it, from the supervisor, through a
    worker's restart, and none once the stop has begun."""
    env = {"NOTIFY_SOCKET": notify_socket.env, "WATCHDOG_USEC": "400000"}
    with midgram_server("--children", "2", *APP, env=env) as running:
        supervisor = running.proc.pid
        assert notify_socket.next()[0][0] == "READY=1"
        assert [notify_socket.next() for _ in range(3)] == [(WATCHDOG, supervisor)] * 3
        assert running.call("environ", ["WATCHDOG_USEC"])["result"] == {"WATCHDOG_USEC": None}
        os.kill(ids(running)[1], signal.SIGKILL)
        while (message := notify_socket.next())[0] == WATCHDOG:
            pass
        assert message[0][0].endswith("; 1 restart(s)")
        assert [notify_socket.next() for _ in range(2)] == [(WATCHDOG, supervisor)] * 2
        assert running.stop() == 0
    after = drain(notify_socket)
    assert after[-1] == ["STOPPING=1", "STATUS=stopping (SIGTERM)"]
    assert set(map(tuple, after[:-1])) <= {tuple(WATCHDOG)}


def test_an_in_process_server_pings_the_watchdog_from_its_loop(
    notify_socket: NotifySocket,
) -> None:
    env = {"NOTIFY_SOCKET": notify_socket.env, "WATCHDOG_USEC": "400000"}
    with midgram_server("--children", "0", env=env) as running:
        assert notify_socket.next()[0][0] == "READY=1"
        assert [notify_socket.next() for _ in range(3)] == [(WATCHDOG, running.proc.pid)] * 3


@pytest.mark.parametrize(
    ("variables", "said"),
    [
        ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"}, None),  # another process's
        ({"WATCHDOG_USEC": "soon"}, "WATCHDOG_USEC=soon is not a number of microseconds"),
    ],
)
def test_a_watchdog_that_is_not_ours_is_not_pinged(
    notify_socket: NotifySocket, variables: dict[str, str], said: str | None
) -> None:
    env = {"NOTIFY_SOCKET": notify_socket.env, **variables}
    with midgram_server("--children", "1", env=env) as running:
        assert notify_socket.next()[0][0] == "READY=1"
        assert running.call("uptime")["result"]
    assert drain(notify_socket) == [["STOPPING=1", "STATUS=stopping (SIGTERM)"]]
    if said is not None:
        assert said in running.log()


# --- the unit file in docs/operations.md ------------------------------------------------------


def unit_in_the_docs() -> str:
    """The ``ini`` block of the "As a service" section."""
    section = (ROOT / "docs" / "operations.md").read_text().split("\n## As a service\n")[1]
    return section.split("```ini\n", 1)[1].split("```", 1)[0]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_the_unit_in_the_docs_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd's own check of every directive (and of the program ExecStart names: this
    install's midgram in the place of /usr/local/bin/midgram)."""
    unit = unit_in_the_docs()
    assert "\nType=notify\n" in unit
    program = Path(sys.executable).with_name("midgram")
    path = tmp_path / "midgram.server.service"
    path.write_text(unit.replace("ExecStart=/usr/local/bin/midgram ", f"ExecStart={program} "))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
