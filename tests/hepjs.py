"""hep-js (npm, sipcapture's HEP3 library) as an independent decoder of midgram's packets.

``hepjs_decoder()`` installs hep-js into ``tests/node/node_modules`` on first use (npm, from
the pinned ``tests/node/package.json``) and returns a function that decodes packets with it;
without node or npm, or when the install fails, it calls ``pytest.skip`` saying why.
hep-js knows no IPv6 address chunks: it decodes everything else of an IPv6 packet.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from midgram.wire import hep

NODE_DIR = Path(__file__).resolve().parent / "node"
DECODER = NODE_DIR / "hep_decode.js"
INSTALL_TIMEOUT = 180

Decoder = Callable[[Sequence[bytes]], list[Any]]


def _install() -> str | None:
    """None when hep-js is ready, else why it is not."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return "node and npm are needed to check HEP packets with hep-js"
    if (NODE_DIR / "node_modules" / "hep-js" / "package.json").exists():
        return None
    try:
        done = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--no-package-lock", "--prefix", NODE_DIR],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"npm install hep-js took more than {INSTALL_TIMEOUT} s"
    if done.returncode != 0:
        return f"npm install hep-js failed: {done.stderr.strip()[-500:]}"
    return None


def hepjs_decoder() -> Decoder:
    why = _install()
    if why is not None:
        pytest.skip(why)
    node = shutil.which("node")
    assert node is not None

    def decode(packets: Sequence[bytes]) -> list[Any]:
        lines = "".join(packet.hex() + "\n" for packet in packets)
        done = subprocess.run(
            [node, DECODER], input=lines, capture_output=True, text=True, timeout=60, check=True
        )
        return [json.loads(line) for line in done.stdout.splitlines()]

    return decode


def assert_hepjs_agrees(packet: bytes, decoded: Any) -> None:
    """hep-js read ``packet`` as midgram's decoder does (addresses: IPv4 only)."""
    ours = hep.decode(packet)
    assert decoded, "hep-js could not decode the packet"
    expected = {
        "protocolFamily": ours.family,
        "protocol": ours.ip_proto,
        "srcPort": ours.src_port,
        "dstPort": ours.dst_port,
        "timeSeconds": ours.ts_sec,
        "timeUseconds": ours.ts_usec,
        "payloadType": ours.proto_type,
        "captureId": ours.capture_id,
        "correlation_id": (ours.correlation_id or b"").decode(),
    }
    if ours.family == hep.AF_INET:
        expected.update(srcIp=str(ours.src_ip), dstIp=str(ours.dst_ip))
    assert decoded["rcinfo"] == expected
    assert decoded["payload"] == (ours.payload or b"").decode()
