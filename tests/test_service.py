"""``midgram serve`` under a service manager, with the real things systemd gives a service:
the journal's stream (``$JOURNAL_STREAM``), a notification socket (``$NOTIFY_SOCKET``) bound
by the test, and the process titles ``ps`` and ``top`` read from /proc."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

from servers import ROOT, ServerProcess, midgram_server, wait_until

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
    assert listening == f"<6>[{running.proc.pid}] INFO midgram.server: listening on {where}"
    failed = lines.index(f"<3>[{pid}] ERROR midgram.commands: MI command fail failed")
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
        rf"\d{{4}}-\d\d-\d\d \S+ midgram\[{running.proc.pid}\] INFO midgram.server: listening on ",
        line,
    )


# --- process titles ---------------------------------------------------------------------------


def comm(pid: int) -> str:
    """What top, `ps -o comm` and pgrep show."""
    return Path(f"/proc/{pid}/comm").read_text().rstrip("\n")


def command_line(pid: int) -> str:
    """What `ps -o args` shows."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").replace(b"\0", b" ").decode()


def ids(running: ServerProcess) -> dict[int, int]:
    """`ps`'s rows: ID to PID."""
    return {p["ID"]: p["PID"] for p in running.call("ps")["result"]["Processes"]}


def test_ps_and_top_tell_the_attendant_from_each_worker() -> None:
    """Every process was `python3 -m midgram serve ...`, in top and in ps alike."""
    with midgram_server("--children", "2") as running:
        where = running.target
        rows = ids(running)
        assert comm(rows[0]) == "midgram"
        assert command_line(rows[0]) == f"midgram: attendant {where}"
        for number in (1, 2):
            assert comm(rows[number]) == f"midgram w{number}"
            assert command_line(rows[number]) == f"midgram: worker {number} {where}"
        os.kill(rows[2], signal.SIGKILL)  # a restarted worker is named as the one it replaces
        wait_until(lambda: (ids(running).get(2) or rows[2]) != rows[2], what="worker 2's restart")
        assert comm(ids(running)[2]) == "midgram w2"


def test_without_setproctitle_top_still_tells_them_apart(tmp_path: Path) -> None:
    """setproctitle is optional: without it the command line stays as started, and comm,
    set through prctl, still names each process."""
    (tmp_path / "setproctitle.py").write_text("raise ImportError('not installed')\n")
    path = f"{tmp_path}:{ROOT / 'tests'}"
    with midgram_server("--children", "1", env={"PYTHONPATH": path}) as running:
        rows = ids(running)
        assert [comm(rows[0]), comm(rows[1])] == ["midgram", "midgram w1"]
        assert command_line(rows[1]) == command_line(running.proc.pid)
        assert " -m midgram serve --socket " in command_line(rows[1])
