"""The fault strategy a connection is given at construction, and what a fault can do to
the connection as a whole (drop it, blackhole it, freeze its window).

The connection asks the strategy nothing while ``armed`` is false (one check per batch of
PDUs, `runner`); `faulted_pdus` applies what it answers. `faults.FaultInjector` is
the server's strategy; `NO_FAULTS` is the default.
"""

from __future__ import annotations

import logging
import random
import socket
import struct
from dataclasses import dataclass
from typing import Protocol

import trio

from faults.channel import BlackholeChannel
from faults.model import DropMode, Fault
from stargate.transport.data_in import StatusSender
from stargate.transport.interfaces import ResettableChannel
from stargate.transport.state import StopBatch

log = logging.getLogger(__name__)

_LINGER_ZERO = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close sends RST, not FIN
FAULT_RNG = random.Random()  # draws the delays of faults


class FaultStrategy(Protocol):
    """Decides, per PDU and per command received, which fault (if any) applies."""

    @property
    def armed(self) -> bool:
        """Whether any fault is present at all (else nothing else is asked)."""
        ...

    def pdu_fault(
        self, vdisk_id: str, opcode: int, *, write_command: bool, cdb: bytes | None = None
    ) -> Fault | None: ...

    def scsi_fault(self, vdisk_id: str, cdb: bytes) -> Fault | None: ...


@dataclass(frozen=True, slots=True)
class NoFaults:
    """The strategy of a connection without fault injection: never armed."""

    armed: bool = False

    def pdu_fault(
        self, vdisk_id: str, opcode: int, *, write_command: bool, cdb: bytes | None = None
    ) -> Fault | None:
        return None

    def scsi_fault(self, vdisk_id: str, cdb: bytes) -> Fault | None:
        return None


NO_FAULTS = NoFaults()


class FaultEffects(StatusSender):
    def drop_by_fault(self, mode: DropMode) -> None:
        """End the connection as a fault says: reset, orderly close, or blackhole."""
        if mode is DropMode.BLACKHOLE:
            self.blackhole()
            return
        if mode is DropMode.RESET:
            self._out.clear()  # a reset loses what was not sent
            self._reset_on_close()
        self._closing_reason = f"fault: connection {mode.value}"
        if self._in_batch:
            raise StopBatch
        self.close(self._closing_reason)

    def _reset_on_close(self) -> None:
        channel = self._io
        if isinstance(channel, ResettableChannel):
            channel.reset_on_close()
        elif isinstance(channel, trio.SocketStream):
            channel.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)

    def blackhole(self) -> None:
        """Stop answering but keep the socket open: only the initiator's NOP timeout (or
        its command timeout) finds out. Our own pings stop too."""
        if isinstance(self._io, BlackholeChannel):
            return
        log.info("blackholing a connection of %s (fault)", self.session.initiator_name)
        self._out.clear()
        self._io = BlackholeChannel(self._io)
        self._pending_logout_deadline = None
        if self._keepalive_scope is not None:
            self._keepalive_scope.cancel()
        if self._watchdog_scope is not None:
            self._watchdog_scope.cancel()

    def _freeze_window(self, seconds: float) -> None:
        """MaxCmdSN stops advancing for ``seconds``: the initiator's queue stalls."""
        self._frozen_max_cmd_sn = self._cmd_sn_window.max_cmd_sn
        self._freezes += 1
        freeze = self._freezes

        async def thaw() -> None:
            await trio.sleep(seconds)
            if self._freezes == freeze:  # not frozen again meanwhile
                self._frozen_max_cmd_sn = None
            self.window_opened()

        if self._nursery is not None:
            self._nursery.start_soon(thaw)
