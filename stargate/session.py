"""iSCSI sessions: identity (initiator name, ISID, TSIH), the CmdSN window, and the table of
live sessions used for TSIH allocation, reinstatement and per-vDisk control (async logout).

One connection per session (MaxConnections=1), so the session's connection is a single
attribute; the CmdSN window still lives here because it is session-wide in the RFC.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from iscsicore.keys import SessionType
from iscsicore.seqnum import SERIAL_MASK, in_window, sn_gt

if TYPE_CHECKING:
    from stargate.target import VDiskTarget

MAX_TSIH = 0xFFFF
_HALF = 1 << 31


class CmdSnVerdict(Enum):
    ACCEPT = "accept"
    OUT_OF_WINDOW = "out_of_window"  # silently ignored (RFC 7143 section 4.2.2.1)


@dataclass(eq=False)
class Session:
    initiator_name: str
    isid: int
    tsih: int
    session_type: SessionType
    target: VDiskTarget | None  # None for discovery sessions
    exp_cmd_sn: int
    max_cmd_sn: int = 0
    # Called to end the session from outside (reinstatement, shutdown, async drop).
    closer: Callable[[str], None] | None = field(default=None, repr=False)
    closed: bool = False

    def __post_init__(self) -> None:
        self.max_cmd_sn = self.exp_cmd_sn  # a window of one until the first response

    @property
    def target_name(self) -> str | None:
        return self.target.name if self.target is not None else None

    def check_cmd_sn(self, cmd_sn: int, *, immediate: bool) -> CmdSnVerdict:
        """Whether a command with this CmdSN may be delivered; advances ExpCmdSN if so.

        Immediate commands are delivered whatever their CmdSN and do not advance it. A
        non-immediate command must lie in [ExpCmdSN, MaxCmdSN] (serial arithmetic).
        """
        if immediate:
            return CmdSnVerdict.ACCEPT
        if not in_window(cmd_sn, self.exp_cmd_sn, self.max_cmd_sn):
            return CmdSnVerdict.OUT_OF_WINDOW
        next_sn = (cmd_sn + 1) & SERIAL_MASK
        if sn_gt(next_sn, self.exp_cmd_sn):
            self.exp_cmd_sn = next_sn
        return CmdSnVerdict.ACCEPT

    def advertise_window(self, share: int) -> int:
        """The MaxCmdSN to put in the next PDU, from this session's share of free slots.

        MaxCmdSN = ExpCmdSN + share - 1, never below ExpCmdSN - 1 (closed window). An
        initiator never lowers its own copy of MaxCmdSN, so neither does this: a shrunken
        share shows as a window that stops advancing.
        """
        wanted = (self.exp_cmd_sn + max(share, 0) - 1) & SERIAL_MASK
        if 0 < (wanted - self.max_cmd_sn) & SERIAL_MASK < _HALF:  # serial "wanted > max"
            self.max_cmd_sn = wanted
        return self.max_cmd_sn

    def close(self, reason: str) -> None:
        if self.closer is not None and not self.closed:
            self.closer(reason)


class SessionTable:
    """Live sessions of one stargate, keyed by TSIH."""

    def __init__(self) -> None:
        self._by_tsih: dict[int, Session] = {}
        self._next_tsih = 1

    def allocate_tsih(self) -> int:
        for _ in range(MAX_TSIH):
            candidate = self._next_tsih
            self._next_tsih = candidate % MAX_TSIH + 1  # 1 .. 65535; 0 is reserved
            if candidate not in self._by_tsih:
                return candidate
        raise RuntimeError("all 65535 TSIHs are in use")

    def add(self, session: Session) -> None:
        self._by_tsih[session.tsih] = session

    def remove(self, session: Session) -> None:
        if self._by_tsih.get(session.tsih) is session:
            del self._by_tsih[session.tsih]

    def get(self, tsih: int) -> Session | None:
        return self._by_tsih.get(tsih)

    def find(self, initiator_name: str, isid: int, target_name: str | None) -> Session | None:
        """The session a login with TSIH 0 and this identity reinstates, if any."""
        for session in self._by_tsih.values():
            if (
                session.initiator_name == initiator_name
                and session.isid == isid
                and session.target_name == target_name
                and not session.closed
            ):
                return session
        return None

    def of_target(self, target_name: str) -> list[Session]:
        return [s for s in self._by_tsih.values() if s.target_name == target_name]

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._by_tsih.values()))

    def __len__(self) -> int:
        return len(self._by_tsih)
