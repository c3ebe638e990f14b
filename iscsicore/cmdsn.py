"""The target's CmdSN window and in-order delivery (RFC 7143 sections 3.2.2.1 and 4.2.2.1).

Sans-IO: the connection offers every PDU that carries a CmdSN, with an opaque item that
stands for it, and delivers what the window says, in the order it says:

- immediate PDUs are delivered at once and do not advance ExpCmdSN;
- a non-immediate PDU with CmdSN = ExpCmdSN is delivered and advances ExpCmdSN;
- one later in the window [ExpCmdSN, MaxCmdSN] is held until the gap before it fills,
  then `pop_ready` hands it out, in CmdSN order, advancing ExpCmdSN over it;
- one outside the window, or with a CmdSN already held, is dropped silently.

ExpCmdSN only ever advances over contiguous CmdSNs, and at most one item is held per CmdSN
of the window, so what is held is bounded by the window the target advertised.
"""

from __future__ import annotations

from enum import Enum
from typing import Generic, TypeVar

from .seqnum import SERIAL_MASK, in_window, sn_gt, sn_lt

T = TypeVar("T")


class Arrival(Enum):
    DELIVER = "deliver"  # handle it now
    HELD = "held"  # after a gap: `pop_ready` returns it once the gap is filled
    DROPPED = "dropped"  # outside the window or a duplicate: silently ignored


class _Received:
    """Stands in the window for a CmdSN counted as received with nothing to deliver."""


_RECEIVED = _Received()


class CmdSNWindow(Generic[T]):
    """ExpCmdSN, MaxCmdSN and the non-immediate PDUs held after a CmdSN gap."""

    __slots__ = ("exp_cmd_sn", "held", "max_cmd_sn")

    def __init__(self, exp_cmd_sn: int, max_cmd_sn: int | None = None) -> None:
        self.exp_cmd_sn = exp_cmd_sn & SERIAL_MASK
        # A window of one until the first response says otherwise.
        self.max_cmd_sn = self.exp_cmd_sn if max_cmd_sn is None else max_cmd_sn & SERIAL_MASK
        # By CmdSN, beyond a gap: PDUs, or CmdSNs counted as received. Never rebound, so a
        # caller may keep a reference and test it for emptiness (the hot path does).
        self.held: dict[int, T | _Received] = {}

    def arrive(self, cmd_sn: int, *, immediate: bool, item: T) -> Arrival:
        """Where a PDU with this CmdSN goes; ExpCmdSN advances if it is the next one."""
        if immediate:
            return Arrival.DELIVER
        if cmd_sn == self.exp_cmd_sn and cmd_sn != (self.max_cmd_sn + 1) & SERIAL_MASK:
            self.exp_cmd_sn = (cmd_sn + 1) & SERIAL_MASK
            return Arrival.DELIVER
        if not in_window(cmd_sn, self.exp_cmd_sn, self.max_cmd_sn) or cmd_sn in self.held:
            return Arrival.DROPPED
        self.held[cmd_sn] = item
        return Arrival.HELD

    def pop_ready(self) -> T | None:
        """The next held PDU whose turn has come (ExpCmdSN advances over it), or None.

        Call it after handling each delivered PDU, until it returns None.
        """
        held = self.held
        while held:
            item = held.pop(self.exp_cmd_sn, None)
            if item is None:
                return None
            self.exp_cmd_sn = (self.exp_cmd_sn + 1) & SERIAL_MASK
            if not isinstance(item, _Received):
                return item
        return None

    def consider_received(self, cmd_sn: int) -> T | None:
        """Count ``cmd_sn`` as received without delivering anything for it (ABORT TASK of a
        command that never arrived, RFC 7143 section 11.5.1; a PDU rejected unhandled).

        Returns the PDU it displaces if one was held there: it is not delivered any more.
        Outside the window, nothing changes.
        """
        if not in_window(cmd_sn, self.exp_cmd_sn, self.max_cmd_sn):
            return None
        if cmd_sn == self.exp_cmd_sn:
            self.exp_cmd_sn = (cmd_sn + 1) & SERIAL_MASK
            return None
        displaced = self.held.get(cmd_sn)
        self.held[cmd_sn] = _RECEIVED
        return None if isinstance(displaced, _Received) else displaced

    def consider_received_before(self, cmd_sn: int) -> list[T]:
        """Count every CmdSN of the window before ``cmd_sn`` as received: a task-set-wide
        function (ABORT TASK SET, LOGICAL UNIT RESET...) sent as an immediate PDU with this
        CmdSN ends every command sent before it, those held behind a gap included, and
        waiting for a command lost on the way would stall the session for good.

        Returns the held PDUs so dropped; the ones held after ``cmd_sn`` stay held (or are
        ready for `pop_ready`).
        """
        dropped: list[T] = []
        while sn_lt(self.exp_cmd_sn, cmd_sn) and in_window(
            self.exp_cmd_sn, self.exp_cmd_sn, self.max_cmd_sn
        ):
            item = self.held.pop(self.exp_cmd_sn, None)
            if item is not None and not isinstance(item, _Received):
                dropped.append(item)
            self.exp_cmd_sn = (self.exp_cmd_sn + 1) & SERIAL_MASK
        return dropped

    def drop_held(self) -> list[T]:
        """Forget every held PDU (the connection is closing); returns them."""
        dropped = [item for item in self.held.values() if not isinstance(item, _Received)]
        self.held.clear()
        return dropped

    def advertise(self, share: int) -> int:
        """The MaxCmdSN to put in the next PDU, from a share of free command slots.

        MaxCmdSN = ExpCmdSN + share - 1, never below ExpCmdSN - 1 (closed window). An
        initiator never lowers its own copy of MaxCmdSN, so neither does this: a shrunken
        share shows as a window that stops advancing.
        """
        wanted = (self.exp_cmd_sn + max(share, 0) - 1) & SERIAL_MASK
        if sn_gt(wanted, self.max_cmd_sn):
            self.max_cmd_sn = wanted
        return self.max_cmd_sn
