"""A real Kamailio (Debian package ``kamailio``) with jsonrpcs on a datagram socket, for tests.

``kamailio_server(udp=False)`` starts it in the foreground in a temporary folder, with the
config of ``bench/kamailio_ref.py``, waits until it answers, yields its target text and
stops it. ``KAMAILIO_MISSING`` is the reason to skip with where the binary
is not installed.
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


def free_udp_port() -> int:
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
    sip_port: int | None = None,
) -> Iterator[str]:
    """Run Kamailio with jsonrpcs on a UNIX (or UDP) datagram socket; yield its target.

    ``user``: Kamailio drops its privileges to that user (``-u``/``-g``) after start-up.
    ``modules``: more modules to load; ``sip_port``: the UDP port it takes SIP on.
    """
    assert KAMAILIO is not None, KAMAILIO_MISSING
    rundir = Path(tempfile.mkdtemp(prefix="kam", dir="/tmp"))
    privileges: list[str] = []
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(rundir, entry.pw_uid, entry.pw_gid)
        privileges = ["-u", user, "-g", grp.getgrgid(entry.pw_gid).gr_name]
    if udp:
        port = free_udp_port()
        target, probe = f"udp:127.0.0.1:{port}", (socket.AF_INET, ("127.0.0.1", port))
    else:
        path = str(rundir / "k.sock")
        target, probe = path, (socket.AF_UNIX, path)
    config = rundir / "k.cfg"
    config.write_text(
        kamailio_config(rundir, target, sip_port or free_udp_port(), debug=2, modules=modules)
    )
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
            # Kamailio that exits at once (a bad config, a port in use).
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.05)
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise RuntimeError(
                    f"kamailio did not start: {(rundir / 'log').read_text(errors='replace')}"
                )
        yield target
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(rundir, ignore_errors=True)
