"""Run a midgram server or client as another user (tests run as root).

- ``python tests/as_user.py serve USER SOCKET_NAME [MODE]``: ``midgram.server.wiring.serve`` with
  the ``apps:mi`` commands, in-process (``children_count = 0``), as USER, its socket file
  with MODE (octal, default 0660); prints ``ready`` once it listens.
- ``python tests/as_user.py call USER[:GROUP] TARGET METHOD [PARAMS]``: one ``Client`` call
  as USER (with GROUP as its group id, else USER's own), PARAMS a JSON array or object;
  prints ``{"result": ...}`` or ``{"error": CLASS, "errno": N}`` (and the ``code`` of an
  error reply).
- ``python tests/as_user.py cli USER ARGS...``: the ``midgram`` command itself (``serve``,
  ``call``...) as USER.
- ``python tests/as_user.py forge USER ADDRESS``: as USER, send ADDRESS (a client's reply
  address, in the ``socket_name`` grammar) the forged replies of ``FORGED``: over UNIX one
  from an unbound socket and one from a socket bound elsewhere; prints ``forged``.

Everything is imported first and the privileges are dropped after: the interpreter itself
may live where USER cannot read (a pyenv under /root), so nothing may be imported later.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import socket
import struct
import sys

from apps import mi

import midgram.cli.call  # the sub-commands, imported while still root
import midgram.cli.serve  # noqa: F401
from midgram.cli import cli
from midgram.client.calls import Client
from midgram.config.settings import Settings
from midgram.errors import ClientError, RemoteError
from midgram.server.batchio import native_status
from midgram.server.wiring import serve
from midgram.wire.address import UdpAddress, parse_target

#: What a forger sends: an error reply to any call (a null id), and a plain-text error.
FORGED = (b'{"jsonrpc":"2.0","error":{"code":-32000,"message":"forged"},"id":null}', b"500 forged")


def become(user: str) -> None:
    """USER, or USER:GROUP for USER running with GROUP as its group id; no other group."""
    name, _, group = user.partition(":")
    entry = pwd.getpwnam(name)
    os.setgroups([])
    os.setgid(grp.getgrnam(group).gr_gid if group else entry.pw_gid)
    os.setuid(entry.pw_uid)


def run_server(user: str, socket_name: str, mode: str = "0660") -> int:
    settings = Settings(socket_name=socket_name, children_count=0, unix_socket_mode=int(mode, 8))
    become(user)
    return serve(settings, mi, on_ready=lambda where: print("ready", where, flush=True))


def run_call(user: str, target: str, method: str, params: str = "null") -> int:
    client = Client(target, timeout=5)
    become(user)
    try:
        print(json.dumps({"result": client.request(method, json.loads(params))}))
    except RemoteError as exc:
        print(json.dumps({"error": type(exc).__name__, "errno": None, "code": exc.code}))
    except ClientError as exc:
        print(json.dumps({"error": type(exc).__name__, "errno": getattr(exc, "errno", None)}))
    return 0


def run_cli(user: str, *args: str) -> int:
    # The sub-commands were imported above; the C module is imported here, while still root.
    native_status()
    become(user)
    cli.main(args=list(args), prog_name="midgram")  # exits
    return 0


def run_forge(user: str, address: str) -> int:
    target = parse_target(address)
    become(user)
    if isinstance(target, UdpAddress):
        family = socket.AF_INET6 if ":" in target.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            for reply in FORGED:
                sock.sendto(reply, (target.host, target.port))
    else:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unbound:
            unbound.sendto(FORGED[0], target.sockaddr())
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as bound:
            bound.bind(b"")  # an abstract name the kernel picks
            bound.sendto(FORGED[1], target.sockaddr())
    print("forged")
    return 0


def run_claim(user: str, target: str, method: str) -> int:
    address = parse_target(target).sockaddr()
    request = json.dumps({"jsonrpc": "2.0", "method": method, "id": 1}).encode()
    become(user)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"")  # an abstract name the kernel picks: the reply comes back here
        sock.settimeout(5)
        ucred = struct.Struct("=iII")
        root = [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, ucred.pack(os.getpid(), 0, 0))]
        try:
            sock.sendmsg([request], root, 0, address)
        except OSError as exc:
            print(json.dumps({"claimed": "refused", "errno": exc.errno}), flush=True)
        else:
            print(json.dumps({"claimed": "sent", "reply": json.loads(sock.recv(65536))}))
        own = [
            (
                socket.SOL_SOCKET,
                socket.SCM_CREDENTIALS,
                ucred.pack(os.getpid(), os.getuid(), os.getgid()),
            )
        ]
        sock.sendmsg([request], own, 0, address)
        print(json.dumps({"honest": json.loads(sock.recv(65536))}), flush=True)
    return 0


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    runners = {
        "serve": run_server,
        "call": run_call,
        "cli": run_cli,
        "forge": run_forge,
        "claim": run_claim,
    }
    sys.exit(runners[command](*args))
