"""What a connection is given at construction: its byte channel, the server's helpers and
its fault strategy.

The connection asks the fault strategy nothing while ``armed`` is false (one check per
batch of PDUs, `runner`); `faulted_pdus` applies what it answers. `faults.FaultInjector`
is the server's strategy; `NO_FAULTS` is the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from faults.model import Fault
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


class FaultStrategy(Protocol):
    """Decides, per PDU and per command received, which fault (if any) applies."""

    @property
    def armed(self) -> bool:
        """Whether any fault is present at all (else nothing else is asked)."""
        ...

    def pdu_fault(
        self,
        vdisk_id: str,
        opcode: int,
        *,
        write_command: bool,
        cdb: bytes | None = None,
        tmf_function: int | None = None,
    ) -> Fault | None: ...

    def scsi_fault(
        self, vdisk_id: str, cdb: bytes, *, logout_pending: bool = False
    ) -> Fault | None: ...


@dataclass(frozen=True, slots=True)
class NoFaults:
    """The strategy of a connection without fault injection: never armed."""

    armed: bool = False

    def pdu_fault(
        self,
        vdisk_id: str,
        opcode: int,
        *,
        write_command: bool,
        cdb: bytes | None = None,
        tmf_function: int | None = None,
    ) -> Fault | None:
        return None

    def scsi_fault(
        self, vdisk_id: str, cdb: bytes, *, logout_pending: bool = False
    ) -> Fault | None:
        return None


NO_FAULTS = NoFaults()
