"""The values passed between the transport, the logical unit and command emulation.

Kept apart from lu.py so that command modules (sbc, spc, pr, ...) can import them without
importing the dispatcher that imports them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from iscsicore.scsi.opcodes import ScsiStatus

if TYPE_CHECKING:
    from stargate.scsi.lu import LogicalUnit


class Nexus(NamedTuple):
    """An I_T nexus: the SCSI initiator port (iSCSI: initiator name + ",i,0x" + ISID) and
    the target port (target name + ",t,0x" + TPGT). Hashable: unit attentions and
    reservations are kept per nexus, looked up on every command; a NamedTuple hashes
    about three times faster than a frozen dataclass."""

    initiator_port: str
    target_port: str


class ScsiResult(NamedTuple):
    """What the transport sends back: status, Data-In, sense (with CHECK CONDITION).

    ``needs_sync``: run ``store.sync()`` (in a worker thread) before sending the status;
    set by FUA writes, write-through mode and SYNCHRONIZE CACHE. A NamedTuple, not a frozen
    dataclass: one is built per command and tuples are several times cheaper to build.
    """

    status: ScsiStatus
    data: bytes = b""
    sense: bytes = b""
    needs_sync: bool = False


GOOD = ScsiResult(ScsiStatus.GOOD)


class Command(NamedTuple):
    """One command as the emulation sees it."""

    cdb: bytes
    data_out: bytes | bytearray | memoryview
    nexus: Nexus

    @property
    def opcode(self) -> int:
        return self.cdb[0]

    @property
    def service_action(self) -> int:
        return self.cdb[1] & 0x1F if len(self.cdb) > 1 else 0


Handler = Callable[["LogicalUnit", Command], ScsiResult]


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """How the dispatcher treats one opcode.

    ``cdb_length``: bytes the CDB must have; ``reports_unit_attention``: False for the
    commands SPC-4 5.14 exempts (INQUIRY, REPORT LUNS, REQUEST SENSE). ``usage``: the CDB
    USAGE DATA of REPORT SUPPORTED OPERATION CODES (a mask of the bits the command honours);
    for opcodes with service actions, ``service_actions`` maps each one to its usage data.
    """

    name: str
    handler: Handler
    cdb_length: int
    reports_unit_attention: bool = True
    usage: bytes = b""
    service_actions: Mapping[int, bytes] = field(default_factory=dict)


def data_in(payload: bytes | bytearray, allocation_length: int) -> ScsiResult:
    """GOOD with parameter data cut to the ALLOCATION LENGTH (SPC-4 4.2.5.6)."""
    if len(payload) > allocation_length:
        payload = payload[:allocation_length]
    return ScsiResult(ScsiStatus.GOOD, data=bytes(payload))
