"""Sequence numbers of the full feature phase (RFC 7143 sections 3.2.2.1, 4.2.2.1, 4.2.2.2).

The initiator numbers its non-immediate PDUs with CmdSN and may send one only while its
CmdSN is inside the target's window [ExpCmdSN, MaxCmdSN]; immediate PDUs carry the next
CmdSN without using it up. It acknowledges the target's responses with ExpStatSN, one past
the last StatSN seen. The target numbers every response that carries a status with the
next StatSN; PDUs without a status (R2T, Data-In without status, an unsolicited NOP-In)
carry the next StatSN without taking it. The target's own CmdSN rules (in-order delivery,
held gaps) are ``iscsicore.cmdsn.CmdSNWindow``.
"""

from __future__ import annotations

from iscsicore.seqnum import SERIAL_MASK, sn_add

_HALF = 1 << 31  # serial numbers at least this far ahead are behind (RFC 1982)


class InitiatorNumbering:
    """CmdSN, the target's command window as last advertised, and ExpStatSN."""

    __slots__ = ("cmd_sn", "exp_cmd_sn", "exp_stat_sn", "max_cmd_sn")

    def __init__(self, exp_cmd_sn: int, max_cmd_sn: int, stat_sn: int) -> None:
        """From the final Login Response: its ExpCmdSN is the first CmdSN to use, its
        StatSN the last status seen."""
        self.cmd_sn = exp_cmd_sn & SERIAL_MASK
        self.exp_cmd_sn = self.cmd_sn
        self.max_cmd_sn = max_cmd_sn & SERIAL_MASK
        self.exp_stat_sn = sn_add(stat_sn & SERIAL_MASK, 1)

    def can_send(self) -> bool:
        """Whether a non-immediate PDU may be sent now (an immediate one always may):
        ExpCmdSN <= CmdSN <= MaxCmdSN in serial arithmetic (``seqnum.in_window``, inlined:
        this runs for every command)."""
        low = self.exp_cmd_sn
        span = (self.max_cmd_sn - low) & SERIAL_MASK
        return span < _HALF and (self.cmd_sn - low) & SERIAL_MASK <= span

    def take_cmd_sn(self) -> int:
        """The CmdSN of the next non-immediate PDU; the one after it becomes current."""
        cmd_sn = self.cmd_sn
        self.cmd_sn = (cmd_sn + 1) & SERIAL_MASK
        return cmd_sn

    def update_window(self, exp_cmd_sn: int, max_cmd_sn: int) -> bool:
        """Apply the ExpCmdSN and MaxCmdSN of a target PDU; True when the window moved
        (a sender waiting for room may proceed).

        Neither ever goes back (a stale PDU carries older values), and a pair with
        MaxCmdSN < ExpCmdSN - 1 is ignored as a whole (RFC 7143 section 4.2.2.1).
        """
        if exp_cmd_sn == self.exp_cmd_sn and max_cmd_sn == self.max_cmd_sn:
            return False  # the common case: nothing moved
        # Serial arithmetic inlined (this runs for every response): a - b as a distance
        # in 0 .. 2**32-1, "ahead" when in 1 .. 2**31-1.
        if 2 <= (exp_cmd_sn - max_cmd_sn) & SERIAL_MASK <= _HALF:
            return False  # MaxCmdSN < ExpCmdSN - 1
        changed = False
        if 0 < (exp_cmd_sn - self.exp_cmd_sn) & SERIAL_MASK < _HALF:
            self.exp_cmd_sn = exp_cmd_sn
            changed = True
        if 0 < (max_cmd_sn - self.max_cmd_sn) & SERIAL_MASK < _HALF:
            self.max_cmd_sn = max_cmd_sn
            changed = True
        return changed

    def status_seen(self, stat_sn: int) -> None:
        """A PDU carrying a status numbered ``stat_sn`` arrived: acknowledge it (and,
        implicitly, every status before it) with the next ExpStatSN."""
        next_sn = (stat_sn + 1) & SERIAL_MASK
        if 0 < (next_sn - self.exp_stat_sn) & SERIAL_MASK < _HALF:
            self.exp_stat_sn = next_sn


class StatSN:
    """The target's StatSN on one connection."""

    __slots__ = ("next",)

    def __init__(self, first: int) -> None:
        self.next = first & SERIAL_MASK  # what a PDU without status carries

    def take(self) -> int:
        """The StatSN of a response that carries a status."""
        stat_sn = self.next
        self.next = (stat_sn + 1) & SERIAL_MASK
        return stat_sn
