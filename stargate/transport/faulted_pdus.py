"""Faults applied to the PDUs received, only while the fault strategy is armed (the runner
then hands every PDU to `_on_pdu_with_faults` instead of its handler)."""

from __future__ import annotations

import functools

import trio

from faults.model import Fault, FaultKind
from iscsicore.pdu import NopOut, Pdu, ScsiCommand, TaskMgmtRequest, TextRequest
from iscsicore.scsi.opcodes import ScsiStatus
from iscsicore.scsi.sense import SenseKey, build_fixed
from iscsicore.seqnum import SERIAL_MASK
from iscsicore.wire import full_cdb
from stargate.tasks import ScsiTask, TaskPhase
from stargate.transport.dispatch import Dispatch
from stargate.transport.fault_hooks import FAULT_RNG
from stargate.transport.state import DigestTamper, Handler

_FAULT_STATUS: dict[FaultKind, int] = {
    FaultKind.CHECK_CONDITION: int(ScsiStatus.CHECK_CONDITION),
    FaultKind.BUSY: int(ScsiStatus.BUSY),
    FaultKind.TASK_SET_FULL: int(ScsiStatus.TASK_SET_FULL),
    FaultKind.RESERVATION_CONFLICT: int(ScsiStatus.RESERVATION_CONFLICT),
}
_DIGEST_TAMPERS = {
    FaultKind.CORRUPT_HEADER_DIGEST: DigestTamper.HEADER,
    FaultKind.CORRUPT_DATA_DIGEST: DigestTamper.DATA,
}


class FaultedPdus(Dispatch):
    def _faulted_handlers(self) -> dict[type[Pdu], tuple[Handler, bool]]:
        """The dispatch table while a fault is armed: every PDU type goes to the faults
        first (the CmdSN rule applies after, in `_dispatch_one`)."""
        faulted: tuple[Handler, bool] = (self._on_pdu_with_faults, False)
        return dict.fromkeys(self._handler_table, faulted)

    def _on_pdu_with_faults(self, pdu: Pdu) -> None:
        faults = self.faults
        command = pdu if isinstance(pdu, ScsiCommand) else None
        cdb = None
        if command is not None:
            cdb = full_cdb(command) if command.ahs else command.cdb
        fault = faults.pdu_fault(
            self.vdisk_id,
            int(pdu.OPCODE),
            write_command=command is not None and command.write,
            cdb=cdb,
        )
        if fault is not None and self._apply_pdu_fault(fault, pdu):
            return
        if command is not None and cdb is not None and self.routes is not None and faults.armed:
            route = self.routes.of(command.lun)
            scsi_fault = faults.scsi_fault(route.vdisk_id if route else self.vdisk_id, cdb)
            if scsi_fault is not None:
                self._on_faulted_command(command, cdb, scsi_fault)
                return
        self._dispatch_one(pdu)

    def _apply_pdu_fault(self, fault: Fault, pdu: Pdu) -> bool:
        """Apply a PDU/connection fault; True if it consumed the PDU."""
        kind = fault.kind
        if kind is FaultKind.DROP_CONNECTION:
            self.drop_by_fault(fault.mode)
            return True
        if kind in (FaultKind.SWALLOW_NOP_OUT, FaultKind.SWALLOW_TMF):
            return True
        if kind is FaultKind.REJECT:
            # Its CmdSN is used up, its turn or not.
            if (
                isinstance(pdu, ScsiCommand | NopOut | TextRequest | TaskMgmtRequest)
                and not pdu.immediate
            ):
                displaced = self._cmd_sn_window.consider_received(pdu.cmd_sn)
                if displaced is not None:
                    self._forget_held([displaced])
            self._reject(pdu, fault.reason)
            return True
        if kind is FaultKind.STAT_SN_JUMP:
            self._stat_sn.next = (self._stat_sn.next + fault.amount) & SERIAL_MASK
            return False
        if kind is FaultKind.FREEZE_WINDOW:
            self._freeze_window(fault.duration or 10.0)
            return False
        tamper = _DIGEST_TAMPERS.get(kind)
        if tamper is not None:
            # The first response serialized while handling it goes out with a bad digest.
            self._digest_tamper = tamper
            try:
                self._dispatch_one(pdu)
            finally:
                self._digest_tamper = None
            return True
        if kind in (FaultKind.DELAY_R2T, FaultKind.WITHHOLD_R2T) and isinstance(pdu, ScsiCommand):
            self._hold_r2ts(fault, pdu)
            return True
        return False

    def _hold_r2ts(self, fault: Fault, pdu: ScsiCommand) -> None:
        """Handle a write command without sending its R2Ts; send them after the delay, or
        never (the initiator's command timeout finds it)."""
        self._r2ts_withheld = True
        try:
            self._dispatch_one(pdu)
        finally:
            self._r2ts_withheld = False
        task = self._tasks.get(pdu.itt)
        if task is None or fault.kind is FaultKind.WITHHOLD_R2T or self._nursery is None:
            return

        async def release_later(seconds: float) -> None:
            await trio.sleep(seconds)
            if task.phase is TaskPhase.RECEIVING:
                self._send_r2ts(task)
                self._wake_writer()

        self._nursery.start_soon(release_later, fault.delay.draw(FAULT_RNG))

    def _on_faulted_command(self, command: ScsiCommand, cdb: bytes, fault: Fault) -> None:
        if fault.kind not in _FAULT_STATUS:
            # Applied when it executes (delay, hang, short transfer, drop mid Data-In).
            self._execution_faults[command.itt] = fault
            self._deliver(self._on_scsi_command, command)
            if command.itt not in self._tasks:
                self._execution_faults.pop(command.itt, None)  # never reached execution
            return
        self._deliver(functools.partial(self._finish_faulted, cdb, fault), command)

    def _finish_faulted(self, cdb: bytes, fault: Fault, command: ScsiCommand) -> None:
        """Answer a command with the status a fault says, without running it."""
        kind = fault.kind
        assert self.routes is not None
        task = ScsiTask(self, command, cdb, self.routes.of(command.lun) or self.routes.routes[0])
        task.route.stats.command_started()
        sense = b""
        if kind is FaultKind.CHECK_CONDITION:
            sense = build_fixed(SenseKey(fault.sense_key & 0x0F), (fault.asc, fault.ascq))
        # Its Data-Out (if any) finds no task and is dropped, as for any failed command.
        self._finish(task, _FAULT_STATUS[kind], sense=sense)
