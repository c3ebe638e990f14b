"""Running a command that holds its slot and all its data: through the logical unit,
then an fdatasync in a worker thread when the result needs one; or as a fault says
(delayed, hung, cut short, dropped halfway through its Data-In)."""

from __future__ import annotations

import logging
import time

import trio

from faults.model import DropMode, Fault, FaultKind
from iscsicore.scsi.opcodes import ScsiStatus
from iscsicore.scsi.sense import Asc, SenseKey, build_fixed
from stargate.target import ScsiResultLike
from stargate.tasks import ScsiTask, TaskPhase
from stargate.transport.data_in import GOOD
from stargate.transport.fault_hooks import FAULT_RNG, FaultEffects

log = logging.getLogger(__name__)


class Execution(FaultEffects):
    def _execute(self, task: ScsiTask) -> None:
        if self._execution_faults:
            fault = self._execution_faults.pop(task.itt, None)
            if fault is not None:
                self._execute_faulted(task, fault)
                return
        data_out: bytes | bytearray | memoryview = task.buffer if task.buffer is not None else b""
        result = task.route.lu.execute(task.cdb, data_out, self.nexus)
        task.executed_ns = time.perf_counter_ns()
        if result.needs_sync and result.status == GOOD:
            self._start_sync(task, result)
            return
        self._finish(task, result.status, result.data, result.sense)

    def _start_sync(self, task: ScsiTask, result: ScsiResultLike) -> None:
        task.phase = TaskPhase.SYNCING
        self._tasks[task.itt] = task  # abortable (its status suppressed) while syncing
        assert self._nursery is not None
        self._nursery.start_soon(self._sync_then_finish, task, result)

    async def _sync_then_finish(self, task: ScsiTask, result: ScsiResultLike) -> None:
        store = task.route.lu.store
        try:
            # Shielded: a write the initiator may already count on is synced and answered
            # (if the connection still stands) even while the connection shuts down.
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(store.sync)
        except OSError as error:
            log.error("fdatasync failed on %s: %s", task.route.vdisk_id, error)
            self._finish(
                task,
                ScsiStatus.CHECK_CONDITION,
                sense=build_fixed(SenseKey.MEDIUM_ERROR, Asc.WRITE_ERROR),
            )
        else:
            self._finish(task, result.status, result.data, result.sense)
        self._wake_writer()

    def _execute_faulted(self, task: ScsiTask, fault: Fault) -> None:
        data_out: bytes | bytearray | memoryview = task.buffer if task.buffer is not None else b""
        result = task.route.lu.execute(task.cdb, data_out, self.nexus)
        task.executed_ns = time.perf_counter_ns()
        kind = fault.kind
        if kind is FaultKind.SHORT_TRANSFER:
            data = result.data
            keep = int(len(data) * fault.fraction) // self.block_size * self.block_size
            self._finish(task, result.status, memoryview(data)[:keep], result.sense)
            return
        task.phase = TaskPhase.HELD
        self._tasks[task.itt] = task  # abortable; ended with the connection
        if kind is FaultKind.DROP_MID_DATA_IN:
            data = result.data
            half = min(len(data), task.edtl) // 2
            if half:
                _, max_cmd_sn = self._window()
                self._send_data_in(
                    task.itt, task.command.lun, data, half, False, GOOD, False, False, 0, max_cmd_sn
                )
            # An orderly close: a reset would make the peer's kernel drop the half sent.
            self.drop_by_fault(DropMode.CLOSE)
            return
        if kind is FaultKind.HANG or self._nursery is None:
            return
        self._nursery.start_soon(self._finish_later, task, result, fault.delay.draw(FAULT_RNG))

    async def _finish_later(self, task: ScsiTask, result: ScsiResultLike, seconds: float) -> None:
        await trio.sleep(seconds)  # only this command waits; the event loop goes on
        if task.phase is not TaskPhase.HELD:
            return  # aborted meanwhile
        if result.needs_sync and result.status == GOOD:
            task.phase = TaskPhase.SYNCING
            await self._sync_then_finish(task, result)
            return
        self._finish(task, result.status, result.data, result.sense)
        self._wake_writer()
