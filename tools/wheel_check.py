"""``make wheel-check``: the wheel a release would ship, checked as a user would meet it.

1. ``python -m build`` makes the sdist, then the wheel from the unpacked sdist (so the sdist
   must carry everything the build needs); both are read: the wheel is platform-tagged, has
   the compiled modules under ``midgram/server/`` and ``midgram/client/``, the stubs, the
   LICENSE in its dist-info and no C source; the sdist has the C sources, setup.py, the
   LICENSE and the tests with their golden replies.
2. The wheel is installed into a fresh venv, and run where no compiler can be found (PATH of
   the venv alone, ``CC=/bin/false``, ``HOME=/nonexistent``): ``midgram --version`` must say
   native I/O is on; ``midgram serve`` on a socket in a temporary folder, awaited on its
   "listening" line with a deadline, must answer ``midgram call uptime``, and ``midgram
   bench`` must run against it.

The pip runs inherit the Makefile's PIP_CONSTRAINT / PIP_BUILD_CONSTRAINT: pinned versions.
Exit status 0 when all holds; otherwise the first failure, on stderr, and 1.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Seconds the server gets to say it listens; each command gets its own STEP_TIMEOUT.
READY_TIMEOUT = 30.0
STEP_TIMEOUT = 300.0
VERSION_LINE = re.compile(r"midgram \S+ \(Python \S+; native I/O: on\)")


class CheckFailed(Exception):
    """What did not hold, in one line (and the output that shows it)."""


def run(argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    """Run a step; its stdout. CheckFailed with its output when it fails."""
    proc = subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=STEP_TIMEOUT, check=False
    )
    if proc.returncode != 0:
        raise CheckFailed(
            f"{' '.join(argv)}: exit status {proc.returncode}\n{proc.stdout}{proc.stderr}"
        )
    return proc.stdout


def build(out: Path) -> tuple[Path, Path]:
    """The sdist and the wheel built from it."""
    run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)])
    sdists, wheels = sorted(out.glob("*.tar.gz")), sorted(out.glob("*.whl"))
    if len(sdists) != 1 or len(wheels) != 1:
        raise CheckFailed(f"expected one sdist and one wheel in {out}: {sorted(out.iterdir())}")
    return sdists[0], wheels[0]


def check_wheel(wheel: Path) -> None:
    if wheel.name.endswith("-none-any.whl") or "-linux" not in wheel.name:
        raise CheckFailed(f"{wheel.name}: not a Linux platform wheel")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        licenses = [
            n for n in names if re.fullmatch(r"midgram-[^/]+\.dist-info/licenses/LICENSE", n)
        ]
        if not licenses or archive.read(licenses[0]) != (ROOT / "LICENSE").read_bytes():
            raise CheckFailed(f"{wheel.name}: no LICENSE (the GPL-2.0 text) in its dist-info")
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA")))
    for module in ("server/_batchio", "client/_loadgen"):
        if not any(re.fullmatch(rf"midgram/{module}\.cpython-[^/]+\.so", n) for n in names):
            raise CheckFailed(f"{wheel.name}: no compiled midgram/{module} module")
        if f"midgram/{module}.pyi" not in names:
            raise CheckFailed(f"{wheel.name}: no midgram/{module}.pyi stub")
    sources = [n for n in names if n.endswith((".c", ".h"))]
    if sources:
        raise CheckFailed(f"{wheel.name}: ships C sources {sources}")
    text = metadata.decode()
    for line in (
        "License-Expression: GPL-2.0-or-later",
        "Classifier: Operating System :: POSIX :: Linux",
        "Classifier: Topic :: Communications :: Telephony",
    ):
        if line not in text.splitlines():
            raise CheckFailed(f"{wheel.name}: METADATA lacks {line!r}")


def check_sdist(sdist: Path) -> None:
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    wanted = {
        "LICENSE",
        "setup.py",
        "src/midgram/server/_batchio.c",
        "src/midgram/client/_loadgen.c",
        "src/midgram/client/loadgen.c",
        "src/midgram/client/loadgen.h",
        "tests/conftest.py",
        "tests/golden/README.md",
    }
    if missing := wanted - names:
        raise CheckFailed(f"{sdist.name}: lacks {sorted(missing)}")
    if not any(n.startswith("tests/golden/") and n.endswith(".req") for n in names):
        raise CheckFailed(f"{sdist.name}: no golden replies under tests/golden/")
    if stray := [n for n in names if n.endswith(".so") or "/__pycache__/" in n]:
        raise CheckFailed(f"{sdist.name}: carries build output {stray[:5]}")


def install(wheel: Path, venv: Path) -> None:
    run([sys.executable, "-m", "venv", str(venv)])
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)])


def no_compiler_env(venv: Path) -> dict[str, str]:
    """Where a production host without a compiler, or a service user without a home, is."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIDGRAM_", "XDG_"))}
    env.update(PATH=str(venv / "bin"), CC="/bin/false", HOME="/nonexistent", LC_ALL="C.UTF-8")
    return env


def wait_listening(server: subprocess.Popen[bytes]) -> str:
    """The server's stderr up to its "listening" line, awaited with a deadline. Read from the
    descriptor itself: a buffered reader would keep lines that select() then never reports."""
    assert server.stderr is not None
    fd = server.stderr.fileno()
    deadline = time.monotonic() + READY_TIMEOUT
    seen = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"midgram listening on" not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise CheckFailed(f"midgram serve did not listen in {READY_TIMEOUT:g} s:\n{seen!r}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise CheckFailed(f"midgram serve ended (status {server.wait()}):\n{seen!r}")
            seen += chunk
    return seen.decode(errors="replace")


def smoke(venv: Path, work: Path) -> list[str]:
    env = no_compiler_env(venv)
    midgram = str(venv / "bin" / "midgram")
    version = run([midgram, "--version"], env=env, cwd=work).strip()
    if not VERSION_LINE.fullmatch(version):
        raise CheckFailed(f"midgram --version says {version!r}, not native I/O on")
    sock = str(work / "mi.sock")
    server = subprocess.Popen(
        [midgram, "serve", "--socket", sock, "--children", "1", "--log-level", "info"],
        env=env,
        cwd=work,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        log = wait_listening(server)
        if "native I/O: on" not in log:
            raise CheckFailed(f"midgram serve did not log native I/O on:\n{log}")
        uptime = run([midgram, "call", "uptime", "-t", sock, "-f", "json"], env=env, cwd=work)
        if '"Up time"' not in uptime:
            raise CheckFailed(f"midgram call uptime answered {uptime!r}")
        bench = [
            midgram,
            "bench",
            "-t",
            sock,
            "--duration",
            "0.3",
            "--warmup",
            "0.1",
            "--runs",
            "1",
        ]
        table = run(bench, env=env, cwd=work)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(STEP_TIMEOUT)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return [version, uptime.strip(), table.strip()]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="mgw") as tmp:  # short: a socket path goes in it
        work = Path(tmp)
        try:
            sdist, wheel = build(work / "dist")
            check_sdist(sdist)
            check_wheel(wheel)
            install(wheel, work / "venv")
            lines = smoke(work / "venv", work)
        except (CheckFailed, subprocess.TimeoutExpired) as exc:
            print(f"wheel-check: FAILED: {exc}", file=sys.stderr)
            return 1
    print(f"wheel-check: {sdist.name} and {wheel.name}: contents as they must be")
    print("wheel-check: in a fresh venv, no cc on PATH, CC=/bin/false, HOME=/nonexistent:")
    for line in lines:
        print("  " + line.replace("\n", "\n  "))
    print("wheel-check: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
