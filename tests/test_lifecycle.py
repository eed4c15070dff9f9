"""How ``midgram serve`` starts and ends as a whole: real processes, real sockets.

- A start that fails leaves nothing running, and nothing of another server's changed, and
  says what failed in one line.
- Workers end with their supervisor, even one killed with SIGKILL, and never signal a
  process that is not their own live supervisor.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import pytest
from servers import ROOT, midgram_server, server_command, wait_until


def start_serve(*flags: str) -> subprocess.Popen[bytes]:
    """``midgram serve`` in a session of its own, so that the test can end whatever it left."""
    return subprocess.Popen(
        server_command(*flags),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        start_new_session=True,
    )


def end_session(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)


@pytest.mark.parametrize(
    ("flag", "path"), [("--pid-file", "/nonexistent/x.pid"), ("--log-file", "/nonexistent/x.log")]
)
def test_a_failed_start_leaves_nothing_running(folder: Path, flag: str, path: str) -> None:
    """`midgram serve --pid-file /nonexistent/x.pid | tail` hung: a worker kept the pipe.
    communicate() returns only once no process holds stdout and stderr any more."""
    proc = start_serve("--socket", f"{folder}/mi.sock", "--children", "2", flag, path)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        end_session(proc)
        raise
    assert proc.returncode == 2
    assert err.decode().splitlines() == [
        f"midgram: bad value for {flag}: {path!r}: cannot open it: No such file or directory"
    ]
    assert out == b""
    assert os.listdir(folder) == []  # no socket left behind either


def test_a_failed_start_leaves_the_running_servers_pid_file_alone(folder: Path) -> None:
    pid_file = Path(folder, "midgram.pid")
    with midgram_server("--pid-file", str(pid_file)) as running:
        second = start_serve("--socket", running.target, "--pid-file", str(pid_file))
        try:
            _, err = second.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            end_session(second)
            raise
        assert second.returncode == 4
        assert err.decode().splitlines() == [
            f"midgram: another server is listening on {running.target}"
        ]
        assert pid_file.read_text() == f"{running.proc.pid}\n"


@pytest.mark.parametrize("flag", ["--pid-file", "--log-file"])
def test_a_pid_or_log_file_that_is_a_symbolic_link_is_refused(folder: Path, flag: str) -> None:
    """Another user who can write the folder made the name a link to a root-only file: the
    server overwrote it (pid file) or appended to it (log file)."""
    secret = Path(folder, "secret")
    secret.write_text("root only\n")
    secret.chmod(0o600)
    name = Path(folder, "midgram.out")
    name.symlink_to(secret)
    proc = start_serve("--socket", f"{folder}/mi.sock", flag, str(name))
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        end_session(proc)
        raise
    assert proc.returncode == 2
    assert err.decode().splitlines() == [
        f"midgram: bad value for {flag}: {str(name)!r}: it is a symbolic link "
        "(refused: it could lead to any file)"
    ]
    assert secret.read_text() == "root only\n"


def ended(pid: int) -> bool:
    """Gone, or a zombie nobody reaped yet (an orphan's new parent may never reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except FileNotFoundError:
        return True


def test_workers_end_when_their_supervisor_is_killed() -> None:
    """After `kill -9` of the supervisor both workers kept serving (parent pid 1), `ps`
    listed the dead attendant, and a new server on the same socket was refused."""
    with midgram_server("--children", "2") as first:
        workers = first.worker_pids()
        assert len(workers) == 2
        first.proc.kill()
        first.proc.wait(30)
        try:
            wait_until(lambda: all(ended(pid) for pid in workers), what="the workers to end")
        finally:
            for pid in workers:  # they would hold the log pipe open for ever
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with midgram_server("--children", "1", socket=first.target) as second:
            processes = second.call("ps")["result"]["Processes"]
            assert processes[0] == {"ID": 0, "PID": second.proc.pid, "Type": "attendant"}


def test_a_worker_is_logged_by_its_id_in_ps_and_its_restart_is_a_warning() -> None:
    """The supervisor said `worker 0` of the worker `ps` lists as ID 1, and logged the
    restart at debug level only."""
    with midgram_server("--children", "2") as running:
        before = {p["ID"]: p["PID"] for p in running.call("ps")["result"]["Processes"]}
        os.kill(before[2], signal.SIGKILL)
        running.wait_for_log(f"worker 2 (pid {before[2]}) was killed by SIGKILL")

        def restarted() -> dict[int, int] | None:
            rows = running.worker_pids_if_answered()
            if rows is None or before[2] in rows or len(rows) != 2:
                return None
            return {p["ID"]: p["PID"] for p in running.call("ps")["result"]["Processes"]}

        after = wait_until(restarted, what="the new worker in ps")
        assert after[1] == before[1]
        running.wait_for_log(
            f"WARNING midgram.server.supervisor: worker 2 restarted (pid {after[2]})"
        )
