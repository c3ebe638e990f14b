"""SANITIZE (SBC-3 5.30) for a thin-provisioned vDisk.

* BLOCK ERASE deallocates every block (hole punching): the thin-provisioning way to make
  the old data unreadable; blocks then read as zeros (LBPRZ) and GET LBA STATUS reports
  them deallocated.
* OVERWRITE writes the initialization pattern over every block, OVERWRITE COUNT times
  (inverted between passes if INVERT). It really writes, zeros included: punching a hole
  would only free the host extents, leaving the old bytes on the host's medium.
* EXIT FAILURE MODE leaves the failed state a sanitize that hit an I/O error left behind.
* CRYPTOGRAPHIC ERASE is not offered: vDisks are not encrypted, there is no key to change.

The operation runs in a worker thread, so the event loop keeps serving every other vDisk
and every other command of this one; those get NOT READY, SANITIZE IN PROGRESS (with a
progress indication) until it ends. Overwrites are paced (``DEFAULT_OVERWRITE_RATE``): a
sanitize is background work and must not take all of the CVM's disk bandwidth from the
foreground I/O of its other vDisks. Without IMMED the status waits for the end; see
``HoldFlushUntilSanitized``.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

from iscsicore.scsi.opcodes import ScsiOp, ScsiStatus
from iscsicore.scsi.sense import (
    Asc,
    CheckCondition,
    ProgressIndication,
    SenseKey,
    invalid_field_in_cdb,
)
from stargate.scsi.command import GOOD, Command, ScsiResult
from stargate.stores.base import BlockStore, Extent

if TYPE_CHECKING:
    from stargate.scsi.lu import LogicalUnit

log = logging.getLogger(__name__)

DEFAULT_OVERWRITE_RATE = 32 << 20  # bytes per second
_OVERWRITE_CHUNK = 1 << 20
_ERASE_CHUNK = 1 << 30  # hole punching is metadata work: large steps, still interruptible
_PARAMETER_HEADER = 4
_SANITIZE_COMMAND_FAILED = (0x31, 0x03)

# Commands a device server still runs while a sanitize is in progress (SBC-3 4.11).
ALLOWED_WHILE_SANITIZING: frozenset[int] = frozenset(
    {ScsiOp.INQUIRY, ScsiOp.REPORT_LUNS, ScsiOp.REQUEST_SENSE}
)


class SanitizeAction(IntEnum):
    OVERWRITE = 0x01
    BLOCK_ERASE = 0x02
    EXIT_FAILURE_MODE = 0x1F


@dataclass(frozen=True, slots=True)
class OverwritePlan:
    """One logical block of the initialization pattern, and how to apply it."""

    block_pattern: bytes
    passes: int
    invert: bool

    def pattern_for_pass(self, index: int) -> bytes:
        if self.invert and index % 2:
            return bytes(byte ^ 0xFF for byte in self.block_pattern)
        return self.block_pattern


class SanitizeJob:
    """One sanitize operation, run by a daemon thread against the store."""

    def __init__(
        self, store: BlockStore, action: SanitizeAction, plan: OverwritePlan | None, rate: int
    ) -> None:
        self._store = store
        self._action = action
        self._plan = plan
        self._rate = rate
        self._size = store.size
        passes = plan.passes if plan is not None else 1
        self._total = max(1, self._size * passes)
        self._done_bytes = 0
        self._finished = threading.Event()
        self.error: OSError | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"sanitize-{action.name.lower()}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    @property
    def fraction_done(self) -> float:
        return self._done_bytes / self._total

    def wait(self, timeout: float | None = None) -> bool:
        return self._finished.wait(timeout)

    def _run(self) -> None:
        try:
            if self._plan is None:
                self._erase()
            else:
                for index in range(self._plan.passes):
                    self._overwrite(self._plan.pattern_for_pass(index))
        except OSError as error:
            log.error("sanitize %s failed: %s", self._action.name, error)
            self.error = error
        finally:
            self._finished.set()

    def _erase(self) -> None:
        for offset in range(0, self._size, _ERASE_CHUNK):
            length = min(_ERASE_CHUNK, self._size - offset)
            self._store.punch_hole(offset, length)
            self._done_bytes += length

    def _overwrite(self, block_pattern: bytes) -> None:
        chunk = block_pattern * max(1, _OVERWRITE_CHUNK // len(block_pattern))
        started, written = time.monotonic(), 0
        for offset in range(0, self._size, len(chunk)):
            piece = min(len(chunk), self._size - offset)
            self._store.write(offset, memoryview(chunk)[:piece])
            written += piece
            self._done_bytes += piece
            ahead = written / self._rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)


class HoldFlushUntilSanitized:
    """Stands in for the logical unit's store while a SANITIZE without IMMED runs.

    The transport finishes a ``needs_sync`` result by calling ``store.sync()`` in a worker
    thread before it sends the status; waiting for the sanitize there holds the SANITIZE
    status back until the operation ends, without blocking the event loop. Everything else
    goes to the real store.
    """

    def __init__(self, store: BlockStore, job: SanitizeJob) -> None:
        self.wrapped = store
        self._job = job

    def sync(self) -> None:
        self._job.wait()
        if self._job.error is not None:
            raise self._job.error
        self.wrapped.sync()

    # Everything else is the real store's (no medium access reaches it while sanitizing).
    @property
    def size(self) -> int:
        return self.wrapped.size

    @property
    def block_size(self) -> int:
        return self.wrapped.block_size

    def read(self, offset: int, length: int) -> bytes:
        return self.wrapped.read(offset, length)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self.wrapped.write(offset, data)

    def punch_hole(self, offset: int, length: int) -> None:
        self.wrapped.punch_hole(offset, length)

    def allocated_extents(self, offset: int, length: int) -> list[Extent]:
        return self.wrapped.allocated_extents(offset, length)

    def resize(self, size: int) -> None:
        self.wrapped.resize(size)

    def close(self) -> None:
        self.wrapped.close()


class Sanitizer:
    """The sanitize state of one logical unit: the running job, or a failure to report."""

    def __init__(self, overwrite_rate: int = DEFAULT_OVERWRITE_RATE) -> None:
        self.overwrite_rate = overwrite_rate
        self.job: SanitizeJob | None = None
        self.failed = False

    @property
    def in_progress(self) -> bool:
        return self.job is not None and not self.job.finished

    def in_progress_condition(self) -> CheckCondition:
        fraction = self.job.fraction_done if self.job is not None else 0.0
        return CheckCondition(
            SenseKey.NOT_READY,
            Asc.LOGICAL_UNIT_NOT_READY_SANITIZE_IN_PROGRESS,
            field_pointer=ProgressIndication(fraction),
        )

    def refusal(self, opcode: int, medium_access: bool) -> CheckCondition | None:
        """Why a command cannot run now, if it cannot (SBC-3 4.11)."""
        self._collect_finished_job()
        if opcode in ALLOWED_WHILE_SANITIZING:
            return None
        if self.in_progress:
            return self.in_progress_condition()
        if self.failed and medium_access and opcode != ScsiOp.SANITIZE:
            return CheckCondition(SenseKey.MEDIUM_ERROR, _SANITIZE_COMMAND_FAILED)
        return None

    def _collect_finished_job(self) -> None:
        if self.job is not None and self.job.finished:
            self.failed = self.job.error is not None
            self.job = None

    def start(
        self, store: BlockStore, action: SanitizeAction, plan: OverwritePlan | None
    ) -> SanitizeJob:
        self.failed = False
        self.job = SanitizeJob(store, action, plan, self.overwrite_rate)
        self.job.start()
        return self.job


def _overwrite_plan(lu: LogicalUnit, command: Command, parameter_length: int) -> OverwritePlan:
    """The OVERWRITE parameter list (SBC-3 5.30.2.3). libiscsi, like SBC-3's "shall
    terminate ... INVALID FIELD IN CDB" for the lengths, expects INVALID FIELD IN CDB for
    every inconsistency, parameter data included."""
    block = lu.block_size
    if not _PARAMETER_HEADER < parameter_length <= block + _PARAMETER_HEADER:
        raise invalid_field_in_cdb(7)
    data = bytes(memoryview(command.data_out).cast("B")[:parameter_length])
    if len(data) < parameter_length:
        raise invalid_field_in_cdb(7)
    passes = data[0] & 0x1F
    (pattern_length,) = struct.unpack_from(">H", data, 2)
    if passes == 0 or pattern_length == 0 or pattern_length > block:
        raise invalid_field_in_cdb(7)
    if pattern_length != parameter_length - _PARAMETER_HEADER:
        raise invalid_field_in_cdb(7)
    pattern = data[_PARAMETER_HEADER:]
    repeats = -(-block // len(pattern))
    return OverwritePlan((pattern * repeats)[:block], passes, invert=bool(data[0] & 0x80))


def sanitize(lu: LogicalUnit, command: Command) -> ScsiResult:
    cdb = command.cdb
    if cdb[1] & 0x40:
        raise invalid_field_in_cdb(1, 6)
    for reserved in range(2, 7):
        if cdb[reserved]:
            raise invalid_field_in_cdb(reserved)
    try:
        action = SanitizeAction(cdb[1] & 0x1F)
    except ValueError:
        raise invalid_field_in_cdb(1, 4) from None
    (parameter_length,) = struct.unpack_from(">H", cdb, 7)
    if action is not SanitizeAction.OVERWRITE and parameter_length:
        raise invalid_field_in_cdb(7)
    if action is SanitizeAction.EXIT_FAILURE_MODE:
        lu.sanitizer.failed = False
        return GOOD
    plan = (
        _overwrite_plan(lu, command, parameter_length)
        if action is SanitizeAction.OVERWRITE
        else None
    )
    job = lu.sanitizer.start(lu.store, action, plan)
    if cdb[1] & 0x80:  # IMMED: status now, progress through NOT READY sense
        return GOOD
    lu.hold_flushes_until(job)
    return ScsiResult(ScsiStatus.GOOD, needs_sync=True)


def request_sense_while_sanitizing(lu: LogicalUnit) -> CheckCondition | None:
    """REQUEST SENSE reports the progress of a running sanitize (SPC-4 6.39)."""
    return lu.sanitizer.in_progress_condition() if lu.sanitizer.in_progress else None


SANITIZE_USAGE: dict[int, bytes] = {
    action: bytes([ScsiOp.SANITIZE, 0xA0 | action, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x00])
    for action in SanitizeAction
}
