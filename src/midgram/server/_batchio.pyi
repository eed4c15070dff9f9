"""Types of the compiled module ``_batchio.c`` (built at install time): what mypy checks
every call into it against. The docstrings are in the C source."""

from collections.abc import Callable
from typing import Any, Final, final

from midgram.engine.access import Credentials
from midgram.engine.dispatch import Guarded, Outcome, Pending
from midgram.server.transport import PeerAddress

MAX_SLOTS: Final[int]

@final
class BatchSocket:
    def __init__(
        self,
        fd: int,
        family: int,
        slots: int,
        bufsize: int,
        in_hand: memoryview | None = None,
        big: int = ...,
        credentials: bool = False,
    ) -> None: ...
    @property
    def slots(self) -> int: ...
    @property
    def bufsize(self) -> int: ...
    def recv(self, block: bool, /) -> list[tuple[bytes, PeerAddress, bool, Credentials | None]]: ...
    def send(self, replies: list[tuple[bytes, PeerAddress]], start: int, /) -> int: ...
    def serve(
        self,
        answer: Callable[[bytes], Any],
        block: bool,
        flush: int,
        settle: Callable[[bytes, Any, PeerAddress, Credentials | None], Any] | None = None,
        /,
    ) -> tuple[int, int, list[tuple[bytes, PeerAddress, bool, Any]] | None]: ...
    def serve_traced(
        self,
        answer: Callable[[bytes], Any],
        block: bool,
        flush: int,
        hooks: tuple[
            int,
            Callable[[str, PeerAddress, int], Any],
            Callable[[Any, bytes, int], bytes],
            Callable[[bytes, PeerAddress, bool, Any], bool],
            Callable[[Any, bytes, PeerAddress], bool],
            Callable[[bytes], None],
        ],
        /,
    ) -> tuple[int, int, int]: ...

@final
class FastAnswer:
    def __init__(
        self,
        bare: dict[str, Callable[..., Any]],
        compact: Callable[[Any, Any], bytes | None],
        after_bare: Callable[..., Outcome],
        answer: Callable[[bytes], bytes | Outcome | Pending | Guarded],
        named: dict[str, tuple[Callable[..., Any], Any]] | None = None,
    ) -> None: ...
    def __call__(self, data: bytes, /) -> bytes | Outcome | Pending | Guarded: ...
