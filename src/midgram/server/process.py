"""How ``ps`` and ``top`` name midgram's processes, through the kernel's calls for it.

Linux keeps two names of a process:

- its ``comm``: 15 bytes, shown by ``top``, ``ps -o comm``, ``pgrep`` and ``pidof``; set with
  ``prctl(PR_SET_NAME)``, a libc call reached through ctypes (no C module needed);
- its command line: ``ps``'s ``args``, ``/proc/PID/cmdline``, which is the memory ``argv``
  was passed in. Rewriting it takes moving the environment out of the way, which the
  ``setproctitle`` package does well (PostgreSQL's code, kept for years); it is optional
  (``pip install midgram[proctitle]``): without it only ``comm`` changes, and the command
  line stays the one midgram was started with.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable
from typing import Final

from midgram.logs import printable

_set_command_line: Callable[[str], None] | None
try:
    from setproctitle import setproctitle as _set_command_line
except ImportError:  # optional: comm alone tells the processes apart
    _set_command_line = None

__all__ = ["COMM_MAX", "PR_SET_NAME", "name_attendant", "name_process", "name_worker", "prctl"]

#: prctl(2) option: set the calling thread's name, its comm (linux/prctl.h).
PR_SET_NAME: Final = 15
#: TASK_COMM_LEN less its terminating NUL: what the kernel keeps of a comm.
COMM_MAX: Final = 15


@functools.cache
def prctl() -> Callable[..., int] | None:
    """libc's prctl(), or None off Linux."""
    try:
        call: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return call


def name_process(title: str, comm: str) -> None:
    """``title`` as this process's command line (with setproctitle) and ``comm`` as its
    short name (cut to ``COMM_MAX`` bytes). Best effort: a system without either call
    keeps the names it has."""
    if _set_command_line is not None:
        _set_command_line(title)  # on Linux it also sets comm, to the title's start
    call = prctl()
    if call is not None:
        call(PR_SET_NAME, comm.encode()[:COMM_MAX], 0, 0, 0)


def name_attendant(where: str) -> None:
    """The supervisor of a server listening on ``where``: ``midgram: attendant WHERE``, comm
    ``midgram`` (``pgrep -x midgram`` finds it, as ``ps``'s ``attendant`` row)."""
    name_process(f"midgram: attendant {printable(where)}", "midgram")


def name_worker(number: int, where: str) -> None:
    """Worker ``number`` (its ID in ``ps``): ``midgram: worker N WHERE``, comm ``midgram wN``."""
    name_process(f"midgram: worker {number} {printable(where)}", f"midgram w{number}")
