"""The pid file and the log file (files.py) on a real filesystem.

The attacks are those of a user who can write the directory of the file (a shared folder,
or a sticky /tmp on a host without ``fs.protected_symlinks``): the name is made a symbolic
link, or a hard link, to a root-only file before the server starts.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from midgram.errors import ConfigError
from midgram.server.files import LogFileHandler, PidFile


@pytest.fixture
def secret(folder: Path) -> Path:
    """A root-only file the server must never write."""
    path = folder / "secret"
    path.write_text("root only\n")
    path.chmod(0o600)
    return path


def open_pid_file(path: Path) -> None:
    PidFile(str(path)).write(4242)


def open_log_file(path: Path) -> None:
    handler = LogFileHandler(str(path))
    try:
        handler.emit(logging.makeLogRecord({"msg": "appended"}))
    finally:
        handler.close()


OPENERS = pytest.mark.parametrize(
    ("opener", "flag"),
    [(open_pid_file, "--pid-file"), (open_log_file, "--log-file")],
    ids=["pid", "log"],
)


def unchanged(path: Path) -> tuple[str, int, int]:
    info = path.stat()
    return path.read_text(), stat.S_IMODE(info.st_mode), info.st_nlink


@OPENERS
def test_a_symbolic_link_is_refused(
    folder: Path, secret: Path, opener: Callable[[Path], None], flag: str
) -> None:
    name = folder / "midgram.out"
    name.symlink_to(secret)
    with pytest.raises(ConfigError) as caught:
        opener(name)
    assert str(caught.value) == (
        f"bad value for {flag}: {str(name)!r}: it is a symbolic link "
        "(refused: it could lead to any file)"
    )
    assert unchanged(secret) == ("root only\n", 0o600, 1)


@OPENERS
def test_a_hard_link_is_refused(
    folder: Path, secret: Path, opener: Callable[[Path], None], flag: str
) -> None:
    name = folder / "midgram.out"
    name.hardlink_to(secret)
    with pytest.raises(ConfigError) as caught:
        opener(name)
    assert str(caught.value) == (
        f"bad value for {flag}: {str(name)!r}: it has 2 hard links "
        "(refused: another of its names could be any file)"
    )
    assert unchanged(secret) == ("root only\n", 0o600, 2)


@OPENERS
def test_anything_but_a_regular_file_is_refused(
    folder: Path, opener: Callable[[Path], None], flag: str
) -> None:
    name = folder / "fifo"
    os.mkfifo(name)  # opening it for writing would block for ever
    with pytest.raises(ConfigError) as caught:
        opener(name)
    assert str(caught.value) == f"bad value for {flag}: {str(name)!r}: it is not a regular file"


def test_the_pid_file_is_written_and_removed(folder: Path) -> None:
    path = folder / "midgram.pid"
    pid = PidFile(str(path))
    assert path.read_text() == ""
    pid.write(4242)
    assert path.read_text() == "4242\n"
    pid.write(42)
    assert path.read_text() == "42\n"
    pid.close()
    assert not path.exists()


def test_a_pid_file_it_did_not_write_is_left_alone(folder: Path) -> None:
    path = folder / "midgram.pid"
    path.write_text("1234\n")
    PidFile(str(path)).close()  # e.g. the socket was in use
    assert path.read_text() == "1234\n"


def test_a_pid_file_replaced_meanwhile_is_not_removed(folder: Path) -> None:
    path = folder / "midgram.pid"
    pid = PidFile(str(path))
    pid.write(4242)
    path.unlink()
    path.write_text("another\n")
    pid.close()
    assert path.read_text() == "another\n"


def test_the_log_file_is_appended_to_and_reopened(folder: Path) -> None:
    path = folder / "midgram.log"
    path.write_text("before\n")
    handler = LogFileHandler(str(path))
    handler.setFormatter(logging.Formatter("%(message)s"))
    try:
        handler.emit(logging.makeLogRecord({"msg": "one"}))
        path.rename(folder / "midgram.log.1")  # logrotate, then SIGHUP
        handler.close()
        handler.emit(logging.makeLogRecord({"msg": "two"}))
    finally:
        handler.close()
    assert (folder / "midgram.log.1").read_text() == "before\none\n"
    assert path.read_text() == "two\n"
