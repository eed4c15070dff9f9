"""Run a midgram server or client as another user (tests run as root).

``python tests/as_user.py serve USER SOCKET_NAME``: ``midgram.server.serve`` with the
``apps:mi`` commands, in-process (``children_count = 0``), as USER; prints ``ready`` once it
listens. ``python tests/as_user.py call USER TARGET METHOD``: one ``Client`` call as USER;
prints ``{"result": ...}`` or ``{"error": CLASS, "errno": N}``.

Everything is imported first and the privileges are dropped after: the interpreter itself
may live where USER cannot read (a pyenv under /root), so nothing may be imported later.
"""

from __future__ import annotations

import json
import os
import pwd
import sys

from apps import mi

from midgram.client import Client
from midgram.config import Settings
from midgram.errors import ClientError
from midgram.server import serve


def become(user: str) -> None:
    entry = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)


def run_server(user: str, socket_name: str) -> int:
    settings = Settings(socket_name=socket_name, children_count=0)
    become(user)
    return serve(settings, mi, on_ready=lambda where: print("ready", where, flush=True))


def run_call(user: str, target: str, method: str) -> int:
    client = Client(target, timeout=5)
    become(user)
    try:
        print(json.dumps({"result": client.call(method)}))
    except ClientError as exc:
        print(json.dumps({"error": type(exc).__name__, "errno": getattr(exc, "errno", None)}))
    return 0


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    sys.exit(run_server(*args) if command == "serve" else run_call(*args))
