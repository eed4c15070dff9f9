"""Shell completion for real: an interactive bash (and zsh, when installed) on a
pseudo-terminal loads ``midgram completion``'s script and completes a line at TAB, with the
shell's own completion machinery (issue 10 item 12)."""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import ServerProcess, short_tmpdir

BIN = Path(sys.executable).parent
DEADLINE = 20.0
SHELLS = {
    "bash": ["bash", "--norc", "--noprofile", "-i"],
    "zsh": ["zsh", "-f", "-i"],  # -f: no .zshrc, so no compinit either
}


def _shell(name: str) -> object:
    reason = f"{name} is not installed (apt-get install {name})"
    return pytest.param(name, marks=pytest.mark.skipif(not shutil.which(name), reason=reason))


class Terminal:
    """An interactive shell on a pseudo-terminal: type into it, wait for what it shows."""

    def __init__(self, shell: str, home: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MIDGRAM_", "_MIDGRAM_"))}
        env.update(
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            HOME=str(home),
            XDG_CACHE_HOME=str(home / "cache"),
            PS1="$ ",
            TERM="dumb",
        )
        env.pop("PYTHONPATH", None)
        self.fd, child = pty.openpty()
        self.proc = subprocess.Popen(
            SHELLS[shell], stdin=child, stdout=child, stderr=child, env=env, start_new_session=True
        )
        os.close(child)
        self.screen = b""

    def type(self, text: str) -> int:
        """Type ``text``; returns where what it shows from now on starts."""
        mark = len(self.screen)
        os.write(self.fd, text.encode())
        return mark

    def wait_for(self, text: str, since: int) -> str:
        """What the terminal showed since ``since``, once it shows ``text`` (a regex)."""
        deadline = time.monotonic() + DEADLINE
        while not re.search(text.encode(), self.screen[since:]):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.fd], [], [], max(left, 0))
            if not ready:
                shown = self.screen[since:].decode(errors="replace")
                raise AssertionError(f"{text!r} not shown within {DEADLINE} s:\n{shown}")
            try:
                self.screen += os.read(self.fd, 4096)
            except OSError:  # EIO: the shell ended
                raise AssertionError(self.screen.decode(errors="replace")) from None
        return self.screen[since:].decode(errors="replace")

    def run(self, command: str) -> str:
        """Run ``command``: what it printed, ending with ``DONE-<its status>-``."""
        since = self.type(f"{command}; printf 'DONE-%s-\\n' $?\n")
        return self.wait_for(r"DONE-\d+-", since)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        os.close(self.fd)


@contextlib.contextmanager
def terminal(shell: str) -> Iterator[Terminal]:
    home = Path(short_tmpdir())
    term = Terminal(shell, home)
    try:
        loaded = term.run(f'eval "$(midgram completion {shell})"')
        assert "DONE-0-" in loaded, loaded
        assert "not found" not in loaded, loaded
        yield term
    finally:
        term.close()
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize("shell", [_shell("bash"), _shell("zsh")])
def test_completion_after_a_udp_target(shell: str, midgram_udp: ServerProcess) -> None:
    with terminal(shell) as term:
        since = term.type(f"midgram call -t {midgram_udp.target} upt\t")
        term.wait_for("uptime ", since)
        term.type("\x15")  # Ctrl-U: a fresh line
        since = term.type(f"midgram which --target={midgram_udp.target} log_lev\t")
        term.wait_for("log_level ", since)


@pytest.mark.parametrize("shell", [_shell("bash"), _shell("zsh")])
def test_completion_of_parameter_names(shell: str, midgram_udp: ServerProcess) -> None:
    with terminal(shell) as term:
        since = term.type(f"midgram call -t {midgram_udp.target} log_level level:=3 pi\t")
        term.wait_for("pid=", since)


def test_the_zsh_script_loads_without_compinit() -> None:
    if not shutil.which("zsh"):
        pytest.skip("zsh is not installed (apt-get install zsh)")
    with terminal("zsh") as term:  # `terminal` checks the eval itself
        assert "DONE-0-" in term.run("(( $+functions[compdef] ))")
