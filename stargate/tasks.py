"""SCSI tasks of a connection: one command from arrival to status, its Data-Out sequences,
and what a write CDB implies about its data (for exact residuals).

The connection (`stargate.connection`) drives them; the command queue sees a task through
the ``QueuedCommand`` protocol (``cancelled``, ``buffer_bytes``, ``dispatch``).
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from iscsicore.pdu import ScsiCommand
from iscsicore.scsi.opcodes import ScsiOp
from stargate.stats import IoKind

if TYPE_CHECKING:
    from stargate.connection import FullFeatureConnection

# CDB transfer lengths: what a write CDB implies, so EDTL mismatches get exact residuals


WRITE_LENGTH_FIELDS: dict[int, tuple[int, str]] = {
    ScsiOp.WRITE_10: (7, ">H"),
    ScsiOp.WRITE_AND_VERIFY_10: (7, ">H"),
    ScsiOp.WRITE_12: (6, ">I"),
    ScsiOp.WRITE_AND_VERIFY_12: (6, ">I"),
    ScsiOp.WRITE_16: (10, ">I"),
    ScsiOp.WRITE_AND_VERIFY_16: (10, ">I"),
    ScsiOp.ORWRITE_16: (10, ">I"),
}


def implied_write_blocks(cdb: bytes) -> int | None:
    """Blocks of Data-Out a write CDB asks for; None for commands without a fixed rule."""
    opcode = cdb[0]
    field = WRITE_LENGTH_FIELDS.get(opcode)
    if field is not None:
        offset, fmt = field
        return int(struct.unpack_from(fmt, cdb, offset)[0])
    if opcode == ScsiOp.WRITE_6:
        return cdb[4] or 256
    if opcode == ScsiOp.COMPARE_AND_WRITE:
        return cdb[13] * 2
    return None


def with_write_blocks(cdb: bytes, blocks: int) -> bytes | None:
    """``cdb`` asking for ``blocks`` instead; None when the CDB cannot say so."""
    field = WRITE_LENGTH_FIELDS.get(cdb[0])
    if field is None:
        return None
    offset, fmt = field
    patched = bytearray(cdb)
    struct.pack_into(fmt, patched, offset, blocks)
    return bytes(patched)


IO_KINDS: dict[int, IoKind] = {
    **{
        int(op): IoKind.READ
        for op in (ScsiOp.READ_6, ScsiOp.READ_10, ScsiOp.READ_12, ScsiOp.READ_16)
    },
    **{int(op): IoKind.WRITE for op in (*WRITE_LENGTH_FIELDS, ScsiOp.WRITE_6)},
}


# ---------------------------------------------------------------------------------------
# Tasks


class TaskPhase(Enum):
    WAITING_FOR_SLOT = "waiting_for_slot"
    RECEIVING = "receiving"
    SYNCING = "syncing"
    HELD = "held"  # executed, its status held back by a fault (delay, hang)
    DONE = "done"


@dataclass(slots=True)
class DataSequence:
    """One Data-Out sequence: the unsolicited burst or the answer to one R2T."""

    ttt: int
    end: int  # buffer offset one past the sequence
    next_offset: int
    next_data_sn: int = 0


class ScsiTask:
    """One SCSI command from arrival to status."""

    __slots__ = (
        "aborted",
        "buffer",
        "cdb",
        "command",
        "connection",
        "early_data",
        "edtl",
        "has_slot",
        "itt",
        "kind",
        "needed",
        "next_r2t_offset",
        "phase",
        "r2t_sn",
        "r2ts",
        "received",
        "residual",
        "started_ns",
        "unsolicited",
    )

    def __init__(self, connection: FullFeatureConnection, command: ScsiCommand, cdb: bytes):
        self.connection = connection
        self.command = command
        self.itt = command.itt
        self.cdb = cdb
        self.edtl = command.expected_data_transfer_length
        self.kind = IO_KINDS.get(cdb[0], IoKind.OTHER)
        self.phase = TaskPhase.WAITING_FOR_SLOT
        self.has_slot = False
        self.aborted = False
        self.needed = 0  # Data-Out bytes the command will use
        # Allocated once the task holds a slot; immediate data that is all of it is used as is.
        self.buffer: bytes | bytearray | memoryview | None = None
        # Immediate/unsolicited data received before that (at most FirstBurstLength).
        self.early_data: list[tuple[int, bytes | bytearray | memoryview]] = []
        self.received = 0
        self.unsolicited: DataSequence | None = None
        self.r2ts: dict[int, DataSequence] = {}
        self.next_r2t_offset = 0
        self.r2t_sn = 0
        # (overflow, count) fixed at arrival for writes; None: computed from Data-In.
        self.residual: tuple[bool, int] | None = None
        self.started_ns = time.perf_counter_ns()

    # QueuedCommand protocol
    @property
    def cancelled(self) -> bool:
        # Finished while still waiting for a slot (e.g. a Data-Out sequence error): the
        # queue must skip it, or the slot it hands over is never given back.
        return self.aborted or self.phase is TaskPhase.DONE

    @property
    def buffer_bytes(self) -> int:
        return self.needed

    def dispatch(self) -> None:
        self.has_slot = True
        self.connection._slot_granted(self)

    @property
    def data_complete(self) -> bool:
        return self.received >= self.needed and self.unsolicited is None
