"""How much of the server's send buffer replies nobody has read yet may hold (UNIX sockets).

The kernel facts behind it (Linux, ``AF_UNIX``/``SOCK_DGRAM``):

- a datagram stays charged to its *sender's* send buffer until its receiver reads it;
- a receiver queues at most ``net.unix.max_dgram_qlen`` + 1 datagrams (11 by default);
- once the charged bytes reach the sender's ``SO_SNDBUF``, every send from that socket fails
  (EAGAIN), whoever it goes to;
- ``SIOCOUTQ`` on the socket says how many bytes are charged now (one ioctl; every worker
  shares the socket, so it counts everyone's replies).

So a client that sends requests and never reads pins every reply it was sent, and with big
replies a handful of such clients fill the buffer: then nobody gets an answer. (UDP is not
charged this way: a UDP reply is released once delivered.) What one reply costs, measured:
768 bytes for a 126-byte ``uptime`` reply, 2,304 for 1,000 bytes, 61,696 for 60,000.

The policy, per worker:

- a reply of up to :data:`SMALL_REPLY` bytes goes out as it is: what such replies can pin is
  bounded by the kernel (11 x 2,304 bytes per client socket);
- a bigger one goes out only while the unread bytes and it stay within the *big share*, all
  but the last ``1/RESERVE_SHARE`` of the buffer, which is kept for small replies;
- and only while what this worker reckons its client holds unread, plus it, stays within the
  client's share (``1/PEER_SHARE`` of the big share), unless it holds nothing;
- otherwise it waits in the ReplySender's queue and is retried, until ``socket_timeout``;
- a big reply that the client's full queue refuses while the buffer has room says that the
  client is not reading: it is dropped at once, never queued.

The estimate of what a client holds is the bytes of big replies this worker sent it, never more
than the socket's unread total (a client cannot hold more than everyone together), and
forgotten when that total is below :data:`SMALL_REPLY` (then no big reply is unread anywhere).
"""

from __future__ import annotations

import fcntl
import socket
import struct
from typing import Any, Final

__all__ = [
    "PEER_SHARE",
    "RESERVE_SHARE",
    "SIOCOUTQ",
    "SMALL_REPLY",
    "SendBudget",
    "unread_bytes",
]

#: linux/sockios.h (the same number as TIOCOUTQ): the bytes a socket has sent that are still
#: charged to it (for a UNIX datagram socket: not yet read by their receivers).
SIOCOUTQ: Final = 0x5411
#: Replies up to this size are never held back (the C loop sends them itself).
SMALL_REPLY: Final = 1024
#: The last 1/RESERVE_SHARE of the send buffer is for small replies only.
RESERVE_SHARE: Final = 4
#: One client may hold at most 1/PEER_SHARE of the big share unread (one reply at least).
PEER_SHARE: Final = 8
#: Clients whose unread bytes a worker keeps reckoning at once; the oldest is forgotten.
PEERS_KEPT: Final = 4096

_INT: Final = struct.Struct("i")
_ZERO: Final = bytes(_INT.size)


def unread_bytes(fd: int) -> int:
    """``SIOCOUTQ``: the bytes charged to the socket's send buffer now."""
    return int(_INT.unpack(fcntl.ioctl(fd, SIOCOUTQ, _ZERO))[0])


class SendBudget:
    """The policy of the module docstring for one worker's replies from ``sock``."""

    small: Final = SMALL_REPLY

    def __init__(self, sock: socket.socket) -> None:
        self._fd = sock.fileno()
        #: What the kernel compares the charged bytes with (SO_SNDBUF as it reports it).
        self.size: int = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        #: The most big replies may take, with what is already unread.
        self.limit = self.size - self.size // RESERVE_SHARE
        #: The most one client may hold unread before its next big reply waits.
        self.share = self.limit // PEER_SHARE
        self._owed: dict[Any, int] = {}

    def unread(self) -> int:
        return unread_bytes(self._fd)

    def admit(self, size: int, peer: Any) -> bool:
        """Whether a reply of ``size`` bytes (> ``small``) to ``peer`` may go now; False: it
        waits."""
        unread = self.unread()
        if unread < SMALL_REPLY:
            self._owed.clear()  # no big reply can be unread anywhere
            return True  # even one larger than the big share: it would wait forever
        if unread + size > self.limit:
            return False
        owed = self._owed.get(peer)
        if owed is None:
            return True
        owed = min(owed, unread)
        self._owed[peer] = owed
        return owed + size <= self.share

    def sent(self, size: int, peer: Any) -> None:
        """A reply of ``size`` bytes (> ``small``) went to ``peer``."""
        owed = self._owed.pop(peer, 0)  # re-inserted last: the oldest entry is first
        if len(self._owed) >= PEERS_KEPT:
            del self._owed[next(iter(self._owed))]
        self._owed[peer] = owed + size

    def not_reading(self) -> bool:
        """After a send failed with EAGAIN: whether the client's queue refused it (it is not
        reading), rather than this socket's own full buffer."""
        return self.unread() < self.size
