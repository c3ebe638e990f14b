"""Persistent reservations (SPC-4: the reservations model, PERSISTENT RESERVE IN and OUT).

How cluster guests use them: each node REGISTERs a key through each of its paths, one node
RESERVEs (Windows failover clustering: Write Exclusive - Registrants Only; Oracle RAC /
Linux fencing: Write Exclusive or Exclusive Access - Registrants Only), and a surviving node
fences a dead one with PREEMPT (AND ABORT) naming the dead node's key. The state is the
vDisk's, not the stargate's: it is saved to ``DIR/<vdisk id>.pr.json`` on every change
(pr_store.py) and reloaded by whichever stargate serves the vDisk next.

Implemented: READ KEYS, READ RESERVATION, REPORT CAPABILITIES, READ FULL STATUS; REGISTER,
REGISTER AND IGNORE EXISTING KEY, RESERVE, RELEASE, CLEAR, PREEMPT, PREEMPT AND ABORT,
REGISTER AND MOVE; all six reservation types; ALL_TG_PT; APTPL (accepted and reported; the
state persists regardless). Not implemented, and reported so by REPORT CAPABILITIES:
SPEC_I_PT (INVALID FIELD IN PARAMETER LIST) and REPLACE LOST RESERVATION (INVALID FIELD
IN CDB).

Identity: an I_T nexus is (initiator port, target port) as the transport names them --
``<initiator iqn>,i,0x<isid>`` and ``<target iqn>,t,0x<tpgt>``. Every stargate serves a
vDisk's target through the same TPGT, so a registration made through one CVM still names
the same I_T nexus after the vDisk moves to another.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from iscsicore.scsi.opcodes import PrInAction, PrOutAction, PrType, ScsiOp
from iscsicore.scsi.sense import (
    Asc,
    AscLike,
    CheckCondition,
    SenseKey,
    illegal_request,
    invalid_field_in_cdb,
    invalid_field_in_parameter_list,
)
from stargate.scsi.command import Nexus
from stargate.scsi.pr_store import PrPersistence, PrState, Registration, Reservation

log = logging.getLogger(__name__)

BASIC_PARAMETER_LIST_LENGTH = 24  # PERSISTENT RESERVE OUT parameter list without extras
LU_SCOPE = 0
ISCSI_PROTOCOL_ID = 0x5
_ISID_SEPARATOR = ",i,0x"

WRITE_EXCLUSIVE_TYPES = frozenset(
    {
        PrType.WRITE_EXCLUSIVE,
        PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
        PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS,
    }
)
ALL_REGISTRANTS_TYPES = frozenset(
    {PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS, PrType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS}
)
REGISTRANTS_ONLY_TYPES = frozenset(
    {PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY, PrType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY}
)


class ReservationConflict(Exception):
    """End the command with RESERVATION CONFLICT status (no sense data)."""


class UnitAttentionSink(Protocol):
    def establish_for(self, nexus: Nexus, code: AscLike) -> None: ...


# ---- which commands a reservation lets through ----------------------------------------------


class Access(Enum):
    """How a command fares against a persistent reservation held by someone else
    (SPC-4 table "SPC commands that are allowed in the presence of various reservations",
    SBC-3 table for block commands)."""

    ALLOWED = "allowed"  # in every column
    READ = "read"  # allowed through Write Exclusive types, conflicts with Exclusive Access
    WRITE = "write"  # conflicts unless the nexus is a registrant of an RO/AR reservation


_ALWAYS_ALLOWED: frozenset[int] = frozenset(
    {
        ScsiOp.INQUIRY,
        ScsiOp.REPORT_LUNS,
        ScsiOp.REQUEST_SENSE,
        ScsiOp.TEST_UNIT_READY,
        ScsiOp.LOG_SENSE,
        ScsiOp.READ_CAPACITY_10,
        ScsiOp.PERSISTENT_RESERVE_IN,
        # The service actions themselves decide (register is allowed to anyone, the rest
        # need a registration: SPC-4 table "PERSISTENT RESERVE OUT service actions that
        # are allowed in the presence of various reservations").
        ScsiOp.PERSISTENT_RESERVE_OUT,
        # SPC-2 RESERVE/RELEASE meet persistent reservations in reserve.py (CRH = 1).
        ScsiOp.RESERVE_6,
        ScsiOp.RELEASE_6,
        ScsiOp.RESERVE_10,
        ScsiOp.RELEASE_10,
        0x86,  # ACCESS CONTROL IN
        0x87,  # ACCESS CONTROL OUT
        0xAB,  # SERVICE ACTION IN(12): READ MEDIA SERIAL NUMBER
    }
)

# Reads of the medium, and the commands ALLOW COMMANDS = 011b lets through Write Exclusive:
# MODE SENSE, READ ATTRIBUTE, READ BUFFER, RECEIVE COPY RESULTS, RECEIVE DIAGNOSTIC
# RESULTS, REPORT SUPPORTED OPERATION CODES / TASK MANAGEMENT FUNCTIONS, READ DEFECT DATA.
_READ_CLASS: frozenset[int] = frozenset(
    {
        ScsiOp.READ_6,
        ScsiOp.READ_10,
        ScsiOp.READ_12,
        ScsiOp.READ_16,
        ScsiOp.VERIFY_10,
        ScsiOp.VERIFY_12,
        ScsiOp.VERIFY_16,
        ScsiOp.PRE_FETCH_10,
        ScsiOp.PRE_FETCH_16,
        ScsiOp.MODE_SENSE_6,
        ScsiOp.MODE_SENSE_10,
        ScsiOp.READ_BUFFER,
        ScsiOp.RECEIVE_DIAGNOSTIC_RESULTS,
        ScsiOp.RECEIVE_COPY_RESULTS,
        ScsiOp.READ_DEFECT_DATA_10,
        ScsiOp.READ_DEFECT_DATA_12,
        0x3E,  # READ LONG(10)
        0x8C,  # READ ATTRIBUTE
        0xA2,  # SECURITY PROTOCOL IN
    }
)

_MAINTENANCE_IN_ALLOWED = frozenset({0x05, 0x0A, 0x0B, 0x0E, 0x0F})  # REPORT IDENTIFYING
# INFORMATION, TARGET PORT GROUPS, ALIASES, PRIORITY, TIMESTAMP
_SERVICE_ACTION_IN_16_ALLOWED = frozenset({0x10})  # READ CAPACITY(16)
_VARIABLE_LENGTH_READS = frozenset({0x0009, 0x000A})  # READ(32), VERIFY(32)


def command_access(cdb: bytes) -> Access:
    """Classify ``cdb`` for the persistent reservation conflict table. Unknown commands are
    treated as writes: a reservation must never let an unknown command modify the medium."""
    opcode = cdb[0]
    service_action = cdb[1] & 0x1F if len(cdb) > 1 else 0
    if opcode in _ALWAYS_ALLOWED:
        return Access.ALLOWED
    if opcode in _READ_CLASS:
        return Access.READ
    if opcode == ScsiOp.SERVICE_ACTION_IN_16:
        # READ CAPACITY(16) is allowed everywhere; GET LBA STATUS, READ LONG(16) read.
        return Access.ALLOWED if service_action in _SERVICE_ACTION_IN_16_ALLOWED else Access.READ
    if opcode == ScsiOp.MAINTENANCE_IN:
        return Access.ALLOWED if service_action in _MAINTENANCE_IN_ALLOWED else Access.READ
    if opcode == ScsiOp.PREVENT_ALLOW_MEDIUM_REMOVAL:
        prevent = cdb[4] & 0x03 if len(cdb) > 4 else 0
        return Access.ALLOWED if prevent == 0 else Access.WRITE
    if opcode == ScsiOp.START_STOP_UNIT:
        start = bool(cdb[4] & 0x01) if len(cdb) > 4 else False
        power_condition = cdb[4] >> 4 if len(cdb) > 4 else 0
        return Access.ALLOWED if start and power_condition == 0 else Access.WRITE
    if opcode == ScsiOp.VARIABLE_LENGTH and len(cdb) >= 10:
        variable_action = int.from_bytes(cdb[8:10], "big")
        return Access.READ if variable_action in _VARIABLE_LENGTH_READS else Access.WRITE
    return Access.WRITE


# ---- TransportIDs (SPC-4, iSCSI) --------------------------------------------------


def iscsi_transport_id(initiator_port: str) -> bytes:
    """The iSCSI TransportID naming ``initiator_port``: format 01b (``name,i,0x<isid>``) when
    it carries an ISID, else format 00b (name only); NUL-terminated, padded to a multiple
    of four, at least 20 bytes of name."""
    has_isid = _ISID_SEPARATOR in initiator_port.lower()
    text = initiator_port.encode() + b"\x00"
    length = max(20, (len(text) + 3) // 4 * 4)
    header = bytes([(0x40 if has_isid else 0x00) | ISCSI_PROTOCOL_ID, 0]) + struct.pack(
        ">H", length
    )
    return header + text.ljust(length, b"\x00")


class TransportIdError(ValueError):
    pass


def parse_iscsi_transport_id(data: bytes) -> tuple[str, int]:
    """(initiator port, bytes used) of the iSCSI TransportID at the start of ``data``.

    Format 01b yields ``name,i,0x<isid>`` with the ISID as 12 lower-case hex digits (the form
    the transport uses); format 00b yields the bare name.
    """
    if len(data) < 4:
        raise TransportIdError("TransportID shorter than its header")
    if data[0] & 0x0F != ISCSI_PROTOCOL_ID:
        raise TransportIdError(f"protocol identifier {data[0] & 0x0F:#x} is not iSCSI")
    fmt = data[0] >> 6
    length = struct.unpack_from(">H", data, 2)[0]
    if length < 4 or length % 4 or 4 + length > len(data):
        raise TransportIdError(f"bad TransportID additional length {length}")
    text = data[4 : 4 + length].split(b"\x00", 1)[0].decode("utf-8", "strict")
    if fmt == 0:
        if not text or "," in text:
            raise TransportIdError("format 00b TransportID must hold just an iSCSI name")
        return text, 4 + length
    if fmt != 1:
        raise TransportIdError(f"TransportID format {fmt} is not defined for iSCSI")
    lowered = text.lower()
    cut = lowered.find(_ISID_SEPARATOR)
    if cut <= 0:
        raise TransportIdError("format 01b TransportID lacks ',i,0x<ISID>'")
    isid_text = text[cut + len(_ISID_SEPARATOR) :]
    try:
        isid = int(isid_text, 16)
    except ValueError as error:
        raise TransportIdError(f"bad ISID {isid_text!r}") from error
    if not 0 <= isid < 1 << 48:
        raise TransportIdError(f"ISID {isid_text!r} wider than 48 bits")
    return f"{text[:cut]}{_ISID_SEPARATOR}{isid:012x}", 4 + length


# ---- the state machine ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProutParameters:
    """The basic PERSISTENT RESERVE OUT parameter list (SPC-4)."""

    reservation_key: int
    service_action_key: int
    spec_i_pt: bool
    all_tg_pt: bool
    aptpl: bool

    @classmethod
    def parse(cls, data: bytes) -> ProutParameters:
        reservation_key, service_action_key = struct.unpack_from(">QQ", data, 0)
        flags = data[20]
        return cls(
            reservation_key,
            service_action_key,
            spec_i_pt=bool(flags & 0x08),
            all_tg_pt=bool(flags & 0x04),
            aptpl=bool(flags & 0x01),
        )


@dataclass(frozen=True, slots=True)
class ProutOutcome:
    """What the transport must do beyond sending GOOD: PREEMPT AND ABORT ends every task of
    ``abort_tasks_of`` on this logical unit (SPC-4, without status: TAS = 0)."""

    abort_tasks_of: frozenset[Nexus] = frozenset()


@dataclass
class _Change:
    """A PERSISTENT RESERVE OUT in progress: a working copy of the state and the unit
    attentions to establish once the new state is safely on disk."""

    state: PrState
    notices: list[tuple[Nexus, Asc]] = field(default_factory=list)

    def notify(self, nexuses: Iterable[Nexus], code: Asc) -> None:
        self.notices.extend((nexus, code) for nexus in nexuses)

    def registration_of(self, nexus: Nexus) -> Registration | None:
        return _find(self.state.registrations, nexus)

    def remove(self, doomed: Iterable[Registration]) -> None:
        gone = set(doomed)
        self.state.registrations = [r for r in self.state.registrations if r not in gone]

    def bump_generation(self) -> None:
        self.state.generation = (self.state.generation + 1) & 0xFFFFFFFF


def _find(registrations: Iterable[Registration], nexus: Nexus) -> Registration | None:
    # An exact registration wins over an ALL_TG_PT one made through another target port.
    covering = [r for r in registrations if r.covers(nexus)]
    for reg in covering:
        if reg.target_port == nexus.target_port:
            return reg
    return covering[0] if covering else None


class PersistentReservations:
    """Persistent reservation state of one logical unit and its commands.

    ``persistent_reserve_in`` returns the parameter data; ``persistent_reserve_out`` returns
    a :class:`ProutOutcome`; both raise ``CheckCondition`` or :class:`ReservationConflict`.
    ``conflicts`` answers the per-command reservation check.
    """

    def __init__(
        self,
        store: PrPersistence,
        unit_attentions: UnitAttentionSink | None = None,
        *,
        relative_target_port_id: int = 1,
    ) -> None:
        self.store = store
        self.unit_attentions = unit_attentions
        self.relative_target_port_id = relative_target_port_id
        self.state = store.load()

    def reload(self) -> None:
        """Read the state again (a stargate taking the vDisk over from another)."""
        self.state = self.store.load()

    def _refresh(self) -> None:
        # Before every PR command: if another stargate served the vDisk meanwhile and changed
        # its reservations, work from its state, never write over it with a stale one.
        if self.store.changed_since_load():
            log.info("persistent reservations changed elsewhere: reloading")
            self.reload()

    # ---- queries --------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        return self.state.generation

    @property
    def reservation(self) -> Reservation | None:
        return self.state.reservation

    @property
    def registrations(self) -> list[Registration]:
        return list(self.state.registrations)

    def registration_of(self, nexus: Nexus) -> Registration | None:
        return _find(self.state.registrations, nexus)

    def is_registered(self, nexus: Nexus) -> bool:
        return self.registration_of(nexus) is not None

    def is_holder(self, nexus: Nexus) -> bool:
        """Whether ``nexus`` holds the reservation (every registrant does for AR types)."""
        return _is_holder(self.state, nexus)

    # ---- the reservation check ------------------------------------------------------------

    def conflicts(self, nexus: Nexus, cdb: bytes) -> bool:
        """True when ``cdb`` from ``nexus`` must end in RESERVATION CONFLICT."""
        reservation = self.state.reservation
        if reservation is None or not cdb or self.is_holder(nexus):
            return False
        access = command_access(cdb)
        if access is Access.ALLOWED:
            return False
        if reservation.type in REGISTRANTS_ONLY_TYPES and self.is_registered(nexus):
            return False
        return not (access is Access.READ and reservation.type in WRITE_EXCLUSIVE_TYPES)

    def spc2_exempt(self, nexus: Nexus) -> bool:
        """SPC-4's exceptions to SPC-2 RESERVE and RELEASE (CRH = 1): RESERVE/RELEASE(6/10)
        from a persistent reservation holder, or from a registrant while a registrants-only
        or all-registrants reservation exists, complete with GOOD and change nothing."""
        reservation = self.state.reservation
        if reservation is None or not self.is_registered(nexus):
            return False
        return self.is_holder(nexus) or reservation.type not in (
            PrType.WRITE_EXCLUSIVE,
            PrType.EXCLUSIVE_ACCESS,
        )

    def has_registrations(self) -> bool:
        return bool(self.state.registrations)

    # ---- PERSISTENT RESERVE IN ---------------------------------------------------------------

    def persistent_reserve_in(self, nexus: Nexus, cdb: bytes) -> bytes:
        if len(cdb) < 10:
            raise invalid_field_in_cdb(len(cdb))
        self._refresh()
        allocation_length = struct.unpack_from(">H", cdb, 7)[0]
        action = cdb[1] & 0x1F
        if action == PrInAction.READ_KEYS:
            payload = self._read_keys()
        elif action == PrInAction.READ_RESERVATION:
            payload = self._read_reservation()
        elif action == PrInAction.REPORT_CAPABILITIES:
            payload = self._report_capabilities()
        elif action == PrInAction.READ_FULL_STATUS:
            payload = self._read_full_status()
        else:
            raise invalid_field_in_cdb(1, 4)
        return payload[:allocation_length]

    def _read_keys(self) -> bytes:
        keys = b"".join(struct.pack(">Q", reg.key) for reg in self.state.registrations)
        return struct.pack(">II", self.state.generation, len(keys)) + keys

    def _read_reservation(self) -> bytes:
        reservation = self.state.reservation
        if reservation is None:
            return struct.pack(">II", self.state.generation, 0)
        # The key of the holder; zero for all-registrants types (SPC-4).
        key = 0
        if reservation.holder is not None:
            holder = self.registration_of(reservation.holder)
            key = holder.key if holder else 0
        descriptor = struct.pack(
            ">QIBBH", key, 0, 0, (reservation.scope << 4) | reservation.type, 0
        )
        return struct.pack(">II", self.state.generation, len(descriptor)) + descriptor

    def _report_capabilities(self) -> bytes:
        # CRH (SPC-4's exceptions to SPC-2 RESERVE/RELEASE), ATP_C, PTPL_C; not SIP_C, RLR_C.
        capabilities = 0x10 | 0x04 | 0x01
        # TMV, ALLOW COMMANDS = 011b (see _READ_CLASS), PTPL_A.
        type_info = 0x80 | (0b011 << 4) | (0x01 if self.state.aptpl else 0)
        type_mask = (
            (1 << 7)  # WR_EX_AR
            | (1 << 6)  # EX_AC_RO
            | (1 << 5)  # WR_EX_RO
            | (1 << 3)  # EX_AC
            | (1 << 1)  # WR_EX
        ) << 8 | 0x01  # EX_AC_AR
        return struct.pack(">HBBHH", 8, capabilities, type_info, type_mask, 0)

    def _read_full_status(self) -> bytes:
        descriptors = bytearray()
        for reg in self.state.registrations:
            holder = _is_holder(self.state, reg.nexus)
            scope_type = 0
            if holder and self.state.reservation is not None:
                scope_type = (self.state.reservation.scope << 4) | self.state.reservation.type
            transport_id = iscsi_transport_id(reg.initiator_port)
            descriptors += struct.pack(
                ">QIBBIHI",
                reg.key,
                0,
                (0x02 if reg.all_tg_pt else 0) | (0x01 if holder else 0),
                scope_type,
                0,
                self.relative_target_port_id,
                len(transport_id),
            )
            descriptors += transport_id
        return struct.pack(">II", self.state.generation, len(descriptors)) + bytes(descriptors)

    # ---- PERSISTENT RESERVE OUT -------------------------------------------------------------

    def persistent_reserve_out(
        self, nexus: Nexus, cdb: bytes, data_out: bytes | bytearray | memoryview
    ) -> ProutOutcome:
        if len(cdb) < 10:
            raise invalid_field_in_cdb(len(cdb))
        self._refresh()
        try:
            action = PrOutAction(cdb[1] & 0x1F)
        except ValueError:
            raise invalid_field_in_cdb(1, 4) from None
        if action is PrOutAction.REPLACE_LOST_RESERVATION:
            raise invalid_field_in_cdb(1, 4)  # RLR_C = 0: never loses a reservation
        scope, pr_type = cdb[2] >> 4, cdb[2] & 0x0F
        parameter_length = struct.unpack_from(">I", cdb, 5)[0]
        data = bytes(data_out[:parameter_length])
        if parameter_length < BASIC_PARAMETER_LIST_LENGTH or len(data) < parameter_length:
            raise illegal_request(Asc.PARAMETER_LIST_LENGTH_ERROR)
        if action is PrOutAction.REGISTER_AND_MOVE:
            return self._register_and_move(nexus, data)
        params = ProutParameters.parse(data)
        if params.spec_i_pt:
            raise invalid_field_in_parameter_list(20, 3)  # SIP_C = 0
        if parameter_length != BASIC_PARAMETER_LIST_LENGTH:
            raise illegal_request(Asc.PARAMETER_LIST_LENGTH_ERROR)

        change = _Change(
            PrState(
                generation=self.state.generation,
                aptpl=self.state.aptpl,
                registrations=list(self.state.registrations),
                reservation=self.state.reservation,
            )
        )
        abort: frozenset[Nexus] = frozenset()
        if action in (PrOutAction.REGISTER, PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY):
            if not self._register(
                change, nexus, params, ignore_key=action is not PrOutAction.REGISTER
            ):
                return ProutOutcome()  # nothing changed: no generation, no write
        else:
            own = change.registration_of(nexus)
            if own is None or own.key != params.reservation_key:
                raise ReservationConflict
            if action is PrOutAction.RESERVE:
                if not self._reserve(change, nexus, scope, pr_type):
                    return ProutOutcome()
            elif action is PrOutAction.RELEASE:
                if not self._release(change, nexus, scope, pr_type):
                    return ProutOutcome()
            elif action is PrOutAction.CLEAR:
                self._clear(change, nexus)
            else:  # PREEMPT, PREEMPT AND ABORT
                preempted = self._preempt(change, nexus, own, params, scope, pr_type)
                if action is PrOutAction.PREEMPT_AND_ABORT:
                    abort = frozenset(preempted)
        self._commit(change)
        return ProutOutcome(abort_tasks_of=abort)

    def _register(
        self, change: _Change, nexus: Nexus, params: ProutParameters, *, ignore_key: bool
    ) -> bool:
        """REGISTER / REGISTER AND IGNORE EXISTING KEY (SPC-4); False: no change."""
        own = change.registration_of(nexus)
        new_key = params.service_action_key
        if not ignore_key and params.reservation_key != (own.key if own else 0):
            raise ReservationConflict
        if own is None and new_key == 0:
            return False  # unregistering what is not registered: GOOD, nothing changes
        if own is None:
            if params.all_tg_pt:
                # The new key covers this initiator port through every target port: it
                # replaces registrations the port made through others, one key per nexus.
                change.remove(
                    r
                    for r in change.state.registrations
                    if r.initiator_port == nexus.initiator_port
                )
            change.state.registrations.append(
                Registration(nexus.initiator_port, nexus.target_port, new_key, params.all_tg_pt)
            )
        elif new_key == 0:
            self._unregister(change, own)
        else:
            index = change.state.registrations.index(own)
            change.state.registrations[index] = Registration(
                own.initiator_port, own.target_port, new_key, own.all_tg_pt
            )
        if new_key != 0:
            change.state.aptpl = params.aptpl  # the most recent valid APTPL wins
        change.bump_generation()
        return True

    def _unregister(self, change: _Change, own: Registration) -> None:
        """Remove ``own``; the reservation goes with the last holder (SPC-4)."""
        was_holder = _is_holder(change.state, own.nexus)
        change.remove([own])
        reservation = change.state.reservation
        if reservation is None or not was_holder:
            return
        if reservation.type in ALL_REGISTRANTS_TYPES:
            if not change.state.registrations:
                change.state.reservation = None
            return
        change.state.reservation = None
        if reservation.type in REGISTRANTS_ONLY_TYPES:
            change.notify((r.nexus for r in change.state.registrations), Asc.RESERVATIONS_RELEASED)

    def _reserve(self, change: _Change, nexus: Nexus, scope: int, pr_type: int) -> bool:
        requested = _validate_scope_type(scope, pr_type)
        current = change.state.reservation
        if current is not None:
            if _is_holder(change.state, nexus) and (current.type, current.scope) == (
                requested,
                scope,
            ):
                return False  # already so: GOOD, nothing changes
            raise ReservationConflict
        holder = None if requested in ALL_REGISTRANTS_TYPES else nexus
        change.state.reservation = Reservation(requested, holder, scope)
        return True

    def _release(self, change: _Change, nexus: Nexus, scope: int, pr_type: int) -> bool:
        current = change.state.reservation
        if current is None or not _is_holder(change.state, nexus):
            return False  # nothing of ours to release: GOOD (SPC-4)
        if (scope, pr_type) != (current.scope, current.type):
            raise CheckCondition(
                SenseKey.ILLEGAL_REQUEST, Asc.INVALID_RELEASE_OF_PERSISTENT_RESERVATION
            )
        change.state.reservation = None
        if current.type in REGISTRANTS_ONLY_TYPES | ALL_REGISTRANTS_TYPES:
            change.notify(
                (r.nexus for r in change.state.registrations if not r.covers(nexus)),
                Asc.RESERVATIONS_RELEASED,
            )
        return True

    def _clear(self, change: _Change, nexus: Nexus) -> None:
        change.notify(
            (r.nexus for r in change.state.registrations if not r.covers(nexus)),
            Asc.RESERVATIONS_PREEMPTED,
        )
        change.state.registrations = []
        change.state.reservation = None
        change.bump_generation()

    def _preempt(
        self,
        change: _Change,
        nexus: Nexus,
        own: Registration,
        params: ProutParameters,
        scope: int,
        pr_type: int,
    ) -> list[Nexus]:
        """PREEMPT (SPC-4): remove the registrations holding the service action
        key -- never the preempting nexus's own -- and take over the reservation if that key
        held it. Returns the preempted nexuses."""
        target_key = params.service_action_key
        current = change.state.reservation
        others = [r for r in change.state.registrations if r is not own]
        requested: PrType | None = None

        if current is not None and current.type in ALL_REGISTRANTS_TYPES and target_key == 0:
            # Zero preempts an all-registrants reservation from everyone else.
            requested = _validate_scope_type(scope, pr_type)
            victims = others
            take_over = True
        else:
            holder_key = None
            if current is not None and current.holder is not None:
                holder_reg = change.registration_of(current.holder)
                holder_key = holder_reg.key if holder_reg else None
            take_over = current is not None and holder_key is not None and target_key == holder_key
            if current is not None and not take_over and target_key == 0:
                raise invalid_field_in_parameter_list(8)
            requested = _validate_scope_type(scope, pr_type) if take_over else None
            victims = [r for r in others if r.key == target_key]
            # Nothing to preempt: the key names no one else (SPC-4).
            if not victims and not (take_over and own.key == target_key):
                raise ReservationConflict

        change.remove(victims)
        change.notify((r.nexus for r in victims), Asc.REGISTRATIONS_PREEMPTED)
        if take_over and current is not None and requested is not None:
            holder = None if requested in ALL_REGISTRANTS_TYPES else nexus
            change.state.reservation = Reservation(requested, holder, scope)
            if (requested, scope) != (current.type, current.scope):
                change.notify(
                    (r.nexus for r in change.state.registrations if r is not own),
                    Asc.RESERVATIONS_RELEASED,
                )
        change.bump_generation()
        return [r.nexus for r in victims]

    def _register_and_move(self, nexus: Nexus, data: bytes) -> ProutOutcome:
        """REGISTER AND MOVE (SPC-4): register another I_T nexus and hand it the
        reservation, optionally unregistering the mover."""
        reservation_key, service_action_key = struct.unpack_from(">QQ", data, 0)
        unreg, aptpl = bool(data[17] & 0x02), bool(data[17] & 0x01)
        relative_port, transport_length = struct.unpack_from(">HI", data, 18)
        if BASIC_PARAMETER_LIST_LENGTH + transport_length > len(data):
            raise illegal_request(Asc.PARAMETER_LIST_LENGTH_ERROR)

        own = self.registration_of(nexus)
        if own is None or own.key != reservation_key:
            raise ReservationConflict
        current = self.state.reservation
        if current is None or not self.is_holder(nexus) or current.type in ALL_REGISTRANTS_TYPES:
            raise ReservationConflict  # only a single holder can move its reservation
        if service_action_key == 0:
            raise invalid_field_in_parameter_list(8)
        try:
            initiator_port, _used = parse_iscsi_transport_id(
                data[BASIC_PARAMETER_LIST_LENGTH : BASIC_PARAMETER_LIST_LENGTH + transport_length]
            )
        except (TransportIdError, UnicodeDecodeError):
            raise invalid_field_in_parameter_list(BASIC_PARAMETER_LIST_LENGTH) from None
        if _ISID_SEPARATOR not in initiator_port:
            # An iSCSI I_T nexus needs the ISID: a bare name names no port.
            raise invalid_field_in_parameter_list(BASIC_PARAMETER_LIST_LENGTH)
        if relative_port != self.relative_target_port_id:
            raise invalid_field_in_parameter_list(18)
        destination = Nexus(initiator_port, nexus.target_port)
        if destination == nexus or own.covers(destination):
            raise invalid_field_in_parameter_list(BASIC_PARAMETER_LIST_LENGTH)

        change = _Change(
            PrState(
                generation=self.state.generation,
                aptpl=aptpl,
                registrations=list(self.state.registrations),
                reservation=Reservation(current.type, destination, current.scope),
            )
        )
        if change.registration_of(destination) is None:
            change.state.registrations.append(
                Registration(
                    destination.initiator_port, destination.target_port, service_action_key
                )
            )
        if unreg:
            change.remove([own])
        change.bump_generation()
        self._commit(change)
        return ProutOutcome()

    def _commit(self, change: _Change) -> None:
        """Save, then adopt, then tell: a failed write changes nothing, and nobody hears of a
        change that did not happen."""
        try:
            self.store.save(change.state)
        except OSError as error:
            log.error("cannot save persistent reservations: %s", error)
            raise illegal_request(Asc.INSUFFICIENT_REGISTRATION_RESOURCES) from error
        self.state = change.state
        if self.unit_attentions is not None:
            for target, code in change.notices:
                self.unit_attentions.establish_for(target, code)


def _is_holder(state: PrState, nexus: Nexus) -> bool:
    reservation = state.reservation
    if reservation is None:
        return False
    if reservation.type in ALL_REGISTRANTS_TYPES:
        return _find(state.registrations, nexus) is not None
    holder = reservation.holder
    if holder is None:
        return False
    if holder == nexus:
        return True
    # Held through an ALL_TG_PT registration: the same initiator port via any target port.
    reg = _find(state.registrations, holder)
    return reg is not None and reg.all_tg_pt and reg.covers(nexus)


def _validate_scope_type(scope: int, pr_type: int) -> PrType:
    if scope != LU_SCOPE:
        raise invalid_field_in_cdb(2, 7)
    try:
        return PrType(pr_type)
    except ValueError:
        raise invalid_field_in_cdb(2, 3) from None
