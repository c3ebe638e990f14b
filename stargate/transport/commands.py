"""SCSI Command PDUs: the plain READ/WRITE fast path, and the general path (a task with a
queue slot, its Data-Out, then execution). The CmdSN was checked by `dispatch`."""

from __future__ import annotations

import time

from iscsicore.fastpath import data_in_bhs, scsi_response_bhs
from iscsicore.framing import append_segments
from iscsicore.pdu import RESERVED_TAG, RejectReason, ScsiCommand
from iscsicore.scsi.cdb import BLOCK_CDBS
from iscsicore.scsi.opcodes import ScsiOp, ScsiStatus
from iscsicore.wire import full_cdb
from stargate.queue import Admission
from stargate.scsi import absent_lun
from stargate.stats import IoKind
from stargate.tasks import ScsiTask, TaskPhase
from stargate.transport.config import MAX_TRANSFER_BYTES
from stargate.transport.data_in import COMPLETED, FINAL_WITH_STATUS, GOOD
from stargate.transport.data_out import DataOutReceiver
from stargate.transport.lun_routes import LunRoute

# The commands `_run_plain` may take: READ/WRITE(10/16); for writes, where the CDB says
# how many blocks (to compare with the EDTL).
PLAIN_READS = frozenset({int(ScsiOp.READ_10), int(ScsiOp.READ_16)})
PLAIN_WRITE_BLOCKS = {
    int(op): BLOCK_CDBS[op].blocks_field for op in (ScsiOp.WRITE_10, ScsiOp.WRITE_16)
}


class Commands(DataOutReceiver):
    def _on_scsi_command(self, command: ScsiCommand) -> None:
        if command.itt in self._tasks:
            self._reject(command, RejectReason.TASK_IN_PROGRESS)
            return
        assert self.routes is not None
        route = self.routes.of(command.lun)
        if (
            route is not None
            and not command.ahs
            and not self._execution_faults
            and self._digest_tamper is None
        ):
            cdb = command.cdb
            opcode = cdb[0]
            if opcode in PLAIN_READS:
                if (
                    command.read
                    and not command.write
                    and self.queue.admit_now(route.queue_key, 0, route.tenant)
                ):
                    self._run_plain(command, cdb, b"", IoKind.READ, 0, route)
                    return
            elif opcode in PLAIN_WRITE_BLOCKS:
                edtl = command.expected_data_transfer_length
                if (
                    command.write
                    and command.final
                    and not command.read
                    and 0 < edtl <= MAX_TRANSFER_BYTES
                    and len(command.data) == edtl
                    and PLAIN_WRITE_BLOCKS[opcode].unpack_from(cdb)[0] * self.block_size == edtl
                    and self.queue.admit_now(route.queue_key, edtl, route.tenant)
                ):
                    self._run_plain(command, cdb, command.data, IoKind.WRITE, edtl, route)
                    return
        cdb = full_cdb(command) if command.ahs else command.cdb
        # A LUN the target lacks: answered here, charged to LUN 0; REPORT LUNS runs on it.
        task = ScsiTask(self, command, cdb, route or self.routes.routes[0])
        stats = task.route.stats
        stats.command_started()
        if route is None and cdb[0] != ScsiOp.REPORT_LUNS:
            result = absent_lun.answer(cdb)
            self._finish(task, result.status, result.data, result.sense)
            return
        if (command.write or task.kind is IoKind.WRITE) and not self._plan_data_out(task):
            return
        if (task.needed or task.unsolicited is not None) and command.data:
            self._store_data(task, 0, command.data)  # immediate data
        admission = self.queue.admit(task.route.queue_key, task)
        if admission is Admission.RUN:
            task.has_slot = True
            if task.data_complete:
                # Uncontended and no data to wait for: run inline, never registered (nothing
                # can refer to it before it completes, unless it goes on to sync).
                task.phase = TaskPhase.RECEIVING
                task.queued_ns = task.started_ns
                self._allocate_buffer(task)
                self._execute(task)
                return
            self._tasks[task.itt] = task
            self._slot_granted(task)
            return
        self._tasks[task.itt] = task
        if admission is Admission.FULL:
            stats.task_set_full += 1
            self._finish(task, ScsiStatus.TASK_SET_FULL)
        else:
            stats.queued_waiting += 1

    def _run_plain(
        self,
        command: ScsiCommand,
        cdb: bytes,
        data_out: bytes | bytearray | memoryview,
        kind: IoKind,
        buffer_bytes: int,
        route: LunRoute,
    ) -> None:
        """A READ/WRITE(10/16) on one of the target's LUNs that already holds its queue
        slot (``admit_now``) and all its data (a write's EDTL is exactly its CDB's length,
        all immediate): run at once, without a task object. Never registered, as the
        general path's inline commands: nothing can refer to it before its status. Answered
        exactly as `_finish` would answer the same command (a sync, when needed, takes the
        general route)."""
        started_ns = time.perf_counter_ns()
        result = route.lu.execute(cdb, data_out, self.nexus)
        executed_ns = time.perf_counter_ns()
        status = result.status
        stats = route.stats
        if result.needs_sync and status == GOOD:
            stats.command_started()
            task = ScsiTask(self, command, cdb, route)
            task.started_ns = task.queued_ns = started_ns
            task.executed_ns = executed_ns
            task.has_slot = True
            task.needed = task.received = buffer_bytes
            self._start_sync(task, result)
            return
        self.queue.release(buffer_bytes, route.tenant)
        data = result.data
        edtl = command.expected_data_transfer_length
        if status == GOOD and kind is IoKind.WRITE:
            # All of the EDTL written, nothing to report but GOOD (as `_send_status_of`).
            exp_cmd_sn, max_cmd_sn = self._window()
            append_segments(
                self._out,
                scsi_response_bhs(
                    0,
                    COMPLETED,
                    GOOD,
                    0,
                    command.itt,
                    0,
                    self._stat_sn.take(),
                    exp_cmd_sn,
                    max_cmd_sn,
                    0,
                    0,
                    0,
                ),
                b"",
                b"",
                self._header_digest,
                self._data_digest,
            )
        elif (
            status == GOOD
            and 0 < edtl == len(data)
            and edtl <= self._max_send_segment
            and edtl <= self.params.max_burst_length
        ):
            # Exactly the EDTL read, in one Data-In carrying the status (as `_send_data_in`).
            exp_cmd_sn, max_cmd_sn = self._window()
            append_segments(
                self._out,
                data_in_bhs(
                    FINAL_WITH_STATUS,
                    GOOD,
                    edtl,
                    command.lun,
                    command.itt,
                    RESERVED_TAG,
                    self._stat_sn.take(),
                    exp_cmd_sn,
                    max_cmd_sn,
                    0,
                    0,
                    0,
                ),
                b"",
                data,
                self._header_digest,
                self._data_digest,
            )
        else:
            self._send_status_of(
                command.itt, command.lun, edtl, command.read, None, status, data, result.sense
            )
        done_ns = time.perf_counter_ns()
        moved = buffer_bytes if kind is IoKind.WRITE else len(data)
        stats.command_completed(kind, moved, done_ns - started_ns, status == GOOD)
        traces = stats.traces
        if traces is not None:
            traces.append(
                (command.itt, cdb[0], moved, status, started_ns, started_ns, executed_ns, done_ns)
            )
