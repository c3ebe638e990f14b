"""Write evidence: per vDisk and node, the epochs under which this stargate executed writes.

DIR/evidence/<vdisk id>.node<N> is a small mmap'd ring of slots, one per claim (epoch) of
the vDisk at that node: the epoch, when it was claimed, how many writes were executed under
it and when the last one passed its fence check. The page cache keeps what was stored even
when the process is SIGKILLed, so a checker (cluster.jepsen) can prove afterwards that no
two stargates executed writes for one vDisk in the same epoch, and that no write passed its
fence check after a newer epoch had been claimed.

A write's time is taken *before* its fence check: a write timed after a newer claim then
proves the check passed although the record had moved (preemption between the check and
the note cannot make a false alarm). A process stopped between its check and its pwrite is
not seen here (the known window, cluster/README.md); the data checker sees what it did.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

# Header: next slot (uint32), slot count (uint32). Slot: epoch (uint32), pad (uint32),
# claimed_at (float64), writes (uint64), last_write_at (float64).
_HEADER = struct.Struct("<II")
_SLOT = struct.Struct("<IIdQd")
SLOTS = 512
_WRITES = struct.Struct("<Qd")  # the slot's last two fields
_SIZE = _HEADER.size + SLOTS * _SLOT.size


@dataclass(frozen=True, slots=True)
class EpochEvidence:
    """What one node did under one epoch of one vDisk."""

    vdisk: str
    node: int
    epoch: int
    claimed_at: float
    writes: int
    last_write_at: float  # 0.0: no write


def evidence_file(directory: Path, vdisk_id: str, node_id: int) -> Path:
    return directory / f"{vdisk_id}.node{node_id}"


class EvidenceFile:
    """This node's evidence for one vDisk, mapped; one `EpochSlot` per claim."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < _SIZE:
                os.ftruncate(fd, _SIZE)
            self._map = mmap.mmap(fd, _SIZE)
        finally:
            os.close(fd)

    def begin(self, epoch: int) -> EpochSlot:
        """A slot for the epoch just claimed (only this process writes this file)."""
        index, _ = _HEADER.unpack_from(self._map, 0)
        offset = _HEADER.size + (index % SLOTS) * _SLOT.size
        _SLOT.pack_into(self._map, offset, epoch, 0, time.time(), 0, 0.0)
        _HEADER.pack_into(self._map, 0, index + 1, SLOTS)
        return EpochSlot(self._map, offset)


class EpochSlot:
    __slots__ = ("_map", "_offset", "writes")

    def __init__(self, mapped: mmap.mmap, offset: int) -> None:
        self._map = mapped
        self._offset = offset
        self.writes = 0

    def note_write(self, started: float) -> None:
        """A write that passed its fence check at or after ``started`` was executed."""
        self.writes += 1
        _WRITES.pack_into(self._map, self._offset + 16, self.writes, started)


def read_evidence(directory: Path) -> list[EpochEvidence]:
    """Every slot of every evidence file under ``directory`` (DIR/evidence)."""
    result = []
    for path in sorted(directory.glob("*.node*")) if directory.is_dir() else []:
        vdisk, _, node = path.name.rpartition(".node")
        data = path.read_bytes()
        if len(data) < _SIZE or not node.isdigit():
            continue
        used, _ = _HEADER.unpack_from(data, 0)
        for index in range(min(used, SLOTS)):
            epoch, _, claimed_at, writes, last = _SLOT.unpack_from(
                data, _HEADER.size + index * _SLOT.size
            )
            result.append(EpochEvidence(vdisk, int(node), epoch, claimed_at, writes, last))
    return result
