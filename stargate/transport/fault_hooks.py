"""What a fault can do to a connection as a whole: drop it (reset, close), blackhole it,
freeze its window. The decisions come from the `interfaces.FaultStrategy` the connection
was given; `faulted_pdus` applies them per PDU."""

from __future__ import annotations

import logging
import random
import socket
import struct

import trio

from faults.channel import BlackholeChannel
from faults.model import DropMode
from stargate.transport.data_in import StatusSender
from stargate.transport.interfaces import ResettableChannel
from stargate.transport.state import StopBatch

log = logging.getLogger(__name__)

_LINGER_ZERO = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close sends RST, not FIN
FAULT_RNG = random.Random()  # draws the delays of faults


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
