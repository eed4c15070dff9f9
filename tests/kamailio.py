"""A real Kamailio (Debian package ``kamailio``) with jsonrpcs on a datagram socket, for tests.

``kamailio_server(udp=False)`` starts it in the foreground in a temporary folder, with the
config of ``bench/kamailio_ref.py``, waits until it answers, yields it (its target text, its
SIP port) and stops it. ``KAMAILIO_MISSING`` is the reason to skip with where the binary
is not installed.

Kamailio cannot bind port 0 (its ``listen`` takes 0 for 5060, jsonrpcs refuses it), so its
ports are chosen beforehand; one that another program takes meanwhile makes Kamailio exit
with "Address already in use", and it is started again on other ports.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# The config and the paths are the benchmark harness's own (bench/kamailio_ref.py).
from kamailio_ref import (
    KAMAILIO_MISSING,
    kamailio_binary,
    kamailio_config,
)

KAMAILIO = kamailio_binary()
START_DEADLINE = 20.0
STOP_DEADLINE = 10.0
#: Starts on other ports after Kamailio found one taken, before the test fails.
PORT_ATTEMPTS = 5
#: What Kamailio logs when a port it was given is taken (its SIP or its jsonrpcs socket).
_PORT_TAKEN = "Address already in use"


@dataclass(frozen=True)
class Kamailio:
    target: str  #: where its jsonrpcs datagram socket is, as ``-t`` takes it
    sip_port: int  #: where it takes SIP (UDP, 127.0.0.1)


class _PortTaken(Exception):
    """Kamailio exited at start because a port it was given was taken meanwhile."""


def _candidate_port() -> int:
    """A UDP port of 127.0.0.1 that is free now, for Kamailio, which cannot bind port 0.
    Another program may take it before Kamailio binds it: ``kamailio_server`` then starts
    Kamailio again on other ports."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(target: tuple[int, object]) -> bool:
    family, address = target
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        if family == socket.AF_UNIX:
            probe.bind(b"")
        probe.settimeout(0.2)
        try:
            probe.sendto(b'{"jsonrpc":"2.0","method":"core.version","id":1}', address)
            return bool(probe.recv(65536))
        except OSError:
            return False


@contextlib.contextmanager
def kamailio_server(
    *,
    udp: bool = False,
    user: str | None = None,
    modules: tuple[str, ...] = (),
) -> Iterator[Kamailio]:
    """Run Kamailio with jsonrpcs on a UNIX (or UDP) datagram socket; yield where it is.

    ``user``: Kamailio drops its privileges to that user (``-u``/``-g``) after start-up.
    ``modules``: more modules to load.
    """
    assert KAMAILIO is not None, KAMAILIO_MISSING
    for attempt in range(1, PORT_ATTEMPTS + 1):
        try:
            with _started(udp=udp, user=user, modules=modules) as running:
                yield running
                return
        except _PortTaken as taken:
            if attempt == PORT_ATTEMPTS:
                raise RuntimeError(f"kamailio found its ports taken {attempt} times") from taken


@contextlib.contextmanager
def _started(*, udp: bool, user: str | None, modules: tuple[str, ...]) -> Iterator[Kamailio]:
    """One start on ports chosen now; ``_PortTaken`` when Kamailio found one taken."""
    assert KAMAILIO is not None, KAMAILIO_MISSING
    rundir = Path(tempfile.mkdtemp(prefix="kam", dir="/tmp"))
    privileges: list[str] = []
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(rundir, entry.pw_uid, entry.pw_gid)
        privileges = ["-u", user, "-g", grp.getgrgid(entry.pw_gid).gr_name]
    if udp:
        port = _candidate_port()
        target, probe = f"udp:127.0.0.1:{port}", (socket.AF_INET, ("127.0.0.1", port))
    else:
        path = str(rundir / "k.sock")
        target, probe = path, (socket.AF_UNIX, path)
    sip_port = _candidate_port()
    config = rundir / "k.cfg"
    config.write_text(kamailio_config(rundir, target, sip_port, debug=2, modules=modules))
    log = (rundir / "log").open("wb")
    command = [KAMAILIO, "-DD", "-E", "-f", str(config), "-P", str(rundir / "pid")]
    proc = subprocess.Popen(
        [*command, "-w", str(rundir), *privileges],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + START_DEADLINE
        while not _answers(probe):
            # Waiting on the process doubles as the pause between probes, and notices a
            # Kamailio that exits at once (a bad config, a port taken).
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.05)
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                said = (rundir / "log").read_text(errors="replace")
                if proc.poll() is not None and _PORT_TAKEN in said:
                    raise _PortTaken(said)
                raise RuntimeError(f"kamailio did not start: {said}")
        yield Kamailio(target, sip_port)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(rundir, ignore_errors=True)
