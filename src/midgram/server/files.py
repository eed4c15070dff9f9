"""The files ``midgram serve`` writes beside its socket: the pid file and the log file.

Both are opened before anything forks, so that a path that cannot be used stops the start
with one line naming it (a ``ConfigError`` for ``--pid-file`` or ``--log-file``) and leaves
nothing running.

A server often runs as root, and another user may be able to write the file's directory:
that user could make the name a symbolic link, or a hard link, to any file (a root-only
one), and the server would overwrite or append to it. So the name is opened once, without
following a symbolic link (``O_NOFOLLOW``), and refused unless it is a regular file with no
other name; everything after that goes through the descriptor, and the pid file is removed
only if its name still leads to the file this server wrote. (Directories above the file
are followed as they are: ``/var/run`` is often a link to ``/run``.)
"""

from __future__ import annotations

import errno
import io
import logging
import os
import stat
from typing import Final

from midgram.errors import ConfigError

__all__ = ["LogFileHandler", "PidFile"]

PID_FLAG: Final = "--pid-file"
LOG_FLAG: Final = "--log-file"
_FILE_MODE: Final = 0o644
_NOT_REGULAR: Final = "it is not a regular file"
_SYMLINK: Final = "it is a symbolic link (refused: it could lead to any file)"


def _open(path: str, flag: str, flags: int) -> tuple[int, bool]:
    """A descriptor of ``path`` opened for writing, and whether this call created the file.

    ``O_NONBLOCK``: a FIFO is refused instead of blocking the open (it changes nothing for a
    regular file).
    """
    flags |= os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        try:
            fd, created = os.open(path, flags | os.O_CREAT | os.O_EXCL, _FILE_MODE), True
        except FileExistsError:
            fd, created = os.open(path, flags), False
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(flag, path, _SYMLINK) from exc
        if exc.errno == errno.ENXIO:  # a FIFO with no reader, a socket, an absent device
            raise ConfigError(flag, path, _NOT_REGULAR) from exc
        raise ConfigError(flag, path, f"cannot open it: {exc.strerror or exc}") from exc
    try:
        _check(os.fstat(fd), path, flag)
    except BaseException:
        os.close(fd)
        raise
    return fd, created


def _check(info: os.stat_result, path: str, flag: str) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(flag, path, _NOT_REGULAR)
    if info.st_nlink != 1:
        raise ConfigError(
            flag,
            path,
            f"it has {info.st_nlink} hard links (refused: another of its names could be any file)",
        )


class PidFile:
    """``--pid-file``: opened at start, written once serving, removed at exit.

    Removed only if this server created or wrote it: a start that fails (the socket is in
    use) leaves another server's pid file alone.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd, self._ours = _open(path, PID_FLAG, os.O_WRONLY)

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
        fd, _ = _open(self.baseFilename, LOG_FLAG, os.O_WRONLY | os.O_APPEND)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)
