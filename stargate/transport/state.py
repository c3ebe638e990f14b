"""What one full-feature connection holds (as LIO's ``struct iscsi_conn``): the layers of
`stargate.transport` read and write it; `runner.FullFeatureConnection.__init__` sets it."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Any

import trio

from faults.model import Fault
from iscsicore.cmdsn import CmdSNWindow
from iscsicore.framing import PduFramer
from iscsicore.fullfeature.numbering import StatSN
from iscsicore.keys import SessionParams
from iscsicore.pdu import DataOut, Pdu
from stargate.queue import CommandQueue, Tenant
from stargate.reader_hub import ReaderHub
from stargate.scsi.command import Nexus
from stargate.session import Session
from stargate.stats import VDiskStats
from stargate.target import LogicalUnitLike, VDiskTarget
from stargate.tasks import ScsiTask
from stargate.transport.config import ConnectionTimers
from stargate.transport.interfaces import (
    ByteChannel,
    FaultStrategy,
    ReadySocket,
    TaskDirectory,
    TextResponder,
)
from stargate.transport.lun_routes import LunRoutes

if TYPE_CHECKING:
    from stargate.transport.runner import FullFeatureConnection

# A handler of one PDU type. Any: the dispatch table maps each PDU type to the handler of
# that type, which a dict's value type cannot say.
Handler = Callable[[Any], None]
# A PDU held behind a CmdSN gap, with what handles it in its turn.
HeldPdu = tuple[Handler, Pdu]


class DigestTamper(Enum):
    """Which digest of the next PDU serialized a fault corrupts."""

    HEADER = "header"
    DATA = "data"


class ConnectionClosed(Exception):
    """Raised inside the connection to end it (logout done, drop requested, fatal error)."""


class StopBatch(Exception):
    """Stop handling the PDUs of this wake-up: flush what is queued, then close."""


class ConnectionState:
    """The state every layer shares; no behaviour but `close`."""

    # -- given at construction
    framer: PduFramer
    session: Session
    params: SessionParams
    queue: CommandQueue
    nexus: Nexus
    cid: int
    timers: ConnectionTimers
    text_responder: TextResponder | None
    directory: TaskDirectory | None
    on_close: Callable[[FullFeatureConnection], None] | None
    # 0: one send per wake-up. N: also a non-blocking send after every N PDUs handled.
    eager_send_every: int
    # From the server: whether to log a protocol error of this peer now (and how many were
    # left out before it); None: always.
    log_gate: Callable[[], tuple[bool, int]] | None
    # The fault strategy: looked at (`armed`) once per batch of PDUs.
    faults: FaultStrategy
    _io: ByteChannel
    # The server's one reader for all connections; serves this one while its channel is a
    # socket (not after a fault replaced it).
    _hub: ReaderHub | None
    _hub_socket: ReadySocket | None

    # -- the target served (None for a discovery session): its LUNs by LUN field, and
    # LUN 0's logical unit, vDisk, counters and tenant
    target: VDiskTarget | None
    routes: LunRoutes | None
    lu: LogicalUnitLike | None
    block_size: int
    vdisk_key: str
    vdisk_id: str
    stats: VDiskStats | None
    tenant: Tenant | None  # whom this connection's commands are charged to in the queue

    # -- sequence numbers and tasks
    _stat_sn: StatSN
    # Session-wide in the RFC; one connection per session, so this connection drives it.
    _cmd_sn_window: CmdSNWindow[HeldPdu]
    # Unsolicited Data-Out of held write commands, by ITT, replayed when they are delivered
    # (bool: it failed its data digest). At most FirstBurstLength each.
    _held_data: dict[int, list[tuple[DataOut, bool]]]
    _tasks: dict[int, ScsiTask]
    _next_ttt: int
    cmd_sn_out_of_window: int  # for the initiator auditor

    # -- output
    _out: bytearray
    _sending: bool
    _send_finished: trio.Event | None  # set when a waited-for send ends
    _unsent: int
    _in_batch: bool
    _writer_wakeup: trio.Event
    _header_digest: bool
    _data_digest: bool
    _max_send_segment: int

    # -- the dispatch table and the control-PDU allowance (ConnectionTimers)
    _handler_table: dict[type[Pdu], tuple[Handler, bool]]
    _faulted_table: dict[type[Pdu], tuple[Handler, bool]]  # while a fault is armed
    _control_rate: float
    _control_burst: float
    _control_tokens: float
    _control_stamp: float
    _control_quantum: float
    _control_resume: float | None  # while out of tokens: when reading resumes
    control_pauses: int  # times the allowance stopped reading (statistics)

    # -- lifecycle and timers
    _last_receive: float
    _partial_since: float | None  # when the incomplete PDU at the framer's head began
    _keepalive_scope: trio.CancelScope | None
    _watchdog_scope: trio.CancelScope | None
    _closing_reason: str | None  # set: close once the output is flushed
    _cancel_scope: trio.CancelScope | None
    _nursery: trio.Nursery | None
    _pending_logout_deadline: float | None
    logout_requested_at: float | None  # wall clock, for the auditor
    protocol_error_drop: bool  # dropped for a protocol error (the server slows the address)

    # -- fault effects (`fault_hooks`): all off unless a fault fired
    _execution_faults: dict[int, Fault]  # by ITT: faults `execution` applies
    _frozen_max_cmd_sn: int | None  # MaxCmdSN held still (FREEZE_WINDOW)
    _freezes: int  # freezes begun: a thaw ends only the latest
    _r2ts_withheld: bool  # R2Ts of the command being handled are held back
    _digest_tamper: DigestTamper | None  # corrupt the next PDU serialized

    def close(self, reason: str) -> None:
        """End the connection from outside (reinstatement, shutdown, async drop)."""
        if self._closing_reason is None:
            self._closing_reason = reason
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()
