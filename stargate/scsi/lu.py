"""LogicalUnit: one LUN of a target (one vDisk), and the dispatcher of its commands.

``execute`` is synchronous and never raises for anything an initiator can send: command
emulation raises ``CheckCondition`` and this module turns it into CHECK CONDITION + sense.

Two collaborators plug in through small protocols, so reservations and unit attentions can
be written (stargate/scsi/pr.py, ua.py, reserve.py) independently of block emulation:

* ``ReservationChecker``: decides RESERVATION CONFLICT for every command and emulates the
  reservation commands themselves (PERSISTENT RESERVE IN/OUT, RESERVE/RELEASE 6/10).
* ``UnitAttentions``: the per-nexus queue of unit attention conditions.

Order of checks for each command (SAM-5 5.3, SPC-4 5.14): unit attention (except INQUIRY,
REPORT LUNS, REQUEST SENSE), reservation conflict, then the reservation commands go to their
engine; for the rest: supported opcode, CDB length, NACA, write protection, the command.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from collections.abc import Iterable
from typing import Protocol

from iscsicore.scsi.cdb import BLOCK_CDBS, FUA, PROTECT_MASK
from iscsicore.scsi.opcodes import ScsiOp, ScsiStatus
from iscsicore.scsi.sense import Asc, CheckCondition, FieldPointer, SenseKey
from stargate.scsi import sbc, spc, xcopy
from stargate.scsi.command import Command, CommandSpec, Nexus, ScsiResult
from stargate.scsi.modes import ModeState
from stargate.scsi.sanitize import HoldFlushUntilSanitized, SanitizeJob, Sanitizer
from stargate.scsi.vpd import BLOCK_LIMITS
from stargate.stores.base import BlockStore
from topology.vdisk import VDiskMeta

__all__ = [
    "LogicalUnit",
    "Nexus",
    "NoReservations",
    "ReservationChecker",
    "ScsiResult",
    "SimpleUnitAttentions",
    "UnitAttentions",
]

log = logging.getLogger(__name__)

AscPair = tuple[int, int]
PHYSICAL_BLOCK_SIZE = 4096
_NACA = 0x04  # NACA bit of the CONTROL byte, the last byte of every CDB
# Commands a failed sanitize refuses until EXIT FAILURE MODE or a successful sanitize.
_MEDIUM_ACCESS: frozenset[int] = sbc.READ_OPCODES | sbc.MEDIUM_WRITERS

# The plain READ/WRITE fast path (`LogicalUnit._fast_read_write`) for READ/WRITE(10) and
# (16): opcode -> (the table's (flags, lba, blocks, control) unpacker, CDB length, is a write)
_FAST_READ_WRITE: dict[int, tuple[struct.Struct, int, bool]] = {
    int(op): (BLOCK_CDBS[op].fields, BLOCK_CDBS[op].length, is_write)
    for op, is_write in (
        (ScsiOp.READ_10, False),
        (ScsiOp.WRITE_10, True),
        (ScsiOp.READ_16, False),
        (ScsiOp.WRITE_16, True),
    )
}
_MAX_TRANSFER_BLOCKS = BLOCK_LIMITS.max_transfer_blocks
_GOOD_STATUS = ScsiStatus.GOOD
_GOOD_WRITTEN = ScsiResult(_GOOD_STATUS)  # immutable: shared by every plain write
_GOOD_THEN_SYNC = ScsiResult(_GOOD_STATUS, needs_sync=True)

# The opcodes a ReservationChecker may take over by listing them in ``handled_opcodes``.
RESERVATION_OPCODES: frozenset[int] = frozenset(
    {
        ScsiOp.PERSISTENT_RESERVE_IN,
        ScsiOp.PERSISTENT_RESERVE_OUT,
        ScsiOp.RESERVE_6,
        ScsiOp.RELEASE_6,
        ScsiOp.RESERVE_10,
        ScsiOp.RELEASE_10,
    }
)


class ReservationChecker(Protocol):
    """Reservation state of one logical unit (SPC-2 RESERVE/RELEASE and SPC-4 PR).

    ``handled_opcodes``: the reservation commands this object emulates; the logical unit
    routes those opcodes to ``execute`` (after the unit-attention check and ``check``).
    ``execute`` may raise ``CheckCondition``; it is turned into sense like any command's.
    """

    handled_opcodes: frozenset[int]

    def check(self, nexus: Nexus, cdb: bytes) -> bool:
        """True when ``cdb`` from ``nexus`` must end in RESERVATION CONFLICT."""
        ...

    def execute(
        self, cdb: bytes, data_out: bytes | bytearray | memoryview, nexus: Nexus
    ) -> ScsiResult: ...

    def nexus_lost(self, nexus: Nexus) -> None:
        """The I_T nexus is gone (session closed/failed): SPC-2 reservations held by it go."""
        ...

    def logical_unit_reset(self, by: Nexus | None) -> None:
        """LOGICAL UNIT RESET / TARGET RESET: releases SPC-2 reservations, keeps PR."""
        ...


class UnitAttentions(Protocol):
    """Unit attention conditions, queued per I_T nexus (SPC-4 5.14 / SAM-5 5.8.7).

    Codes are (asc, ascq) pairs; ``Asc.X.value`` gives one.
    """

    def pending(self, nexus: Nexus) -> AscPair | None:
        """The oldest condition queued for ``nexus`` (not removed); None if none."""
        ...

    def consume(self, nexus: Nexus) -> AscPair | None:
        """Remove and return the oldest condition: it has been reported."""
        ...

    def establish(
        self, code: AscPair, *, nexus: Nexus | None = None, exclude: Nexus | None = None
    ) -> None:
        """Queue ``code`` for ``nexus``, or for every known nexus except ``exclude``."""
        ...

    def clear(self, nexus: Nexus, code: AscPair) -> None:
        """Drop ``code`` unreported (REPORT LUNS clears REPORTED LUNS DATA HAS CHANGED)."""
        ...

    def nexus_lost(self, nexus: Nexus) -> None: ...


class NoReservations:
    """No reservation support: nothing conflicts and no reservation command is emulated
    (they answer INVALID COMMAND OPERATION CODE like any unknown opcode)."""

    handled_opcodes: frozenset[int] = frozenset()

    def check(self, nexus: Nexus, cdb: bytes) -> bool:
        return False

    def execute(
        self, cdb: bytes, data_out: bytes | bytearray | memoryview, nexus: Nexus
    ) -> ScsiResult:
        raise CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.INVALID_COMMAND_OPERATION_CODE)

    def nexus_lost(self, nexus: Nexus) -> None:
        pass

    def logical_unit_reset(self, by: Nexus | None) -> None:
        pass


class SimpleUnitAttentions:
    """A FIFO of conditions per nexus. A nexus seen for the first time gets POWER ON, RESET,
    OR BUS DEVICE RESET OCCURRED; one seen again after it was lost gets I_T NEXUS LOSS
    OCCURRED. Duplicate queued codes are collapsed (SAM-5 allows it and initiators only
    need to learn of each event once)."""

    MAX_QUEUED = 16

    def __init__(self) -> None:
        self._queues: dict[Nexus, deque[AscPair]] = {}
        self._lost: set[Nexus] = set()

    def _queue(self, nexus: Nexus) -> deque[AscPair]:
        queue = self._queues.get(nexus)
        if queue is None:
            first = Asc.I_T_NEXUS_LOSS_OCCURRED if nexus in self._lost else Asc.POWER_ON_RESET
            self._lost.discard(nexus)
            queue = self._queues[nexus] = deque([first.value], maxlen=self.MAX_QUEUED)
        return queue

    def pending(self, nexus: Nexus) -> AscPair | None:
        queue = self._queue(nexus)
        return queue[0] if queue else None

    def consume(self, nexus: Nexus) -> AscPair | None:
        queue = self._queue(nexus)
        return queue.popleft() if queue else None

    def establish(
        self, code: AscPair, *, nexus: Nexus | None = None, exclude: Nexus | None = None
    ) -> None:
        targets: Iterable[Nexus] = [nexus] if nexus is not None else list(self._queues)
        for target in targets:
            if target == exclude:
                continue
            queue = self._queue(target)
            if code not in queue:
                queue.append(code)

    def clear(self, nexus: Nexus, code: AscPair) -> None:
        queue = self._queues.get(nexus)
        if queue is not None and code in queue:
            queue.remove(code)

    def nexus_lost(self, nexus: Nexus) -> None:
        if self._queues.pop(nexus, None) is not None:
            self._lost.add(nexus)


def _build_dispatch() -> dict[int, CommandSpec]:
    table: dict[int, CommandSpec] = {}
    for module_table in (spc.COMMANDS, sbc.COMMANDS, xcopy.COMMANDS):
        table.update(module_table)
    return table


_DISPATCH: dict[int, CommandSpec] = _build_dispatch()


class LogicalUnit:
    """One vDisk as a LUN of a target: a direct-access block device over a ``BlockStore``.

    Its unit attentions and reservations are its own (per I_T_L nexus): another LUN of the
    same target never sees them. ``target_luns``: how many LUNs its target has (REPORT
    LUNS lists 0 .. target_luns - 1, whichever LUN it is asked through)."""

    def __init__(
        self,
        store: BlockStore,
        meta: VDiskMeta,
        *,
        reservations: ReservationChecker | None = None,
        unit_attentions: UnitAttentions | None = None,
        relative_port_id: int = 1,
        copy_target_resolver: xcopy.CopyTargetResolver | None = None,
        read_only: bool = False,
        target_luns: int = 1,
    ) -> None:
        self.store = store
        self.target_luns = target_luns
        self.meta = meta
        self._block_size = store.block_size  # fixed for the life of a vDisk
        self.reservations: ReservationChecker = reservations or NoReservations()
        foreign = self.reservations.handled_opcodes - RESERVATION_OPCODES
        if foreign:
            raise ValueError(f"reservation engine claims other opcodes: {sorted(foreign)}")
        self.unit_attentions: UnitAttentions = unit_attentions or SimpleUnitAttentions()
        self.modes = ModeState()
        self.relative_port_id = relative_port_id
        # EXTENDED COPY reaches other vDisks through this (designator -> unit); None: self only.
        self.copy_target_resolver = copy_target_resolver
        self.copy_results = xcopy.CopyResults()
        self.read_only = read_only
        self.sanitizer = Sanitizer()
        self._store_while_sanitizing: BlockStore | None = None

    # ---- geometry -------------------------------------------------------------------
    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def block_count(self) -> int:
        return self.store.size // self._block_size

    @property
    def write_protected(self) -> bool:
        """Read-only vDisk, or software write protect (SWP) set in the control mode page."""
        return self.read_only or self.modes.software_write_protect

    @property
    def blocks_per_physical_block(self) -> int:
        """Logical blocks per 4 KiB "physical" block: the page and hole-punch granule."""
        return max(1, PHYSICAL_BLOCK_SIZE // self.block_size)

    # ---- the command path ---------------------------------------------------------------
    def supported_commands(self) -> dict[int, CommandSpec]:
        """Every opcode this unit answers, reservation commands included when emulated."""
        table = dict(_DISPATCH)
        for opcode in self.reservations.handled_opcodes:
            table[opcode] = CommandSpec(
                name=ScsiOp(opcode).name,
                handler=_reservation_handler,
                cdb_length=spc.reservation_cdb_length(opcode),
            )
        return table

    def execute(
        self, cdb: bytes, data_out: bytes | bytearray | memoryview, nexus: Nexus
    ) -> ScsiResult:
        """Run one command to completion; never raises for bad input."""
        try:
            fast = _FAST_READ_WRITE.get(cdb[0]) if cdb else None
            if fast is not None:
                result = self._fast_read_write(cdb, data_out, nexus, *fast)
                if result is not None:
                    return result
            return self._execute(bytes(cdb), data_out, nexus)
        except CheckCondition as condition:
            return self.check_condition(condition)
        except OSError as exc:
            log.error("I/O error on vDisk %s: %s", self.meta.vdisk_id, exc)
            reading = bool(cdb) and cdb[0] in sbc.READ_OPCODES
            code = Asc.UNRECOVERED_READ_ERROR if reading else Asc.WRITE_ERROR
            return self.check_condition(CheckCondition(SenseKey.MEDIUM_ERROR, code))
        except Exception:  # emulation bug: answer like a failing device, keep serving
            log.exception("internal error executing CDB %s", bytes(cdb).hex())
            return self.check_condition(
                CheckCondition(SenseKey.HARDWARE_ERROR, Asc.INTERNAL_TARGET_FAILURE)
            )

    def _execute(
        self, cdb: bytes, data_out: bytes | bytearray | memoryview, nexus: Nexus
    ) -> ScsiResult:
        if not cdb:
            raise CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.INVALID_COMMAND_OPERATION_CODE)
        opcode = cdb[0]
        handled_by_reservations = opcode in self.reservations.handled_opcodes
        spec = _DISPATCH.get(opcode)
        reports_ua = spec.reports_unit_attention if spec is not None else True
        if reports_ua:
            code = self.unit_attentions.consume(nexus)
            if code is not None:
                return self.check_condition(CheckCondition(SenseKey.UNIT_ATTENTION, code))
        if self._store_while_sanitizing is not None and not self.sanitizer.in_progress:
            self.store, self._store_while_sanitizing = self._store_while_sanitizing, None
        refusal = self.sanitizer.refusal(opcode, opcode in _MEDIUM_ACCESS)
        if refusal is not None:
            raise refusal
        if self.reservations.check(nexus, cdb):
            return ScsiResult(ScsiStatus.RESERVATION_CONFLICT)
        if handled_by_reservations:
            return self.reservations.execute(cdb, data_out, nexus)
        if spec is None:
            raise CheckCondition(
                SenseKey.ILLEGAL_REQUEST,
                Asc.INVALID_COMMAND_OPERATION_CODE,
                field_pointer=FieldPointer(in_cdb=True, byte=0),
            )
        if len(cdb) < spec.cdb_length:
            raise CheckCondition(
                SenseKey.ILLEGAL_REQUEST,
                Asc.INVALID_FIELD_IN_CDB,
                field_pointer=FieldPointer(in_cdb=True, byte=len(cdb)),
            )
        if cdb[spec.cdb_length - 1] & _NACA:  # no ACA support (SAM-5 5.9.1.2)
            raise CheckCondition(
                SenseKey.ILLEGAL_REQUEST,
                Asc.INVALID_FIELD_IN_CDB,
                field_pointer=FieldPointer(in_cdb=True, byte=spec.cdb_length - 1, bit=2),
            )
        if opcode in sbc.MEDIUM_WRITERS and self.write_protected:
            raise CheckCondition(SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED)
        return spec.handler(self, Command(cdb, data_out, nexus))

    def _fast_read_write(
        self,
        cdb: bytes,
        data_out: bytes | bytearray | memoryview,
        nexus: Nexus,
        layout: struct.Struct,
        cdb_length: int,
        is_write: bool,
    ) -> ScsiResult | None:
        """READ/WRITE(10/16) in one step, when nothing unusual is in play; None: use the
        general path (`_execute`), which then answers exactly as it always does.

        Only a valid CDB (no protection, no NACA, blocks in range and under the transfer
        limit, all the Data-Out there) on a unit with no sanitize state and not write
        protected gets here; everything checked before the unit attention is side-effect
        free, so falling back repeats nothing. What follows keeps `_execute`'s order: unit
        attention, reservation conflict, then the transfer (as `sbc.read`/`sbc.write`).
        """
        if len(cdb) < cdb_length:
            return None
        flags, lba, blocks, control = layout.unpack_from(cdb)
        store = self.store
        if (
            flags & PROTECT_MASK
            or control & _NACA
            or not 0 < blocks <= _MAX_TRANSFER_BLOCKS
            or (lba + blocks) * self._block_size > store.size
            or self._store_while_sanitizing is not None
            or self.sanitizer.job is not None
            or self.sanitizer.failed
        ):
            return None
        block = self._block_size
        length = blocks * block
        if is_write and (
            self.read_only
            or self.modes.software_write_protect
            or type(data_out) is memoryview
            or len(data_out) < length
        ):
            return None
        code = self.unit_attentions.consume(nexus)
        if code is not None:
            return self.check_condition(CheckCondition(SenseKey.UNIT_ATTENTION, code))
        if self.reservations.check(nexus, cdb):
            return ScsiResult(ScsiStatus.RESERVATION_CONFLICT)
        if not is_write:
            return ScsiResult(_GOOD_STATUS, store.read(lba * block, length))
        store.write(
            lba * block, data_out if len(data_out) == length else memoryview(data_out)[:length]
        )
        if flags & FUA or not self.modes.write_cache_enabled:
            return _GOOD_THEN_SYNC
        return _GOOD_WRITTEN

    def check_condition(self, condition: CheckCondition) -> ScsiResult:
        """CHECK CONDITION with sense in the format the control mode page selects."""
        return ScsiResult(
            ScsiStatus.CHECK_CONDITION,
            sense=condition.sense(descriptor_format=self.modes.descriptor_sense),
        )

    def hold_flushes_until(self, job: SanitizeJob) -> None:
        """A SANITIZE without IMMED: its needs_sync completion waits for ``job`` (see
        `HoldFlushUntilSanitized`); the real store is back once the job has ended."""
        if self._store_while_sanitizing is None:
            self._store_while_sanitizing = self.store
        self.store = HoldFlushUntilSanitized(self._store_while_sanitizing, job)

    # ---- task management and events -------------------------------------------------------
    def nexus_lost(self, nexus: Nexus) -> None:
        """The session behind ``nexus`` ended: drop its unit attentions and SPC-2 holds."""
        self.unit_attentions.nexus_lost(nexus)
        self.reservations.nexus_lost(nexus)

    def logical_unit_reset(self, by: Nexus | None = None) -> None:
        """LOGICAL UNIT RESET (or TARGET RESET / COLD RESET): mode pages back to defaults,
        SPC-2 reservations released, BUS DEVICE RESET FUNCTION OCCURRED for every nexus,
        the requester's included (SAM-5 6.4: "a unit attention condition for all I_T
        nexuses"; LIO does the same). A running sanitize goes on (SBC-3 4.11). Aborting
        tasks is the queue's job."""
        self.modes = ModeState()
        self.reservations.logical_unit_reset(by)
        if by is not None:
            self.unit_attentions.establish(Asc.BUS_DEVICE_RESET.value, nexus=by)
        self.unit_attentions.establish(Asc.BUS_DEVICE_RESET.value)

    def resize(self, size: int) -> None:
        """Grow or shrink the medium; every nexus learns CAPACITY DATA HAS CHANGED."""
        self.store.resize(size)
        self.meta.size = size
        self.unit_attentions.establish(Asc.CAPACITY_DATA_HAS_CHANGED.value)


def _reservation_handler(lu: LogicalUnit, command: Command) -> ScsiResult:
    return lu.reservations.execute(command.cdb, command.data_out, command.nexus)
