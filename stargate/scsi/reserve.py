"""SPC-2 RESERVE/RELEASE (6) and (10), and the logical unit's reservation checker.

An SPC-2 reservation makes one I_T nexus the only one allowed to use the logical unit (no
third-party or extent reservations). It is volatile by design: released by RELEASE from its
holder, by LOGICAL UNIT RESET and target resets, and when the holder's I_T nexus is lost;
RELEASE from anyone else is a GOOD no-op (SPC-2 RESERVE and RELEASE).

Next to persistent reservations (SPC-4 "exceptions to SPC-2 RESERVE and RELEASE behavior",
CRH = 1): while any PR registration exists, RESERVE/RELEASE complete with GOOD and change
nothing when they come from the PR holder or from a registrant of a registrants-only or
all-registrants reservation, and conflict from anyone else. While an SPC-2 reservation is
held, other nexuses' PERSISTENT RESERVE IN/OUT conflict like their other commands.

:class:`Reservations` bundles both into the ``ReservationChecker`` protocol of lu.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from iscsicore.scsi.opcodes import ScsiOp, ScsiStatus
from iscsicore.scsi.sense import invalid_field_in_cdb
from stargate.scsi.command import GOOD, Nexus, ScsiResult
from stargate.scsi.pr import PersistentReservations, ReservationConflict, UnitAttentionSink
from stargate.scsi.pr_store import MemoryPrStore, PrFile, PrPersistence
from stargate.scsi.ua import UnitAttentionQueues

RESERVE_OPCODES = frozenset({ScsiOp.RESERVE_6, ScsiOp.RESERVE_10})
RELEASE_OPCODES = frozenset({ScsiOp.RELEASE_6, ScsiOp.RELEASE_10})

# What other nexuses may still do while one holds an SPC-2 reservation (SPC-3 table
# "SPC commands that are allowed in the presence of various reservations", column "logical
# unit is reserved by another I_T nexus", and the SBC table for READ CAPACITY).
_ALLOWED_WHILE_RESERVED_BY_OTHER: frozenset[int] = frozenset(
    {
        ScsiOp.INQUIRY,
        ScsiOp.REPORT_LUNS,
        ScsiOp.REQUEST_SENSE,
        ScsiOp.TEST_UNIT_READY,
        ScsiOp.LOG_SENSE,
        ScsiOp.READ_CAPACITY_10,
        ScsiOp.RELEASE_6,  # a no-op from a non-holder, not a conflict
        ScsiOp.RELEASE_10,
        0xAB,  # SERVICE ACTION IN(12): READ MEDIA SERIAL NUMBER
    }
)
_READ_CAPACITY_16 = 0x10
_REPORT_TARGET_PORT_GROUPS = 0x0A


def _allowed_while_reserved_by_other(cdb: bytes) -> bool:
    opcode = cdb[0]
    service_action = cdb[1] & 0x1F if len(cdb) > 1 else 0
    if opcode in _ALLOWED_WHILE_RESERVED_BY_OTHER:
        return True
    if opcode == ScsiOp.SERVICE_ACTION_IN_16:
        return service_action == _READ_CAPACITY_16
    if opcode == ScsiOp.MAINTENANCE_IN:
        return service_action == _REPORT_TARGET_PORT_GROUPS
    if opcode == ScsiOp.PREVENT_ALLOW_MEDIUM_REMOVAL:
        return len(cdb) > 4 and cdb[4] & 0x03 == 0
    return False


class Spc2Reservation:
    """The SPC-2 reservation of one logical unit: who holds it, if anyone."""

    def __init__(self) -> None:
        self.holder: Nexus | None = None

    def conflicts(self, nexus: Nexus, cdb: bytes) -> bool:
        return (
            self.holder is not None
            and self.holder != nexus
            and bool(cdb)
            and not _allowed_while_reserved_by_other(cdb)
        )

    def reserve(self, nexus: Nexus) -> None:
        """Take the reservation; again from the holder is fine (SPC-2)."""
        if self.holder is not None and self.holder != nexus:
            raise ReservationConflict
        self.holder = nexus

    def release(self, nexus: Nexus) -> None:
        """Only the holder releases; anyone else's RELEASE is a GOOD no-op."""
        if self.holder == nexus:
            self.holder = None

    def nexus_lost(self, nexus: Nexus) -> None:
        self.release(nexus)

    def reset(self) -> None:
        self.holder = None


def _check_reserve_release_cdb(cdb: bytes) -> None:
    """No third-party (3RDPTY) or extent reservations, no long IDs: INVALID FIELD IN CDB."""
    if len(cdb) < 6:
        raise invalid_field_in_cdb(len(cdb))
    if cdb[1] & 0x10:
        raise invalid_field_in_cdb(1, 4)  # 3RDPTY
    if cdb[0] in (ScsiOp.RESERVE_6, ScsiOp.RELEASE_6) and cdb[1] & 0x01:
        raise invalid_field_in_cdb(1, 0)  # EXTENT (obsolete)
    if cdb[0] in (ScsiOp.RESERVE_10, ScsiOp.RELEASE_10) and cdb[1] & 0x02:
        raise invalid_field_in_cdb(1, 1)  # LONGID


class Reservations:
    """Everything reservation-related for one logical unit: the ``ReservationChecker`` that
    ``LogicalUnit(reservations=...)`` takes.

    ``on_preempt_and_abort`` is called with the nexuses whose tasks a PREEMPT AND ABORT
    ended: the command queue must abort their tasks on this logical unit (tmf.py
    ``tasks_of_nexuses`` picks them), without status (TAS = 0).
    """

    handled_opcodes: frozenset[int] = frozenset(
        {
            ScsiOp.PERSISTENT_RESERVE_IN,
            ScsiOp.PERSISTENT_RESERVE_OUT,
            ScsiOp.RESERVE_6,
            ScsiOp.RELEASE_6,
            ScsiOp.RESERVE_10,
            ScsiOp.RELEASE_10,
        }
    )

    def __init__(
        self,
        persistent: PersistentReservations,
        *,
        on_preempt_and_abort: Callable[[frozenset[Nexus]], None] | None = None,
    ) -> None:
        self.persistent = persistent
        self.spc2 = Spc2Reservation()
        self.on_preempt_and_abort = on_preempt_and_abort

    @classmethod
    def for_vdisk(
        cls,
        data_dir: Path,
        vdisk_id: str,
        unit_attentions: UnitAttentionSink | None = None,
        *,
        relative_target_port_id: int = 1,
    ) -> Reservations:
        """Reservations kept in ``data_dir/<vdisk_id>.pr.json``."""
        return cls.with_store(
            PrFile.for_vdisk(data_dir, vdisk_id),
            unit_attentions,
            relative_target_port_id=relative_target_port_id,
        )

    @classmethod
    def with_store(
        cls,
        store: PrPersistence,
        unit_attentions: UnitAttentionSink | None = None,
        *,
        relative_target_port_id: int = 1,
    ) -> Reservations:
        persistent = PersistentReservations(
            store, unit_attentions, relative_target_port_id=relative_target_port_id
        )
        return cls(persistent)

    # ---- ReservationChecker ----------------------------------------------------------------

    def check(self, nexus: Nexus, cdb: bytes) -> bool:
        """True when ``cdb`` from ``nexus`` must end in RESERVATION CONFLICT."""
        if self.spc2.holder is None and self.persistent.reservation is None:
            return False  # the common case, on every command: nothing reserved
        if not cdb:
            return False
        if self.spc2.conflicts(nexus, cdb):
            return True
        if cdb[0] in RESERVE_OPCODES or cdb[0] in RELEASE_OPCODES:
            return False  # they meet persistent reservations in execute (CRH = 1)
        return self.persistent.conflicts(nexus, cdb)

    def execute(
        self, cdb: bytes, data_out: bytes | bytearray | memoryview, nexus: Nexus
    ) -> ScsiResult:
        """Emulate one reservation command; raises ``CheckCondition`` for bad requests."""
        opcode = cdb[0]
        try:
            if opcode == ScsiOp.PERSISTENT_RESERVE_IN:
                return ScsiResult(
                    ScsiStatus.GOOD, data=self.persistent.persistent_reserve_in(nexus, cdb)
                )
            if opcode == ScsiOp.PERSISTENT_RESERVE_OUT:
                outcome = self.persistent.persistent_reserve_out(nexus, cdb, data_out)
                if outcome.abort_tasks_of and self.on_preempt_and_abort is not None:
                    self.on_preempt_and_abort(outcome.abort_tasks_of)
                return GOOD
            _check_reserve_release_cdb(cdb)
            if self.persistent.has_registrations():
                if not self.persistent.spc2_exempt(nexus):
                    raise ReservationConflict
                return GOOD  # CRH: the persistent reservation already says it all
            if opcode in RESERVE_OPCODES:
                self.spc2.reserve(nexus)
            else:
                self.spc2.release(nexus)
            return GOOD
        except ReservationConflict:
            return ScsiResult(ScsiStatus.RESERVATION_CONFLICT)

    def nexus_lost(self, nexus: Nexus) -> None:
        """SPC-2 reservations go with their nexus; registrations stay (they persist)."""
        self.spc2.nexus_lost(nexus)

    def logical_unit_reset(self, by: Nexus | None) -> None:
        """LOGICAL UNIT RESET and target resets release the SPC-2 reservation; persistent
        reservations are unaffected (SPC-4)."""
        self.spc2.reset()

    def reload(self) -> None:
        """Taking the vDisk over from another stargate: its PR state is the file's."""
        self.persistent.reload()
        self.spc2.reset()


def vdisk_reservations(
    data_dir: Path | None, vdisk_id: str, *, relative_target_port_id: int = 1
) -> tuple[Reservations, UnitAttentionQueues]:
    """The reservations and unit attention queues ``LogicalUnit(reservations=...,
    unit_attentions=...)`` takes for one vDisk, wired together (PR service actions establish
    UAs). The PR state lives in ``data_dir/<vdisk_id>.pr.json``, or only in memory when
    ``data_dir`` is None (memory-backed vDisks)."""
    unit_attentions = UnitAttentionQueues()
    store: PrPersistence = (
        MemoryPrStore() if data_dir is None else PrFile.for_vdisk(data_dir, vdisk_id)
    )
    reservations = Reservations.with_store(
        store, unit_attentions, relative_target_port_id=relative_target_port_id
    )
    return reservations, unit_attentions
