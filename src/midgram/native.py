"""The C code midgram compiles on first use: its load generator and its batch I/O module.

Both ship as C source inside the package and are compiled with the system C compiler
(``$CC``, else ``cc``) into the per-user cache (``$XDG_CACHE_HOME/midgram``, else
``~/.cache/midgram``), under a name that hashes the source, the compiler's command line and
the flags (for a module, also the Python it is for): an upgrade of midgram, another ``$CC``
or another Python builds anew, and two installed versions never use each other's files.
A file is built under a temporary name and renamed, so processes building at the same time
never see half of one.

There is no build step at install time: a machine without a compiler installs and runs
midgram all the same, serving with the socket module (see ``midgram.batchio``).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import shlex
import shutil
import subprocess
import sysconfig
from collections.abc import Sequence
from contextlib import AbstractContextManager
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Final

from midgram.errors import BuildError

__all__ = [
    "CFLAGS",
    "cache_dir",
    "compile_c",
    "compiler",
    "load_extension",
    "packaged_source",
]

log = logging.getLogger(__name__)

CFLAGS: Final = ("-O2", "-Wall", "-Wextra")
#: What a CPython extension module needs beyond CFLAGS.
_MODULE_FLAGS: Final = ("-shared", "-fPIC")
_NO_COMPILER: Final = "{purpose} needs a C compiler ({cc}): apt-get install gcc"
_NO_HEADERS: Final = "{purpose} needs Python's C headers ({header}): apt-get install python3-dev"


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/midgram``, else ``~/.cache/midgram``."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec says a relative path there is invalid and must be ignored.
    root = Path(base) if os.path.isabs(base) else Path.home() / ".cache"
    return root / "midgram"


def compiler(purpose: str = "midgram") -> list[str]:
    """The C compiler's command line: ``$CC`` (it may hold arguments), else ``cc``.

    ``BuildError`` naming ``purpose`` when there is none."""
    words = shlex.split(os.environ.get("CC", "")) or ["cc"]
    path = shutil.which(words[0])
    if path is None:
        raise BuildError(_NO_COMPILER.format(purpose=purpose, cc=words[0]))
    return [path, *words[1:]]


def packaged_source(name: str) -> AbstractContextManager[Path]:
    """A C file shipped inside the package, as a path on disk while the context lasts."""
    return resources.as_file(resources.files("midgram") / name)


def compile_c(
    source: Path,
    out_dir: Path,
    *,
    flags: Sequence[str] = (),
    suffix: str = "",
    force: bool = False,
    purpose: str = "midgram",
) -> Path:
    """Compile the one-file C program (or module, with its ``flags``) ``source`` into
    ``out_dir``, unless it is already there; return the output's path.

    The output is named after the source's stem, a hash of source, compiler and flags, then
    ``suffix``. ``BuildError`` when there is no compiler or it fails.
    """
    cc = compiler(purpose)
    command = [*cc, *CFLAGS, *flags]
    try:
        code = source.read_bytes()
        out = out_dir / f"{source.stem}-{_digest(code, command)}{suffix}"
        if out.exists() and not force:
            return out
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BuildError(f"cannot build {source.name} into {out_dir}: {exc}") from exc
    _run_compiler(command, source, out)
    return out


def load_extension(name: str, *, directory: Path | None = None, force: bool = False) -> ModuleType:
    """Import the extension module ``midgram.<name>`` from ``<name>.c`` in the package,
    compiled first if this Python has no build of it in ``directory`` (the cache)."""
    purpose = f"midgram's {name} module"
    try:
        include = sysconfig.get_paths()["include"]
        directory = directory or cache_dir()
    except (ImportError, OSError, KeyError, RuntimeError) as exc:
        # An interpreter this process may no longer read, a user without a home...
        raise BuildError(f"cannot build {purpose} here: {exc}") from exc
    header = Path(include) / "Python.h"
    if not header.is_file():
        raise BuildError(_NO_HEADERS.format(purpose=purpose, header=header))
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]  # names the ABI
    with packaged_source(f"{name}.c") as source:
        path = compile_c(
            source,
            directory,
            flags=(*_MODULE_FLAGS, f"-I{include}"),
            suffix=suffix,
            force=force,
            purpose=purpose,
        )
    return _import(f"midgram.{name}", path)


def _import(qualified: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(qualified, path)
    if spec is None or spec.loader is None:  # pragma: no cover - an extension suffix always has one
        raise BuildError(f"cannot load {path}: not an extension module")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as exc:
        raise BuildError(f"cannot load {path}: {exc}") from exc
    return module


def _digest(code: bytes, command: Sequence[str]) -> str:
    digest = hashlib.sha256(code)
    for word in command:
        digest.update(b"\0" + word.encode())
    return digest.hexdigest()[:16]


def _run_compiler(command: Sequence[str], source: Path, out: Path) -> None:
    # Built under a temporary name, then renamed: a concurrent run never uses half a file.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        proc = subprocess.run(
            [*command, "-o", str(tmp), str(source)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise BuildError(f"{command[0]} failed on {source.name}:\n{proc.stderr.strip()}")
        if proc.stderr.strip():
            log.warning("%s warned on %s:\n%s", command[0], source.name, proc.stderr.strip())
        tmp.replace(out)
    except OSError as exc:
        raise BuildError(f"cannot build {out}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
