"""Unit attention conditions, one ordered queue per I_T nexus (SAM-5, SPC-4).

A unit attention (UA) tells one initiator port that something changed behind its back: the
logical unit was reset, another initiator preempted its reservation, the capacity changed.
It is queued for that I_T nexus and reported, as CHECK CONDITION with sense key UNIT
ATTENTION, on the next command from that nexus instead of running the command.

Which commands report (and so clear) a pending UA follows SPC-4 with UA_INTLCK_CTRL = 0,
and is decided by the logical unit (``CommandSpec.reports_unit_attention``):

- INQUIRY and REPORT LUNS run normally and do not report it; REPORT LUNS clears REPORTED
  LUNS DATA HAS CHANGED (:meth:`UnitAttentionQueues.clear`), it re-reads what changed;
- REQUEST SENSE returns the UA as its sense data with GOOD status and clears it
  (:meth:`UnitAttentionQueues.consume`);
- every other command is answered with the UA and not executed
  (:meth:`UnitAttentionQueues.report_for_command` bundles that decision).

Ordering: the condition of highest precedence is reported first -- power-on and resets
(SAM-5 "unit attention condition precedence"), the wider the reset the earlier -- and among
equals the oldest. A condition already queued is not queued twice; a reset makes pending
narrower resets redundant. A nexus seen for the first time since this process started gets
POWER ON, RESET, OR BUS DEVICE RESET OCCURRED; one that comes back after an I_T nexus loss
gets I_T NEXUS LOSS OCCURRED.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from iscsicore.scsi.opcodes import ScsiOp
from iscsicore.scsi.sense import Asc, AscLike, CheckCondition, SenseKey
from stargate.scsi.command import Nexus


class UnitAttention(NamedTuple):
    """One condition: the additional sense code and qualifier to report. A tuple, so it is
    also the ``(asc, ascq)`` pair the logical unit's protocol speaks."""

    asc: int
    ascq: int

    @classmethod
    def of(cls, code: AscLike) -> UnitAttention:
        asc, ascq = code.value if isinstance(code, Asc) else code
        return cls(asc, ascq)

    @property
    def name(self) -> str:
        named = Asc.lookup(self.asc, self.ascq)
        return named.name if named else f"({self.asc:#04x}, {self.ascq:#04x})"

    @property
    def is_reset(self) -> bool:
        return self.asc == 0x29

    @property
    def precedence(self) -> int:
        """Lower is reported first."""
        if self.is_reset:
            return _RESET_RANKS.get((self.asc, self.ascq), _OTHER_RESET_RANK)
        return _ORDINARY_RANK

    def check_condition(self) -> CheckCondition:
        """The CHECK CONDITION that reports it in place of a command."""
        return CheckCondition(SenseKey.UNIT_ATTENTION, (self.asc, self.ascq))


# Resets outrank everything; within them the wider the event the higher (a power-on
# explains a LUN reset, not the other way round).
_RESET_RANKS: dict[tuple[int, int], int] = {
    Asc.POWER_ON_OCCURRED.value: 0,
    Asc.POWER_ON_RESET_OR_BUS_DEVICE_RESET.value: 1,
    Asc.SCSI_BUS_RESET_OCCURRED.value: 2,
    Asc.BUS_DEVICE_RESET.value: 3,
    Asc.DEVICE_INTERNAL_RESET.value: 4,
    Asc.I_T_NEXUS_LOSS_OCCURRED.value: 5,
}
_OTHER_RESET_RANK = 6
_ORDINARY_RANK = 10

# An initiator that never sends a command must not grow memory forever.
MAX_PENDING_PER_NEXUS = 32

# Opcodes that neither report nor clear a pending UA (SPC-4, UA_INTLCK_CTRL = 0).
NOT_REPORTING_OPCODES: frozenset[int] = frozenset(
    {ScsiOp.INQUIRY, ScsiOp.REPORT_LUNS, ScsiOp.REQUEST_SENSE}
)


def _add(queue: list[UnitAttention], ua: UnitAttention) -> None:
    if ua in queue:
        return  # the initiator learns of a condition once, however often it recurs
    if ua.is_reset:
        if any(queued.is_reset and queued.precedence <= ua.precedence for queued in queue):
            return  # a wider (or equal) reset is still pending: it says it all
        queue[:] = [queued for queued in queue if not queued.is_reset]
    if len(queue) >= MAX_PENDING_PER_NEXUS:
        worst = max(queue, key=lambda queued: queued.precedence)
        if worst.precedence < ua.precedence:
            return
        queue.remove(worst)
    queue.append(ua)


def _head(queue: list[UnitAttention]) -> UnitAttention | None:
    # min() is stable: among equal precedence the oldest (first appended) wins.
    return min(queue, key=lambda queued: queued.precedence, default=None)


class UnitAttentionQueues:
    """Pending unit attentions of one logical unit, per I_T nexus; implements the logical
    unit's ``UnitAttentions`` protocol.

    Synchronous and unlocked: called from the one thread that executes the unit's commands.
    """

    def __init__(self) -> None:
        self._queues: dict[Nexus, list[UnitAttention]] = {}
        self._seen: set[Nexus] = set()
        self._lost: set[Nexus] = set()
        # What a nexus hears at its first command: a plain start, or a cold reset.
        self._first_contact = UnitAttention.of(Asc.POWER_ON_RESET_OR_BUS_DEVICE_RESET)

    # -- establishing -----------------------------------------------------------------------

    def establish(
        self, code: AscLike, *, nexus: Nexus | None = None, exclude: Nexus | None = None
    ) -> None:
        """Queue ``code`` for ``nexus``, or for every nexus known to this logical unit
        except ``exclude`` (usually the one whose command caused it: its own status says)."""
        ua = UnitAttention.of(code)
        if nexus is not None:
            _add(self._queue(nexus), ua)
            return
        for known in self.known_nexuses():
            if known != exclude:
                _add(self._queue(known), ua)

    def establish_for(self, nexus: Nexus, code: AscLike) -> None:
        """Queue ``code`` for one nexus, connected now or not: it is reported when that nexus
        next sends a command (a preempted cluster node may be reconnecting)."""
        _add(self._queue(nexus), UnitAttention.of(code))

    def establish_for_each(self, nexuses: Iterable[Nexus], code: AscLike) -> None:
        for nexus in nexuses:
            self.establish_for(nexus, code)

    # -- reading ----------------------------------------------------------------------------

    def pending(self, nexus: Nexus) -> UnitAttention | None:
        """The condition the next reporting command from ``nexus`` gets (not removed)."""
        self.note_contact(nexus)
        return _head(self._queues.get(nexus, []))

    def consume(self, nexus: Nexus) -> UnitAttention | None:
        """Remove and return the condition of highest precedence: it is being reported."""
        self.note_contact(nexus)
        queue = self._queues.get(nexus)
        head = _head(queue) if queue else None
        if queue is not None and head is not None:
            queue.remove(head)
            if not queue:
                del self._queues[nexus]
        return head

    pop = consume

    def all_pending(self, nexus: Nexus) -> list[UnitAttention]:
        """Every condition queued for ``nexus``, in reporting order."""
        return sorted(self._queues.get(nexus, []), key=lambda ua: ua.precedence)

    def clear(self, nexus: Nexus, code: AscLike) -> None:
        """Drop one condition without reporting it (REPORT LUNS clears REPORTED LUNS DATA HAS
        CHANGED: it is the command that re-reads what changed)."""
        queue = self._queues.get(nexus)
        if queue is not None:
            ua = UnitAttention.of(code)
            queue[:] = [queued for queued in queue if queued != ua]
            if not queue:
                del self._queues[nexus]

    def known_nexuses(self) -> set[Nexus]:
        """Nexuses that sent a command since start, or have something queued."""
        return self._seen | set(self._queues)

    # -- the per-command decision -----------------------------------------------------------

    def report_for_command(self, nexus: Nexus, cdb: bytes) -> CheckCondition | None:
        """The CHECK CONDITION to answer instead of running ``cdb`` (the UA is then cleared),
        or None to run it. REQUEST SENSE gets None: it reports through :meth:`consume`."""
        self.note_contact(nexus)
        opcode = cdb[0] if cdb else None
        if opcode == ScsiOp.REPORT_LUNS:
            self.clear(nexus, Asc.REPORTED_LUNS_DATA_HAS_CHANGED)
        if opcode in NOT_REPORTING_OPCODES:
            return None
        ua = self.consume(nexus)
        return ua.check_condition() if ua is not None else None

    # -- nexus life cycle ------------------------------------------------------------------

    def note_contact(self, nexus: Nexus) -> None:
        """First command of a nexus since start (POWER ON) or since it was lost."""
        if nexus in self._seen:
            return
        self._seen.add(nexus)
        if nexus in self._lost:
            self._lost.discard(nexus)
            _add(self._queue(nexus), UnitAttention.of(Asc.I_T_NEXUS_LOSS_OCCURRED))
        else:
            _add(self._queue(nexus), self._first_contact)

    def nexus_lost(self, nexus: Nexus) -> None:
        """The I_T nexus went away (logout, connection failure). Conditions already queued for
        it stay (a reservation preempted meanwhile must still be heard of); I_T NEXUS LOSS
        OCCURRED is added when it comes back (SAM-5)."""
        if nexus in self._seen:
            self._seen.discard(nexus)
            self._lost.add(nexus)

    def power_on(self, code: AscLike = Asc.POWER_ON_OCCURRED) -> None:
        """As after a power cycle (TARGET COLD RESET): forget every queued condition and every
        nexus; each reports ``code`` at its next command."""
        self._queues.clear()
        self._seen.clear()
        self._lost.clear()
        self._first_contact = UnitAttention.of(code)

    def _queue(self, nexus: Nexus) -> list[UnitAttention]:
        queue = self._queues.get(nexus)
        if queue is None:
            queue = self._queues[nexus] = []
        return queue
