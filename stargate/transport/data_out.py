"""A write's data: what to collect (from the CDB and the EDTL), immediate and unsolicited
data, R2Ts, Data-Out sequence checks, data digest failures, and the unsolicited Data-Out
of a command held behind a CmdSN gap (error recovery level 0, as LIO's erl0)."""

from __future__ import annotations

import time

import trio

from iscsicore import fastpath
from iscsicore.fullfeature.sequence import DataSequence
from iscsicore.pdu import R2T, RESERVED_TAG, DataOut, Opcode, RejectReason, ScsiCommand
from iscsicore.scsi.opcodes import ScsiOp, ScsiStatus
from iscsicore.scsi.sense import Asc, SenseKey, build_fixed
from stargate.stats import IoKind
from stargate.tasks import (
    ScsiTask,
    TaskPhase,
    implied_write_blocks,
    with_write_blocks,
)
from stargate.transport.config import MAX_TRANSFER_BYTES
from stargate.transport.data_in import RESIDUAL_MAX
from stargate.transport.execution import Execution
from stargate.transport.state import HeldPdu

INVALID_FIELD_IN_INFORMATION_UNIT = (0x0E, 0x03)


class DataOutReceiver(Execution):
    # -- planning and buffering -------------------------------------------------------

    def _plan_data_out(self, task: ScsiTask) -> bool:
        """Work out how much Data-Out to collect and the write residual; False if failed."""
        command = task.command
        edtl = task.edtl if command.write else 0
        blocks = (
            implied_write_blocks(task.cdb) if command.write or task.kind is IoKind.WRITE else None
        )
        if blocks is None:
            needed = edtl
        else:
            implied = blocks * self.block_size
            needed = min(edtl, implied)
            if task.cdb[0] == ScsiOp.COMPARE_AND_WRITE and edtl != implied:
                # Atomic: half a compare-and-write means nothing. The CDB (whose NUMBER OF
                # LOGICAL BLOCKS is what disagrees with the data) is at fault.
                task.residual = (edtl < implied, abs(implied - edtl))
                self._finish(
                    task,
                    ScsiStatus.CHECK_CONDITION,
                    sense=build_fixed(SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB),
                )
                return False
            if edtl < implied:
                # A CDB may imply up to 2**41 bytes: the Residual Count field saturates.
                task.residual = (True, min(implied - edtl, RESIDUAL_MAX))
                patched = with_write_blocks(task.cdb, edtl // self.block_size)
                if edtl % self.block_size or patched is None:
                    self._finish(
                        task,
                        ScsiStatus.CHECK_CONDITION,
                        sense=build_fixed(
                            SenseKey.ILLEGAL_REQUEST, INVALID_FIELD_IN_INFORMATION_UNIT
                        ),
                    )
                    return False
                task.cdb = patched
            elif edtl > implied:
                task.residual = (False, edtl - implied)
        if needed > MAX_TRANSFER_BYTES:
            self._finish(
                task,
                ScsiStatus.CHECK_CONDITION,
                sense=build_fixed(SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB),
            )
            return False
        task.needed = needed
        if not command.write:
            return True
        immediate_length = len(command.data)
        # Unsolicited data beyond the immediate data: a Data-Out burst with TTT 0xffffffff.
        if not command.final:
            burst_end = min(task.edtl, self.params.first_burst_length)
            task.unsolicited = DataSequence(RESERVED_TAG, immediate_length, burst_end)
            task.next_r2t_offset = burst_end
        else:
            task.next_r2t_offset = immediate_length
        return True

    def _store_data(
        self, task: ScsiTask, offset: int, data: bytes | bytearray | memoryview
    ) -> None:
        if offset >= task.needed:
            return  # data the CDB does not use (EDTL > transfer length): discarded
        length = len(data)
        end = min(offset + length, task.needed)
        buffer = task.buffer
        if buffer is None:
            # Held as received when all of it is used (the common case): no view to make.
            task.early_data.append(
                (offset, data if end - offset == length else memoryview(data)[: end - offset])
            )
        else:
            if not isinstance(buffer, bytearray):  # the received data itself, in use as is
                buffer = task.buffer = bytearray(buffer)
            _put(buffer, offset, memoryview(data)[: end - offset])
        task.received += end - offset

    @staticmethod
    def _allocate_buffer(task: ScsiTask) -> None:
        """The write buffer, started only with a slot (and its bytes) held, with the data
        received so far: it grows as the rest arrives (`_store_data`), so a command whose
        data never comes holds no memory for it."""
        if task.needed and task.buffer is None:
            early_data = task.early_data
            if len(early_data) == 1 and task.data_complete:
                offset, chunk = early_data[0]
                if offset == 0 and len(chunk) == task.needed and type(chunk) is not memoryview:
                    # All the data came in one piece (immediate data): use it as it is,
                    # nothing will be written into the buffer any more.
                    task.buffer = chunk
                    early_data.clear()
                    return
            buffer = task.buffer = bytearray()
            for offset, chunk in early_data:
                _put(buffer, offset, chunk)
            early_data.clear()

    def _slot_granted(self, task: ScsiTask) -> None:
        """The task holds a queue slot: collect its data or run it."""
        if task.aborted:
            self.queue.release(task.needed, task.route.tenant)
            task.has_slot = False
            return
        task.phase = TaskPhase.RECEIVING
        task.queued_ns = time.perf_counter_ns()
        if task.data_digest_failed:
            return  # ends when the rest of its unsolicited data has come (and is discarded)
        self._allocate_buffer(task)
        if task.data_complete:
            self._execute(task)
        else:
            task.data_since = trio.current_time()  # the Data-Out deadline starts
            self._send_r2ts(task)
        # Granted from another connection's wake-up (a slot freed there): our writer sends.
        self._wake_writer()

    def _send_r2ts(self, task: ScsiTask) -> None:
        if not task.has_slot or task.data_digest_failed or self._r2ts_withheld:
            return
        params = self.params
        while task.next_r2t_offset < task.needed and len(task.r2ts) < params.max_outstanding_r2t:
            offset = task.next_r2t_offset
            length = min(params.max_burst_length, task.needed - offset)
            ttt = self._new_ttt()
            task.r2ts[ttt] = DataSequence(ttt, offset, offset + length)
            task.next_r2t_offset = offset + length
            exp_cmd_sn, max_cmd_sn = self._window()
            self._append(
                R2T(
                    lun=task.command.lun,
                    itt=task.itt,
                    ttt=ttt,
                    stat_sn=self._stat_sn.next,
                    exp_cmd_sn=exp_cmd_sn,
                    max_cmd_sn=max_cmd_sn,
                    r2t_sn=task.r2t_sn,
                    buffer_offset=offset,
                    desired_data_transfer_length=length,
                )
            )
            task.r2t_sn += 1
            task.data_since = trio.current_time()  # each burst asked for gets the full time

    def _new_ttt(self) -> int:
        ttt = self._next_ttt
        self._next_ttt = ttt + 1 if ttt < 0xFFFFFFFE else 1
        return ttt

    # -- Data-Out PDUs ----------------------------------------------------------------

    def _on_data_out(self, pdu: DataOut) -> None:
        task = self._tasks.get(pdu.itt)
        if task is None or task.phase is TaskPhase.SYNCING or task.phase is TaskPhase.DONE:
            # For a command already answered (failed, aborted, ignored): dropped. For one
            # held behind a CmdSN gap: kept for its turn.
            if task is None:
                self._hold_data_out(pdu)
            return
        if task.data_digest_failed:
            self._discard_data_out(task, pdu)
            return
        sequence = task.unsolicited if pdu.ttt == RESERVED_TAG else task.r2ts.get(pdu.ttt)
        if (
            sequence is None
            or sequence.accept(pdu.data_sn, pdu.buffer_offset, len(pdu.data), pdu.final) is not None
        ):
            self._data_sequence_error(task, pdu)
            return
        self._store_data(task, pdu.buffer_offset, pdu.data)
        if not pdu.final:
            return
        if sequence.ttt == RESERVED_TAG:
            task.unsolicited = None
        else:
            del task.r2ts[sequence.ttt]
        if not task.has_slot:
            return
        if task.data_complete and not task.r2ts:
            self._execute(task)
        else:
            self._send_r2ts(task)

    def _data_sequence_error(self, task: ScsiTask, pdu: DataOut) -> None:
        """A Data-Out out of sequence (DataSN, offset, length): Reject it and fail the
        command; with ErrorRecoveryLevel 0 there is no recovery of the sequence."""
        self._reject(pdu, RejectReason.PROTOCOL_ERROR)
        self._finish(
            task,
            ScsiStatus.CHECK_CONDITION,
            sense=build_fixed(SenseKey.ABORTED_COMMAND, Asc.DATA_PHASE_ERROR),
        )

    def _data_digest_error(self, header: bytes) -> None:
        """A PDU failed its data digest (already Rejected, RFC 7143 section 7.8). A SCSI
        Command or NOP-Out needs nothing more: the initiator retries it. A Data-Out fails
        its task, which ends with CHECK CONDITION, PROTOCOL SERVICE CRC ERROR once the
        initiator has sent the rest of the data it was asked for (ErrorRecoveryLevel 0: no
        recovery R2T)."""
        if header[0] & 0x3F != Opcode.DATA_OUT:
            return
        pdu = fastpath.decode_bhs(header, b"")
        assert isinstance(pdu, DataOut)
        self._digest_failed_data_out(pdu)

    def _digest_failed_data_out(self, pdu: DataOut) -> None:
        """The header of a Data-Out whose data failed its digest: its task is failed."""
        task = self._tasks.get(pdu.itt)
        if task is None:
            self._hold_data_out(pdu, digest_failed=True)  # its command is held
            return
        if task.phase is TaskPhase.SYNCING or task.phase is TaskPhase.DONE:
            return
        task.data_digest_failed = True
        self._discard_data_out(task, pdu)

    def _discard_data_out(self, task: ScsiTask, pdu: DataOut) -> None:
        """A Data-Out of a task whose data failed its digest: only its F bit counts, which
        ends a sequence; when none is left, the task ends."""
        if pdu.final:
            if pdu.ttt == RESERVED_TAG:
                task.unsolicited = None
            else:
                task.r2ts.pop(pdu.ttt, None)
        if task.unsolicited is None and not task.r2ts:
            self._finish(
                task,
                ScsiStatus.CHECK_CONDITION,
                sense=build_fixed(SenseKey.ABORTED_COMMAND, Asc.PROTOCOL_SERVICE_CRC_ERROR),
            )
            self.queue.forget_cancelled()  # if it was still waiting for a slot
            self._wake_writer()

    # -- the Data-Out of commands held behind a CmdSN gap -----------------------------

    def _hold_data_out(self, pdu: DataOut, *, digest_failed: bool = False) -> None:
        """Keep an unsolicited Data-Out of a held command for its delivery (any other
        Data-Out without a task is dropped)."""
        held = self._held_data.get(pdu.itt) if self._held_data else None
        if held is None or pdu.ttt != RESERVED_TAG:
            return
        if sum(len(d.data) for d, _ in held) + len(pdu.data) <= self.params.first_burst_length:
            held.append((pdu, digest_failed))
        # Else more than an unsolicited burst may carry: dropped; the sequence check fails
        # the command when it runs.

    def _replay_held_data(self, itt: int) -> None:
        """A held write was delivered: the unsolicited Data-Out that came meanwhile."""
        for data_out, digest_failed in self._held_data.pop(itt, ()):
            if digest_failed:
                self._digest_failed_data_out(data_out)
            else:
                self._on_data_out(data_out)

    def _forget_held(self, items: list[HeldPdu]) -> None:
        """Held PDUs that will never be delivered (aborted): forget their data too."""
        for _, pdu in items:
            if isinstance(pdu, ScsiCommand):
                self._held_data.pop(pdu.itt, None)


def _put(buffer: bytearray, offset: int, chunk: bytes | bytearray | memoryview) -> None:
    """Write ``chunk`` at ``offset``, growing the buffer when it goes past the end: a write
    buffer holds the data received, never more (a hole only when a later Data-Out sequence
    came first, DataSequenceInOrder=No)."""
    filled = len(buffer)
    if offset > filled:
        buffer[filled:] = bytes(offset - filled)
    buffer[offset : offset + len(chunk)] = chunk
