"""The files ``midgram serve`` writes beside its socket: the pid file and the log file.

Both are opened before anything forks, so that a path that cannot be used stops the start
with one line naming it (a ``ConfigError`` for ``--pid-file`` or ``--log-file``) and leaves
nothing running.
"""

from __future__ import annotations

import io
import logging
import os
from typing import Final

from midgram.errors import ConfigError

__all__ = ["LogFileHandler", "PidFile"]

PID_FLAG: Final = "--pid-file"
LOG_FLAG: Final = "--log-file"
_FILE_MODE: Final = 0o644


def _open(path: str, flag: str, flags: int) -> tuple[int, bool]:
    """A descriptor of ``path`` opened for writing, and whether this call created the file."""
    try:
        try:
            return os.open(path, flags | os.O_CREAT | os.O_EXCL, _FILE_MODE), True
        except FileExistsError:
            return os.open(path, flags), False
    except OSError as exc:
        raise ConfigError(flag, path, f"cannot open it: {exc.strerror or exc}") from exc


class PidFile:
    """``--pid-file``: opened at start, written once serving, removed at exit.

    Removed only if this server created or wrote it: a start that fails (the socket is in
    use) leaves another server's pid file alone.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd, self._ours = _open(path, PID_FLAG, os.O_WRONLY | os.O_CLOEXEC)

    def write(self, pid: int) -> None:
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{pid}\n".encode(), 0)
        except OSError as exc:
            raise ConfigError(PID_FLAG, self.path, f"cannot write it: {exc.strerror}") from exc
        self._ours = True

    def close(self) -> None:
        """Remove the file if it is ours and still there under its name; never raises."""
        if self._fd < 0:
            return
        try:
            if self._ours and _same_file(self.path, os.fstat(self._fd)):
                os.unlink(self.path)
        except OSError as exc:
            logging.getLogger(__name__).warning("cannot remove %s: %s", self.path, exc.strerror)
        finally:
            os.close(self._fd)
            self._fd = -1


def _same_file(path: str, info: os.stat_result) -> bool:
    try:
        current = os.lstat(path)
    except FileNotFoundError:
        return False
    return (current.st_dev, current.st_ino) == (info.st_dev, info.st_ino)


class LogFileHandler(logging.FileHandler):
    """``--log-file``: a FileHandler whose file is opened by :func:`_open`, at start and each
    time SIGHUP re-opens it (``runtime.reopen_log_files``)."""

    def __init__(self, path: str) -> None:
        super().__init__(path, mode="a", encoding="utf-8")

    def _open(self) -> io.TextIOWrapper:
        fd, _ = _open(self.baseFilename, LOG_FLAG, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)
