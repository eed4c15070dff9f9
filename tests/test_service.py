"""``midgram serve`` under a service manager, with the real things systemd gives a service:
the journal's stream (``$JOURNAL_STREAM``), a notification socket (``$NOTIFY_SOCKET``) bound
by the test, and the process titles ``ps`` and ``top`` read from /proc."""

from __future__ import annotations

import os
import re

from servers import midgram_server

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
