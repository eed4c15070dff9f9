"""The supervisor on its own: generic workers (plain functions) in real forked processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from servers import ROOT, wait_until

from midgram.server.supervisor import WorkerSignals


def run_script(body: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a supervisor in a fresh interpreter: it forks, and pytest's process must not."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(body)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def start_script(body: str) -> subprocess.Popen[str]:
    """Start a supervisor in its own process group, so `end_group` can reach its workers too."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(body)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )


def end_group(proc: subprocess.Popen[str]) -> None:
    """Kill a script and every worker it forked: a worker that outlives the script keeps its
    pipes open, and reading them to the end would then wait for ever."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)


def test_workers_that_die_at_boot_stop_the_server() -> None:
    done = run_script(
        """
        import logging, sys
        from midgram.server.supervisor import Supervisor
        logging.basicConfig(level=logging.INFO)
        spawned = []
        sup = Supervisor(2, lambda slot: 3, max_boot_failures=3,
                         on_spawn=lambda slot, pid: spawned.append(slot))
        status = sup.run()
        print(status, len(spawned))
        """
    )
    status, spawned = done.stdout.split()
    assert status == "1", done.stderr
    assert int(spawned) >= 3  # tried again, with back-off, before giving up
    assert "died at start-up 3 times in a row" in done.stderr
    assert "exited with status 3" in done.stderr


def test_sigterm_stops_every_worker_and_sigkill_ends_stragglers(tmp_path: Path) -> None:
    marker = tmp_path / "ready"
    script = f"""
        import os, signal, time, logging
        from pathlib import Path
        from midgram.server.supervisor import Supervisor
        logging.basicConfig(level=logging.INFO)

        def stubborn(slot):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)   # ignores the graceful stop
            # written aside and renamed, so the test never reads a half-written pid
            part = Path({str(marker)!r} + str(slot) + ".part")
            part.write_text(str(os.getpid()))
            part.rename({str(marker)!r} + str(slot))
            while True:
                time.sleep(1)

        print(Supervisor(2, stubborn, stop_timeout=0.5).run())
        """
    proc = start_script(script)
    try:
        wait_until(
            lambda: all((tmp_path / f"ready{slot}").exists() for slot in range(2)),
            what="both workers to start",
        )
        pids = [int((tmp_path / f"ready{slot}").read_text()) for slot in range(2)]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            end_group(proc)
    assert out.strip() == "0"
    assert "did not stop" in err
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or _is_zombie_or_gone(pid)


def _is_zombie_or_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return True
    return state == "Z"


def test_a_dead_worker_is_replaced_in_its_slot(tmp_path: Path) -> None:
    script = f"""
        import os, signal, time
        from pathlib import Path
        from midgram.server.supervisor import Supervisor

        def worker(slot):
            Path({str(tmp_path)!r}, f"{{slot}}-{{os.getpid()}}").touch()
            signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
            while True:
                time.sleep(1)

        print(Supervisor(1, worker).run())
        """
    proc = start_script(script)
    try:
        first = wait_until(lambda: list(tmp_path.iterdir()), what="the worker")[0].name
        os.kill(int(first.split("-")[1]), signal.SIGKILL)
        second = wait_until(
            lambda: [p.name for p in tmp_path.iterdir() if p.name != first],
            what="the replacement",
        )
        assert second[0].startswith("0-")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            end_group(proc)
    assert out.strip() == "0"
    assert "was killed by SIGKILL" in err


def test_a_failure_after_the_fork_stops_every_worker_first(tmp_path: Path) -> None:
    """on_started raising (a pid file that cannot be written): the exception comes out of
    run() only once no worker is left (they held the caller's stdout, and kept serving)."""
    script = f"""
        import os, signal, time
        from pathlib import Path
        from midgram.server.supervisor import Supervisor

        def worker(slot):
            Path({str(tmp_path)!r}, str(os.getpid())).touch()
            signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
            while True:
                time.sleep(1)

        def started():
            while len(list(Path({str(tmp_path)!r}).iterdir())) < 2:
                time.sleep(0.01)
            raise OSError("cannot write the pid file")

        try:
            Supervisor(2, worker, on_started=started).run()
        except OSError as exc:
            print(exc)
        """
    proc = start_script(script)
    try:
        out, err = proc.communicate(timeout=30)  # returns once nobody holds the pipes
    except subprocess.TimeoutExpired:
        end_group(proc)
        raise
    assert out.strip() == "cannot write the pid file", err
    pids = [int(path.name) for path in tmp_path.iterdir()]
    assert len(pids) == 2
    assert all(_is_zombie_or_gone(pid) for pid in pids)


def test_a_worker_never_signals_a_process_that_is_not_its_live_supervisor() -> None:
    """The supervisor died and an unrelated process took its pid: the `kill` command must
    not signal it (it crashed the worker with ProcessLookupError, or would have signalled
    that process), and stops the worker itself instead. The stand-in blocks SIGTERM, so a
    signal sent to it stays pending where the test can see it."""
    done = run_script(
        """
        import signal, subprocess, sys
        from pathlib import Path
        from midgram.server.supervisor import WorkerSignals

        blocker = (
            "import signal, sys; signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM}); "
            "print('ready', flush=True); sys.stdin.read()"
        )
        other = subprocess.Popen(
            [sys.executable, "-c", blocker], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        other.stdout.readline()
        worker = WorkerSignals(supervisor=other.pid)
        worker.stop_server()
        status = Path(f"/proc/{other.pid}/status").read_text().splitlines()
        pending = dict(line.split(":\\t") for line in status)["ShdPnd"]
        other.stdin.close()
        other.wait()
        print(worker.stop, int(pending, 16) & (1 << (signal.SIGTERM - 1)))
        """
    )
    assert done.stdout.split() == ["True", "0"], done.stderr


def test_asking_whether_to_stop_does_not_reopen_the_log_files() -> None:
    """SIGHUP is recorded; the loop re-opens the files as a chore of its own, not as a side
    effect of asking whether to stop."""
    signals = WorkerSignals()
    signals.reopen_logs = True  # what the SIGHUP handler records
    assert not signals.should_stop()
    assert signals.reopen_logs
    signals.reopen_logs_if_asked()
    assert not signals.reopen_logs


def test_a_worker_whose_supervisor_is_gone_stops_on_its_next_wake_up() -> None:
    """Where prctl(PR_SET_PDEATHSIG) is missing, the loop's own check ends an orphan."""
    assert not WorkerSignals(supervisor=os.getppid()).should_stop()
    assert WorkerSignals(supervisor=os.getpid()).should_stop()  # not its parent
    assert not WorkerSignals().should_stop()  # no supervisor: the worker is the server


def test_the_heartbeat_beats_only_while_every_worker_is_alive() -> None:
    """The watchdog's ping says the server serves: not while a worker waits to be started
    again (here worker 2 dies at start-up until the server gives up)."""
    done = run_script(
        """
        import signal, time
        from midgram.server.supervisor import Supervisor

        def worker(slot):
            if slot == 1:
                return 3
            signal.signal(signal.SIGTERM, lambda *a: exit(0))
            while True:
                time.sleep(1)

        alive = []
        sup = Supervisor(2, worker, max_boot_failures=3)
        sup.heartbeat = lambda: (alive.append(len(sup.pids())), 0.01)[1]
        print(sup.run(), sorted(set(alive)), len(alive))
        """
    )
    status, rest = done.stdout.split(maxsplit=1)
    alive, beats = rest.rsplit(maxsplit=1)
    assert (status, alive) == ("1", "[2]"), done.stderr  # never with worker 2 missing
    assert int(beats) >= 1
