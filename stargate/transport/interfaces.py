"""What a connection is given at construction: its byte channel and the server's helpers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from iscsicore.pdu import RejectReason, TextRequest, TextResponse

if TYPE_CHECKING:
    from stargate.transport.runner import FullFeatureConnection


class TextResponder(Protocol):
    """Answers Text Requests (SendTargets); fills everything but the sequence numbers."""

    def respond(self, request: TextRequest) -> TextResponse | RejectReason: ...


class TaskDirectory(Protocol):
    """The other connections of this stargate, for resets that reach beyond one session."""

    def connections_of(self, target_name: str) -> list[FullFeatureConnection]: ...


class ByteChannel(Protocol):
    """Where the connection's bytes go: a trio stream, or the server's direct socket."""

    async def receive_some(self, max_bytes: int) -> bytes | bytearray: ...

    async def send_all(self, data: bytes | bytearray) -> None: ...


@runtime_checkable
class ReadySocket(Protocol):
    """A channel with a socket underneath (the server's direct socket): it can be served by
    the server's `ReaderHub`, which needs its descriptor and calls that never wait."""

    def fileno(self) -> int: ...

    def receive_now(self, max_bytes: int) -> bytes | None: ...

    def try_send(self, data: bytearray) -> None: ...


@runtime_checkable
class ResettableChannel(Protocol):
    """A channel whose close can be made a TCP reset (a ``drop_connection`` fault)."""

    def reset_on_close(self) -> None:
        """Make the coming close send RST instead of FIN (SO_LINGER 0)."""
        ...
