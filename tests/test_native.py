"""midgram's compiled modules: built when midgram is installed, imported from the package like
any module, and nothing compiled or loaded from anywhere else when it runs.

The hostile environment of a production host is played here: no compiler to be found, a
``CC`` that records any call, no home folder, an empty cache folder that must stay absent.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from servers import ROOT, midgram_server
from toolchain import needs_loadgen, needs_native

import midgram
from midgram.compiled import why_not_loaded

PACKAGE = Path(midgram.__file__).resolve().parent
SOURCES = ROOT / "src" / "midgram"
VERSION = f"midgram {midgram.__version__} (Python {platform.python_version()}; native I/O: "
#: The environment variables a test sets, over the caller's.
Env = dict[str, str]


def run_midgram(*args: str, env: Env | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m midgram ARGS`` with ``env`` over this process's environment (less its
    MIDGRAM_ variables)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("MIDGRAM_")}
    return subprocess.run(
        [sys.executable, "-m", "midgram", *args],
        env={**full, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def no_compiler(tmp_path: Path) -> Env:
    """A PATH where ``cc`` and ``gcc`` only record that they were called (and fail), the same
    as ``CC``; no home folder; a cache folder that does not exist."""
    tools = tmp_path / "bin"
    tools.mkdir()
    recorder = tools / "cc"
    recorder.write_text(f'#!/bin/sh\necho "$0 $*" >> {tmp_path / "compiler-called"}\nexit 1\n')
    recorder.chmod(0o755)
    (tools / "gcc").symlink_to(recorder)
    return {
        "PATH": str(tools),
        "CC": str(recorder),
        "HOME": "/nonexistent",
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "PYTHONPATH": str(ROOT / "tests"),
    }


def nothing_was_compiled_or_cached(tmp_path: Path) -> None:
    assert not (tmp_path / "compiler-called").exists()
    assert not (tmp_path / "cache").exists()


@needs_native
@needs_loadgen
def test_the_compiled_modules_are_part_of_the_package() -> None:
    for name in ("server._batchio", "client._loadgen"):
        module = importlib.import_module(f"midgram.{name}")
        assert module.__file__ is not None
        path = Path(module.__file__)
        assert path.parent == PACKAGE / name.split(".")[0], path
        assert path.name.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), path


@needs_native
def test_version_says_native_io_is_on_without_a_compiler(no_compiler: Env, tmp_path: Path) -> None:
    proc = run_midgram("--version", env=no_compiler)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, VERSION + "on)\n", "")
    nothing_was_compiled_or_cached(tmp_path)


def test_midgram_native_0_turns_it_off_and_says_so() -> None:
    proc = run_midgram("--version", env={"MIDGRAM_NATIVE": "0"})
    assert (proc.returncode, proc.stdout) == (0, VERSION + "off (MIDGRAM_NATIVE=0))\n")


@needs_native
@needs_loadgen
def test_serve_and_bench_run_native_without_a_compiler(no_compiler: Env, tmp_path: Path) -> None:
    with midgram_server("--children", "1", "--log-level", "info", env=no_compiler) as server:
        assert f"INFO midgram.server.wiring: {VERSION}on)" in server.log()
        assert server.call("uptime")["result"]["Up time"]
        call = run_midgram("call", "uptime", "-t", server.target, env=no_compiler)
        assert (call.returncode, call.stderr) == (0, "")
        bench = run_midgram(
            "bench",
            "-t",
            server.target,
            "--duration",
            "0.1",
            "--warmup",
            "0",
            "--runs",
            "1",
            env=no_compiler,
        )
        assert (bench.returncode, bench.stderr) == (0, ""), bench.stderr
        assert bench.stdout.startswith(f"uptime on {server.target}: 8 in flight, 1 run")
        # The worker serves with the module of the package, mapped from there.
        for pid in server.worker_pids():
            mapped = {
                line.split()[-1]
                for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
                if "_batchio" in line
            }
            assert mapped, f"worker {pid} has no _batchio mapped"
            assert {Path(path).parent for path in mapped} == {PACKAGE / "server"}, mapped
    nothing_was_compiled_or_cached(tmp_path)


def install_without_compiled_modules(folder: Path) -> Path:
    """A copy of the package as an install that could not build its C modules has it (the
    Python alone); the folder to put first on PYTHONPATH."""
    shutil.copytree(
        PACKAGE, folder / "midgram", ignore=shutil.ignore_patterns("*.so", "__pycache__")
    )
    return folder


def test_a_module_not_built_at_install_is_said_plainly(tmp_path: Path) -> None:
    where = install_without_compiled_modules(tmp_path)
    proc = run_midgram("--version", env={"PYTHONPATH": str(where)})
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == (
        f"{VERSION}off (midgram.server._batchio was not built when midgram was installed: "
        "reinstall midgram with a C compiler and Python's headers present, e.g. apt-get install "
        "gcc python3-dev))\n"
    )


def test_a_damaged_module_is_said_plainly_not_a_crash(tmp_path: Path) -> None:
    where = install_without_compiled_modules(tmp_path)
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    damaged = where / "midgram" / "server" / f"_batchio{suffix}"
    damaged.write_bytes(b"\x7fELF" + b"\0" * 12)  # truncated
    proc = run_midgram("--version", env={"PYTHONPATH": str(where)})
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.startswith(f"{VERSION}off (midgram.server._batchio cannot be loaded: ")
    assert str(where / "midgram" / "server") in proc.stdout


def test_without_the_module_the_server_warns_and_still_serves(tmp_path: Path) -> None:
    where = install_without_compiled_modules(tmp_path)
    with midgram_server("--children", "1", env={"PYTHONPATH": str(where)}) as server:
        assert (
            f"WARNING midgram.server.wiring: {VERSION}off (midgram.server._batchio was not built"
            in (server.log())
        )
        assert server.call("uptime")["result"]["Up time"]


def test_without_the_generator_bench_says_why(tmp_path: Path) -> None:
    where = install_without_compiled_modules(tmp_path)
    with midgram_server("--children", "1") as server:
        proc = run_midgram("bench", "-t", server.target, env={"PYTHONPATH": str(where)})
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == (
        "midgram: midgram.client._loadgen was not built when midgram was installed: reinstall "
        "midgram with a C compiler and Python's headers present, e.g. apt-get install gcc "
        "python3-dev\n"
    )


def test_why_not_loaded_tells_a_missing_module_from_a_broken_one() -> None:
    failure = ImportError("cannot import name '_nothing' from 'midgram'")
    assert "was not built when midgram was installed" in why_not_loaded("midgram._nothing", failure)
    damaged = ImportError("invalid ELF header")
    assert why_not_loaded("midgram.compiled", damaged) == (
        "midgram.compiled cannot be loaded: invalid ELF header"
    )


@needs_loadgen
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-h"], "loadgen: usage: loadgen -t TARGET"),
        (["-t", "@nowhere", "-r", "{}"], "loadgen: the request template has no %ID%"),
        (["-t", "@nowhere", "-c", "0"], "loadgen: in-flight count must be 1..4096"),
        (["-t", "@nowhere", "extra"], "loadgen: usage:"),
    ],
)
def test_the_generators_process_says_what_is_wrong(args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "midgram.cli.loadgen", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr.startswith(message), proc.stderr


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc").split()[0])


@pytest.mark.skipif(_compiler() is None, reason="no C compiler here to check the sources with")
@pytest.mark.parametrize("source", ["server/_batchio.c", "client/_loadgen.c", "client/loadgen.c"])
def test_the_c_sources_compile_without_warnings(source: str, tmp_path: Path) -> None:
    # setup.py builds them at install time, where pip keeps the compiler's warnings to itself.
    include = sysconfig.get_paths()["include"]
    proc = subprocess.run(
        [
            str(_compiler()),
            "-c",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-fPIC",
            f"-I{include}",
            "-o",
            str(tmp_path / "out.o"),
            str(SOURCES / source),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (proc.returncode, proc.stderr) == (0, "")
