"""What both ends need to know of the local machine: where the default socket is, and
whether what is there can be trusted.

The default socket (``$XDG_RUNTIME_DIR/midgram.sock``, else ``/tmp/midgram-UID.sock``) may
live where any user can create a file first: :func:`squatted` says why a server must not use
it and a client must not talk to it.
"""

from __future__ import annotations

import os
import pwd
import stat

from midgram.wire.address import default_socket_name

__all__ = ["default_target", "squatted"]


def default_target() -> str:
    """Where ``midgram serve`` listens, and its clients call, when told nothing:
    ``$XDG_RUNTIME_DIR/midgram.sock``, else ``/tmp/midgram-<uid>.sock``."""
    return default_socket_name(os.environ.get("XDG_RUNTIME_DIR"), os.getuid())


def squatted(path: str, trusted: tuple[int, ...] = ()) -> str | None:
    """Why the socket at ``path``, a default location, may have been put there by another
    user; None when it cannot have been.

    Its directory must belong to this user or root and, if other users may write it, be
    sticky (as /tmp is: nobody can then rename or remove another's file); the socket, if
    there, must belong to this user, root or one of ``trusted`` (the owner a server gives
    its socket).
    """
    uid = os.geteuid()
    directory = os.path.dirname(path) or "."
    try:
        folder = os.stat(directory)
    except OSError:
        return None  # binding or sending there says what is wrong
    if folder.st_uid not in (uid, 0):
        return f"its directory {directory} belongs to {_who(folder.st_uid)}"
    if folder.st_mode & 0o022 and not folder.st_mode & stat.S_ISVTX:
        return f"other users may write its directory {directory}"
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if info.st_uid not in (uid, 0, *trusted):
        return f"it belongs to {_who(info.st_uid)}, not to {_who(uid)}"
    return None


def _who(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"
