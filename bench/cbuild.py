"""Compile the benchmark's own one-file C programs (the echo reflector) with the system
compiler, for ``make bench`` on a developer's machine.

midgram itself compiles nothing when it runs: its C code is built when it is installed.
This is a developer tool: ``$CC`` (it may hold arguments), else ``cc``. The output is named
after the source's stem and a hash of the source and the compiler's command line, so an
edited source or another compiler builds anew; it is built under a temporary name and renamed,
so a concurrent run never uses half a file.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Final

__all__ = ["CFLAGS", "BuildError", "compile_c"]

CFLAGS: Final = ("-O2", "-Wall", "-Wextra")
#: A compile of one small file takes well under a second; this long means something hangs.
COMPILE_TIMEOUT: Final = 120.0


class BuildError(Exception):
    """The program cannot be built (no compiler, a compile error, an unwritable folder)."""


def compiler() -> list[str]:
    """``$CC`` split into words, else ``cc``, with its path resolved."""
    words = shlex.split(os.environ.get("CC", "")) or ["cc"]
    path = shutil.which(words[0])
    if path is None:
        raise BuildError(f"bench needs a C compiler ({words[0]}): apt-get install gcc")
    return [path, *words[1:]]


def compile_c(source: Path, out_dir: Path, *, force: bool = False) -> Path:
    """The executable built from ``source`` into ``out_dir`` (built only when it is not there
    yet, or with ``force``)."""
    command = [*compiler(), *CFLAGS]
    try:
        code = source.read_bytes()
        out = out_dir / f"{source.stem}-{_digest(code, command)}"
        if out.exists() and not force:
            return out
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BuildError(f"cannot build {source.name} into {out_dir}: {exc}") from exc
    _run(command, source, out)
    return out


def _digest(code: bytes, command: Sequence[str]) -> str:
    digest = hashlib.sha256(code)
    for word in command:
        digest.update(b"\0" + word.encode())
    return digest.hexdigest()[:16]


def _run(command: Sequence[str], source: Path, out: Path) -> None:
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        proc = subprocess.run(
            [*command, "-o", str(tmp), str(source)],
            capture_output=True,
            text=True,
            timeout=COMPILE_TIMEOUT,
            check=False,
        )
        if proc.returncode != 0 or proc.stderr.strip():
            # A warning fails the build too: the bench's C is kept warning-free.
            raise BuildError(f"{command[0]} on {source.name}:\n{proc.stderr.strip()}")
        tmp.replace(out)
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"{command[0]} on {source.name}: no result in {exc.timeout:g} s") from exc
    except OSError as exc:
        raise BuildError(f"cannot build {out}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
