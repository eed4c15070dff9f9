"""Hostile config files (issue 15, item 10): one line naming the file, in bounded time.

Each file once gave a traceback (a number beyond 4300 digits, TOML nested 2000 deep, a
cfg that is not UTF-8) or ran for minutes (a modparam module read as a backtracking regex,
a tokenizer quadratic on escaped quotes). Real ``midgram serve`` processes read them.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from servers import server_command

from midgram.config import parse_opensips_cfg

DIGITS = "1" * 5000
DEADLINE = 20.0  # each of these used to take minutes, or fail at once with a traceback


def refused(config: Path, folder: Path) -> str:
    """Start a server with ``config``: it must refuse it, with one line naming the file."""
    started = time.monotonic()
    done = subprocess.run(
        [*server_command("--config", str(config), "--socket", f"{folder}/mi.sock")],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert time.monotonic() - started < DEADLINE
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"midgram: {config}: "), done.stderr
    return last


MODPARAM = 'modparam("mi_datagram", "{name}", {value})\n'

FILES: dict[str, tuple[str, bytes, str]] = {
    "TOML: a 5000-digit number": ("x.toml", f"children_count = {DIGITS}\n".encode(), "TOML"),
    "TOML: a 5000-digit string": (
        "x.toml",
        f'children_count = "{DIGITS}"\n'.encode(),
        "a number of 5000 digits is too long",
    ),
    "TOML: nested 2000 deep": (
        "x.toml",
        b"allow_from = " + b"[" * 2000 + b"]" * 2000 + b"\n",
        "nested too deeply",
    ),
    "TOML: not UTF-8": ("x.toml", b'socket_name = "/tmp/\xff"\n', "not UTF-8"),
    "cfg: a 5000-digit number": (
        "x.cfg",
        MODPARAM.format(name="children_count", value=DIGITS).encode(),
        "children_count",
    ),
    "cfg: not UTF-8": (
        "x.cfg",
        b"# configuraci\xf3n\n" + MODPARAM.format(name="children_count", value='"x\xff"').encode(),
        "children_count",
    ),
    "cfg: a backtracking module pattern": (
        "x.cfg",
        b'modparam("((((.*)*)*)*)x", "socket_name", "/x")\n'
        + MODPARAM.format(name="children_count", value='"many"').encode(),
        "children_count",
    ),
    "cfg: 100k escaped quotes": (
        "x.cfg",
        MODPARAM.format(name="children_count", value='"many"').encode() + b'"' + b'\\"' * 100_000,
        "children_count",
    ),
}


@pytest.mark.parametrize("name", FILES)
def test_a_hostile_file_is_one_line_naming_it(name: str, folder: Path) -> None:
    filename, content, expected = FILES[name]
    config = folder / filename
    config.write_bytes(content)
    line = refused(config, folder)
    assert expected in line


def test_a_latin1_comment_does_not_hide_the_modparams() -> None:
    text = b"# configuraci\xf3n\n" + MODPARAM.format(name="children_count", value=3).encode()
    cfg = parse_opensips_cfg(text.decode(errors="surrogateescape"))
    assert cfg.params == {"children_count": 3}


def test_a_module_pattern_beyond_names_is_skipped_with_a_warning() -> None:
    cfg = parse_opensips_cfg('modparam("((((.*)*)*)*)x", "socket_name", "/x")')
    assert cfg.params == {}
    assert "regular expression beyond names" in cfg.warnings()[0]
    for pattern in ("mi_datagram|mi_fifo", "(MI_FIFO|mi_datagram)", "mi_.*", "mi_d.tagram"):
        found = parse_opensips_cfg(f'modparam("{pattern}", "children_count", 2)')
        assert found.params == {"children_count": 2}, pattern
    assert parse_opensips_cfg('modparam("mi_fifo|proto_.*", "children_count", 2)').params == {}
