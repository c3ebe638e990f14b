"""SCSI tasks of a connection: one command from arrival to status, its Data-Out sequences,
and what a write CDB implies about its data (for exact residuals).

The connection (`stargate.transport`, its `data_out` layer and above) drives them; the
command queue sees a task through the ``QueuedCommand`` protocol (``cancelled``,
``buffer_bytes``, ``tenant``, ``dispatch``).
"""

from __future__ import annotations

import time
from enum import Enum
from typing import TYPE_CHECKING

from iscsicore.fullfeature.sequence import DataSequence
from iscsicore.pdu import ScsiCommand
from iscsicore.scsi.cdb import BLOCK_CDBS
from iscsicore.scsi.opcodes import ScsiOp
from stargate.stats import IoKind

if TYPE_CHECKING:
    from stargate.queue import Tenant
    from stargate.transport.data_out import DataOutReceiver
    from stargate.transport.lun_routes import LunRoute

# CDB transfer lengths: what a write CDB implies, so EDTL mismatches get exact residuals


# The writes whose TRANSFER LENGTH field says how many blocks of Data-Out follow (their
# layouts: `BLOCK_CDBS`); WRITE(6) and COMPARE AND WRITE have their own rule below.
WRITE_LENGTH_OPCODES: frozenset[int] = frozenset(
    int(op)
    for op in (
        ScsiOp.WRITE_10,
        ScsiOp.WRITE_AND_VERIFY_10,
        ScsiOp.WRITE_12,
        ScsiOp.WRITE_AND_VERIFY_12,
        ScsiOp.WRITE_16,
        ScsiOp.WRITE_AND_VERIFY_16,
        ScsiOp.ORWRITE_16,
    )
)


def implied_write_blocks(cdb: bytes) -> int | None:
    """Blocks of Data-Out a write CDB asks for; None for commands without a fixed rule."""
    opcode = cdb[0]
    if opcode in WRITE_LENGTH_OPCODES:
        return int(BLOCK_CDBS[opcode].blocks_field.unpack_from(cdb)[0])
    if opcode == ScsiOp.WRITE_6:
        return cdb[4] or 256
    if opcode == ScsiOp.COMPARE_AND_WRITE:
        # Data-Out carries the compare blocks, then as many write blocks.
        return int(BLOCK_CDBS[opcode].blocks_field.unpack_from(cdb)[0]) * 2
    return None


def with_write_blocks(cdb: bytes, blocks: int) -> bytes | None:
    """``cdb`` asking for ``blocks`` instead; None when the CDB cannot say so."""
    if cdb[0] not in WRITE_LENGTH_OPCODES:
        return None
    return BLOCK_CDBS[cdb[0]].with_blocks(cdb, blocks)


IO_KINDS: dict[int, IoKind] = {
    **{
        int(op): IoKind.READ
        for op in (ScsiOp.READ_6, ScsiOp.READ_10, ScsiOp.READ_12, ScsiOp.READ_16)
    },
    **{int(op): IoKind.WRITE for op in (*WRITE_LENGTH_OPCODES, ScsiOp.WRITE_6)},
}


# ---------------------------------------------------------------------------------------
# Tasks


class TaskPhase(Enum):
    WAITING_FOR_SLOT = "waiting_for_slot"
    RECEIVING = "receiving"
    SYNCING = "syncing"
    HELD = "held"  # executed, its status held back by a fault (delay, hang)
    DONE = "done"


class ScsiTask:
    """One SCSI command from arrival to status."""

    __slots__ = (
        "aborted",
        "buffer",
        "cdb",
        "command",
        "connection",
        "data_digest_failed",
        "data_since",
        "early_data",
        "edtl",
        "executed_ns",
        "has_slot",
        "itt",
        "kind",
        "needed",
        "next_r2t_offset",
        "phase",
        "queued_ns",
        "r2t_sn",
        "r2ts",
        "received",
        "residual",
        "route",
        "started_ns",
        "unsolicited",
    )

    def __init__(
        self, connection: DataOutReceiver, command: ScsiCommand, cdb: bytes, route: LunRoute
    ):
        self.connection = connection
        # The LUN it runs on and is charged to; a LUN the target lacks is charged to LUN 0.
        self.route = route
        self.command = command
        self.itt = command.itt
        self.cdb = cdb
        self.edtl = command.expected_data_transfer_length
        self.kind = IO_KINDS.get(cdb[0], IoKind.OTHER)
        self.phase = TaskPhase.WAITING_FOR_SLOT
        self.has_slot = False
        self.aborted = False
        # A Data-Out of it failed its data digest: the rest of its data is discarded, and it
        # ends with CHECK CONDITION once the initiator has sent all it was asked for.
        self.data_digest_failed = False
        self.needed = 0  # Data-Out bytes the command will use
        # Started once the task holds a slot and grown as its data arrives (never reserved
        # in full ahead of it); immediate data that is all of it is used as is.
        self.buffer: bytes | bytearray | memoryview | None = None
        # Immediate/unsolicited data received before that (at most FirstBurstLength).
        self.early_data: list[tuple[int, bytes | bytearray | memoryview]] = []
        self.received = 0
        # Its Data-Out sequences: the unsolicited burst, and the answer to each R2T by TTT.
        self.unsolicited: DataSequence | None = None
        self.r2ts: dict[int, DataSequence] = {}
        self.next_r2t_offset = 0
        self.r2t_sn = 0
        self.data_since = 0.0  # trio clock: when it began waiting for Data-Out with a slot
        # (overflow, count) fixed at arrival for writes; None: computed from Data-In.
        self.residual: tuple[bool, int] | None = None
        self.started_ns = time.perf_counter_ns()
        self.queued_ns = 0  # phases for the traces (stargate.traces); 0: not reached
        self.executed_ns = 0

    # QueuedCommand protocol
    @property
    def cancelled(self) -> bool:
        # Ended (aborted, or failed while it waited for a slot): never to be dispatched.
        return self.aborted or self.phase is TaskPhase.DONE

    @property
    def buffer_bytes(self) -> int:
        return self.needed

    @property
    def tenant(self) -> Tenant | None:
        return self.route.tenant

    def dispatch(self) -> None:
        self.has_slot = True
        self.connection._slot_granted(self)

    def refuse(self, status: int) -> None:
        """Answer ``status`` without running it, from outside the connection's own tasks
        (a command that waited, parked, too long for its vDisk: cluster admission)."""
        self.connection._finish(self, status)
        self.connection._wake_writer()

    @property
    def data_complete(self) -> bool:
        return self.received >= self.needed and self.unsolicited is None
