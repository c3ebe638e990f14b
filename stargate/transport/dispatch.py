"""PDU -> handler, with the CmdSN rule applied once, here, before any handler runs (as
SPDK's iscsi_pdu_hdr_handle): a PDU that carries a command (SCSI Command, NOP-Out asking
for an answer, Text, Logout, Task Management) is handled in CmdSN order, held behind a gap
until it fills, or ignored outside the window (RFC 7143 3.2.2.1, `iscsicore.cmdsn`).
Also: the turn's budget, the control-PDU allowance, and protocol errors from the framer.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

import trio

from iscsicore.cmdsn import Arrival
from iscsicore.errors import DataDigestError, IscsiProtocolError
from iscsicore.fullfeature.exchanges import answers_target_ping
from iscsicore.pdu import (
    DataOut,
    LogoutRequest,
    NopOut,
    Pdu,
    RejectReason,
    ScsiCommand,
    SnackRequest,
    TaskMgmtRequest,
    TextRequest,
)
from iscsicore.seqnum import SERIAL_MASK
from stargate.transport.config import OUTPUT_HIGH_WATER, SOLE_TURN_BUDGET, TURN_BUDGET
from stargate.transport.interfaces import ReadySocket
from stargate.transport.state import Handler, StopBatch
from stargate.transport.task_mgmt import TaskManagement

log = logging.getLogger(__name__)

# The PDUs that carry a CmdSN the window orders.
OrderedPdu = ScsiCommand | NopOut | TextRequest | LogoutRequest | TaskMgmtRequest


class Dispatch(TaskManagement):
    def _handlers(self) -> dict[type[Pdu], tuple[Handler, bool]]:
        """The dispatch table: PDU type -> (handler, whether the CmdSN rule applies first).
        PDUs that carry no SCSI work are charged to the control-PDU allowance on arrival
        (held or not), and so go through the CmdSN rule inside the charge (`_deliver`)."""
        scsi_command: tuple[Handler, bool] = (
            (self._on_scsi_command, True)
            if self.lu is not None
            else (self._refuse_command, False)  # discovery session: text and logout only
        )
        return {
            ScsiCommand: scsi_command,
            DataOut: (self._on_data_out, False),
            NopOut: (self._charged(self._on_nop_arrival), False),
            TaskMgmtRequest: (self._on_task_management, True),
            TextRequest: self._control_entry(self._on_text),
            LogoutRequest: (self._on_logout, True),
            SnackRequest: (self._charged(self._on_snack), False),
        }

    def _control_entry(self, handler: Handler) -> tuple[Handler, bool]:
        if not self._control_rate:
            return handler, True
        return self._charged(functools.partial(self._deliver, handler)), False

    def _handle_buffered_pdus(self, handlers: dict[type[Pdu], tuple[Handler, bool]]) -> bool:
        """Handle the complete PDUs received, through ``handlers`` (`_handler_table`, or
        while a fault is armed `faulted_pdus`' table); True if it stopped early, its output
        at `OUTPUT_HIGH_WATER` or its turn of `TURN_BUDGET` PDUs used (then send, let the
        other connections run, and come back for the rest)."""
        framer = self.framer
        window = self._cmd_sn_window
        held = window.held
        eager_every = self.eager_send_every
        io = self._io
        try_send = io.try_send if eager_every and isinstance(io, ReadySocket) else None
        handled = 0
        budget = TURN_BUDGET if self.queue.sessions > 1 else SOLE_TURN_BUDGET
        try:
            while len(self._out) < OUTPUT_HIGH_WATER and handled < budget:
                try:
                    pdu = framer.next_pdu()
                except IscsiProtocolError as error:
                    self._protocol_error(error)
                    continue
                if pdu is None:
                    if not framer.buffered:
                        self._partial_since = None
                    elif handled or self._partial_since is None:
                        self._partial_since = self._last_receive  # a new PDU begins
                    return False
                entry = handlers.get(type(pdu))
                if entry is None:
                    self._reject(pdu, RejectReason.PROTOCOL_ERROR)
                else:
                    handler, ordered = entry
                    if not ordered:
                        handler(pdu)
                    else:
                        if TYPE_CHECKING:
                            assert isinstance(pdu, OrderedPdu)
                        cmd_sn = pdu.cmd_sn
                        if (
                            not pdu.immediate
                            and cmd_sn == window.exp_cmd_sn
                            and cmd_sn != (window.max_cmd_sn + 1) & SERIAL_MASK
                        ):
                            # The common case of `CmdSNWindow.arrive`, inline.
                            window.exp_cmd_sn = (cmd_sn + 1) & SERIAL_MASK
                            handler(pdu)
                        else:
                            self._deliver(handler, pdu)
                if held:
                    self._release_held()
                handled += 1
                if try_send is not None and handled % eager_every == 0 and not self._sending:
                    # Let the initiator start on these responses while we do the rest.
                    try_send(self._out)
        except StopBatch:
            return False
        self._partial_since = None  # what is buffered next is looked at next turn
        return True

    def _dispatch_one(self, pdu: Pdu) -> None:
        """Handle ``pdu`` as the table says (the faulted path: no inline shortcut)."""
        entry = self._handler_table.get(type(pdu))
        if entry is None:
            self._reject(pdu, RejectReason.PROTOCOL_ERROR)
            return
        handler, ordered = entry
        if ordered:
            if TYPE_CHECKING:
                assert isinstance(pdu, OrderedPdu)
            self._deliver(handler, pdu)
        else:
            handler(pdu)

    # -- the CmdSN rule ---------------------------------------------------------------

    def _deliver(self, handler: Handler, pdu: OrderedPdu) -> None:
        """``handler(pdu)`` now if its CmdSN's turn has come; else held until the CmdSNs
        before it arrive (then `_release_held` runs it), or outside the window and silently
        ignored (RFC 7143 section 3.2.2.1)."""
        arrival = self._cmd_sn_window.arrive(
            pdu.cmd_sn, immediate=pdu.immediate, item=(handler, pdu)
        )
        if arrival is Arrival.DELIVER:
            handler(pdu)
        elif arrival is Arrival.DROPPED:
            self.cmd_sn_out_of_window += 1  # for the initiator auditor
        elif isinstance(pdu, ScsiCommand) and not pdu.final:
            self._held_data[pdu.itt] = []  # held: its unsolicited Data-Out follows it

    def _release_held(self) -> None:
        """Handle the held PDUs whose CmdSN gap has filled, in CmdSN order (a write with
        the unsolicited data that came while it was held)."""
        window = self._cmd_sn_window
        while (ready := window.pop_ready()) is not None:
            handler, pdu = ready
            handler(pdu)
            if isinstance(pdu, ScsiCommand) and self._held_data:
                self._replay_held_data(pdu.itt)

    def _on_nop_arrival(self, pdu: NopOut) -> None:
        if answers_target_ping(pdu):
            return  # any byte already proved the peer alive
        self._deliver(self._on_nop_out, pdu)

    def _refuse_command(self, command: ScsiCommand) -> None:
        self._reject(command, RejectReason.PROTOCOL_ERROR)

    # -- the control-PDU allowance (ConnectionTimers.control_pdu_rate) ----------------

    def _charged(self, handler: Handler) -> Handler:
        """``handler`` (of a PDU that carries no SCSI work), charged to the connection's
        control-PDU allowance; SCSI commands and Data-Out never pass here."""
        if not self._control_rate:
            return handler

        def charged(pdu: Pdu) -> None:
            handler(pdu)
            self._spend_control_token()

        return charged

    def _spend_control_token(self) -> None:
        """Count one control PDU (already handled: none is dropped); out of tokens, stop
        the batch and note when reading may resume (`runner`)."""
        now = trio.current_time()
        rate = self._control_rate
        tokens = self._control_tokens + (now - self._control_stamp) * rate
        tokens = min(self._control_burst, tokens) - 1.0
        self._control_stamp = now
        self._control_tokens = tokens
        if tokens >= 1.0:
            return
        self.control_pauses += 1
        self._control_resume = now + (self._control_quantum - tokens) / rate
        if self._cmd_sn_window.held:
            self._release_held()  # what this PDU's CmdSN let through goes now, in order
        raise StopBatch

    def _protocol_error(self, error: IscsiProtocolError) -> None:
        allowed, left_out = self.log_gate() if self.log_gate is not None else (True, 0)
        if allowed:  # a peer can repeat these at will: the server may rate-limit them
            more = f" ({left_out} more like it not logged)" if left_out else ""
            log.info("protocol error from %s: %s%s", self.session.initiator_name, error, more)
        if error.header is not None:
            self._queue_reject(error.header, error.reject_reason)
        if error.fatal:
            # The byte stream cannot be trusted any more: say why, then drop.
            self._closing_reason = f"protocol error: {error}"
            self.protocol_error_drop = True
            raise StopBatch
        if isinstance(error, DataDigestError) and error.header is not None:
            self._data_digest_error(error.header)
