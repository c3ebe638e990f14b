"""A command's end: its Data-In, its status (on the last Data-In when it can ride there,
phase collapse), its queue slot given back and its statistics."""

from __future__ import annotations

import struct
import time

from iscsicore.fastpath import data_in_bhs, scsi_response_bhs
from iscsicore.fullfeature.segments import segments
from iscsicore.pdu import RESERVED_TAG, DataIn
from iscsicore.scsi.opcodes import ScsiStatus
from stargate.stats import IoKind
from stargate.tasks import ScsiTask, TaskPhase
from stargate.transport.async_events import AsyncEvents

GOOD = int(ScsiStatus.GOOD)
COMPLETED = 0  # SCSI Response: command completed at target
# Byte 1 flags of SCSI Response and Data-In (see fastpath.scsi_response_bhs/data_in_bhs)
OVERFLOW = 0x04
UNDERFLOW = 0x02
FINAL_WITH_STATUS = 0x81  # Data-In F and S bits
RESIDUAL_MAX = 0xFFFFFFFF  # the 32-bit Residual Count of a SCSI Response / Data-In


class StatusSender(AsyncEvents):
    def _finish(
        self,
        task: ScsiTask,
        status: int,
        data: bytes | bytearray | memoryview = b"",
        sense: bytes = b"",
    ) -> None:
        """Queue the task's Data-In and status, give back its slot, count it."""
        if task.phase is TaskPhase.DONE:
            return
        task.phase = TaskPhase.DONE
        if self._tasks.get(task.itt) is task:
            del self._tasks[task.itt]
        if task.has_slot:
            task.has_slot = False
            self.queue.release(task.needed, task.route.tenant)
        if not task.aborted:
            self._send_status_of(
                task.itt,
                task.command.lun,
                task.edtl,
                task.command.read,
                task.residual,
                status,
                data,
                sense,
            )
        stats = task.route.stats
        done_ns = time.perf_counter_ns()
        moved = task.needed if task.kind is IoKind.WRITE else len(data)
        stats.command_finished(task.kind, moved, done_ns - task.started_ns, status == GOOD)
        traces = stats.traces
        if traces is not None:
            received = task.started_ns
            queued = task.queued_ns or received
            executed = task.executed_ns or done_ns
            entry = (task.itt, task.cdb[0], moved, status, received, queued, executed, done_ns)
            traces.append(entry)

    def _send_status_of(
        self,
        itt: int,
        lun: int,
        edtl: int,
        read: bool,
        write_residual: tuple[bool, int] | None,
        status: int,
        data: bytes | bytearray | memoryview,
        sense: bytes,
    ) -> None:
        """Queue a command's Data-In and status (``write_residual``: fixed at arrival)."""
        sent = 0
        if write_residual is not None:
            overflow, residual = write_residual
        elif read:
            available = len(data)
            sent = min(available, edtl)
            if available > edtl:
                overflow, residual = True, available - edtl
            else:
                overflow, residual = False, edtl - sent
        else:
            # A write moved all of its EDTL (mismatches with the CDB set task.residual);
            # reporting the EDTL as residual makes Linux retry the write forever.
            overflow, residual = False, 0
        underflow = residual > 0 and not overflow
        overflow = residual > 0 and overflow
        collapse = status == GOOD and not sense
        exp_cmd_sn, max_cmd_sn = self._window()
        data_in_count = 0
        if sent:
            data_in_count = self._send_data_in(
                itt, lun, data, sent, collapse, status, overflow, underflow, residual, max_cmd_sn
            )
            if collapse:
                return
        sense_data = struct.pack(">H", len(sense)) + sense if sense else b""
        self._append_bhs(
            scsi_response_bhs(
                (OVERFLOW if overflow else 0) | (UNDERFLOW if underflow else 0),
                COMPLETED,
                status,
                len(sense_data),
                itt,
                0,
                self._stat_sn.take(),
                exp_cmd_sn,
                max_cmd_sn,
                data_in_count,
                0,
                residual,
            ),
            sense_data,
        )

    def _send_data_in(
        self,
        itt: int,
        lun: int,
        data: bytes | bytearray | memoryview,
        total: int,
        collapse: bool,
        status: int,
        overflow: bool,
        underflow: bool,
        residual: int,
        max_cmd_sn: int,
    ) -> int:
        """Queue Data-In PDUs for ``data[:total]``; the status rides on the last one when
        ``collapse``. Returns how many PDUs were queued."""
        segment = self._max_send_segment
        burst = self.params.max_burst_length
        exp_cmd_sn = self._cmd_sn_window.exp_cmd_sn
        if total <= segment and total <= burst and collapse:
            # One PDU carries data and status: the 4 KiB read case, without the loop and
            # without a DataIn object.
            self._append_bhs(
                data_in_bhs(
                    FINAL_WITH_STATUS
                    | (OVERFLOW if overflow else 0)
                    | (UNDERFLOW if underflow else 0),
                    status,
                    total,
                    lun,
                    itt,
                    RESERVED_TAG,
                    self._stat_sn.take(),
                    exp_cmd_sn,
                    max_cmd_sn,
                    0,
                    0,
                    residual,
                ),
                data if total == len(data) else memoryview(data)[:total],
            )
            return 1
        view = memoryview(data)
        count = 0
        for data_sn, offset, length, final in segments(0, total, segment, burst):
            end = offset + length
            with_status = end == total and collapse
            self._append(
                DataIn(
                    final=final,
                    status_present=with_status,
                    status=status if with_status else 0,
                    overflow=overflow and with_status,
                    underflow=underflow and with_status,
                    residual_count=residual if with_status else 0,
                    lun=lun,
                    itt=itt,
                    stat_sn=self._stat_sn.take() if with_status else 0,
                    exp_cmd_sn=exp_cmd_sn,
                    max_cmd_sn=max_cmd_sn,
                    data_sn=data_sn,
                    buffer_offset=offset,
                    data=view[offset:end],
                )
            )
            count += 1
        return count
