"""The C module under AddressSanitizer and UBSan (``make sanitize``): an instrumented build of
``_batchio.c`` (named by $MIDGRAM_BATCHIO) runs the fuzz corpus and seeds through every
target, ``FastAnswer`` against the Python ``answer``, then serves them as real datagrams
through ``BatchSocket.serve`` (recvmmsg, the answer, sendmmsg, the peer conversions) over
a UNIX socket pair, with random mutations of them (a fixed seed: the same run every time).

An ASan or UBSan report ends the process with a non-zero status (halt_on_error); this script
itself checks that FastAnswer's reply is ``answer``'s for every input, and that every
datagram served was read and replied to in its batch.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

import run  # noqa: E402 - after the path
import targets  # noqa: E402

MUTATIONS = int(os.environ.get("SANITIZE_MUTATIONS", "200000"))


def corpus() -> list[bytes]:
    found = [data for target in ("datagram", "reply") for data in run.seeds(target)]
    folder = HERE / "corpus"
    if folder.is_dir():
        found += [path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()]
    return found


def mutate(rng: random.Random, data: bytes) -> bytes:
    """A few random byte edits: flip, insert, delete, duplicate a slice."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(4)
        at = rng.randrange(len(buf) + 1)
        if kind == 0 and buf:
            buf[min(at, len(buf) - 1)] = rng.randrange(256)
        elif kind == 1:
            buf[at:at] = bytes([rng.choice(b'{}[]",:0123456789.-e\\ntu')])
        elif kind == 2 and buf:
            del buf[at : at + rng.randint(1, 8)]
        else:
            buf[at:at] = buf[at : at + rng.randint(1, 32)]
    return bytes(buf[: run.MAX_LEN])


def serve_all(module: object, checks: targets.Targets, datagrams: list[bytes]) -> int:
    """Send the datagrams in batches to a BatchSocket from a bound client; each batch is read
    with recvmmsg (with the sender's credentials), answered by FastAnswer and replied to with
    sendmmsg."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(f"\0midgram-sanitize-{os.getpid()}")
    client.bind(f"\0midgram-sanitize-client-{os.getpid()}")
    for sock in (server, client):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    client.setblocking(False)
    # The senders' credentials are read too (SCM_CREDENTIALS, as with an acl rule).
    server.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    in_hand = memoryview(bytearray(128))
    io = module.BatchSocket(  # type: ignore[attr-defined]
        server.fileno(), socket.AF_UNIX, 16, run.MAX_LEN, in_hand, credentials=True
    )
    assert checks.fast is not None
    served = replies = 0
    mine = (os.getpid(), os.getuid(), os.getgid())

    def settle(data: bytes, handled: object, peer: object, credentials: object) -> bytes | None:
        assert peer == client.getsockname(), peer
        assert credentials == mine, credentials
        return targets._reply(handled, checks.plain) if handled is not None else None  # type: ignore[arg-type]

    pending = [d for d in datagrams if d]
    while pending:
        batch, pending = pending[:8], pending[8:]
        for data in batch:
            client.sendto(data, server.getsockname())
        received, replied, leftovers = io.serve(checks.fast, False, 2, settle)
        assert received == len(batch), (received, len(batch))
        assert leftovers is None, leftovers  # every reply went out with sendmmsg
        served += received
        for _ in range(replied):
            client.recv(1 << 20)
            replies += 1
    server.close()
    client.close()
    return served


def main() -> int:
    logging.disable(logging.CRITICAL)
    module = targets.batchio()
    print(f"C module: {module.__file__}")
    checks = targets.Targets(module)
    inputs = corpus()
    rng = random.Random(20261203)
    mutated = [mutate(rng, rng.choice(inputs)) for _ in range(MUTATIONS)]
    calls = 0
    for data in [*inputs, *mutated]:
        checks.native(data)
        checks.datagram(data)
        calls += 1
    for data in inputs:
        checks.reply(data)
    served = serve_all(module, checks, [*inputs, *mutated[:50_000]])
    print(
        f"sanitize: {calls} FastAnswer calls against answer ({len(inputs)} corpus inputs, "
        f"{len(mutated)} mutations), {served} datagrams through BatchSocket.serve: no report"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
