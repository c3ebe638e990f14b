"""iSCSI sessions: identity (initiator name, ISID, TSIH), the CmdSN window, and the table of
live sessions used for TSIH allocation, reinstatement and per-vDisk control (async logout).

One connection per session (MaxConnections=1), so the session's connection is a single
attribute; the CmdSN window still lives here because it is session-wide in the RFC.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from iscsicore.cmdsn import CmdSNWindow
from iscsicore.keys import SessionType
from iscsicore.seqnum import SERIAL_MASK

if TYPE_CHECKING:
    from stargate.target import VDiskTarget

MAX_TSIH = 0xFFFF


class Session:
    """One session: who it is for, and its CmdSN window (`iscsicore.cmdsn`), which holds the
    PDUs that arrive after a CmdSN gap until the gap fills."""

    def __init__(
        self,
        initiator_name: str,
        isid: int,
        tsih: int,
        session_type: SessionType,
        target: VDiskTarget | None,  # None for discovery sessions
        exp_cmd_sn: int,
        *,
        closer: Callable[[str], None] | None = None,
    ) -> None:
        self.initiator_name = initiator_name
        self.isid = isid
        self.tsih = tsih
        self.session_type = session_type
        self.target = target
        self.window: CmdSNWindow[Any] = CmdSNWindow(exp_cmd_sn)
        # Called to end the session from outside (reinstatement, shutdown, async drop).
        self.closer = closer
        self.closed = False

    def __repr__(self) -> str:
        return (
            f"Session({self.initiator_name!r}, isid=0x{self.isid:012x}, tsih={self.tsih}, "
            f"target={self.target_name!r})"
        )

    @property
    def exp_cmd_sn(self) -> int:
        return self.window.exp_cmd_sn

    @property
    def max_cmd_sn(self) -> int:
        return self.window.max_cmd_sn

    @max_cmd_sn.setter
    def max_cmd_sn(self, value: int) -> None:
        self.window.max_cmd_sn = value & SERIAL_MASK

    @property
    def target_name(self) -> str | None:
        return self.target.name if self.target is not None else None

    def advertise_window(self, share: int) -> int:
        """The MaxCmdSN to put in the next PDU, from this session's share of free slots."""
        return self.window.advertise(share)

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
