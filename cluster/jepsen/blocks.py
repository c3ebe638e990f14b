"""Self-describing 512-byte sectors: every write's value can be told apart from every other.

A sector holds a magic, the vDisk id, its LBA, the writing client and that client's
sequence number, a filler and a CRC32C. A read is decoded to the `Value` it holds, to the
initial (all-zero) value, or to why it cannot be attributed to a write of this block.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum

from iscsicore.digest import crc32c

SECTOR = 512
MAGIC = b"SGJEPSEN"
_HEADER = struct.Struct(">8s32sQIQ")  # magic, vDisk id, lba, client, seq
_CRC = struct.Struct(">I")


@dataclass(frozen=True, slots=True, order=True)
class Value:
    """One write's value: unique per (vDisk, block) because each client counts its writes.
    ``Value(0, 0)`` is the initial value (a never-written, all-zero block)."""

    client: int
    seq: int

    def __str__(self) -> str:
        return "initial" if self == INITIAL else f"c{self.client}#{self.seq}"


INITIAL = Value(0, 0)


class Decoded(Enum):
    VALUE = "value"  # a value written to this very block (or the initial zeros)
    CORRUPT = "corrupt"  # neither zeros nor an intact sector of ours: torn or garbage
    MISDIRECTED = "misdirected"  # an intact sector written for another block or vDisk


@dataclass(frozen=True, slots=True)
class ReadBack:
    decoded: Decoded
    value: Value | None = None
    detail: str = ""


def encode(vdisk: str, lba: int, value: Value) -> bytes:
    header = _HEADER.pack(MAGIC, vdisk.encode()[:32], lba, value.client, value.seq)
    filler_length = SECTOR - _HEADER.size - _CRC.size
    filler = (header * (filler_length // len(header) + 1))[:filler_length]
    body = header + filler
    return body + _CRC.pack(crc32c(body))


def decode(vdisk: str, lba: int, sector: bytes | bytearray | memoryview) -> ReadBack:
    data = bytes(sector)
    if len(data) != SECTOR:
        return ReadBack(Decoded.CORRUPT, detail=f"{len(data)} bytes, not {SECTOR}")
    if data == bytes(SECTOR):
        return ReadBack(Decoded.VALUE, INITIAL)
    if _CRC.unpack_from(data, SECTOR - _CRC.size)[0] != crc32c(data[: -_CRC.size]):
        return ReadBack(Decoded.CORRUPT, detail=f"bad CRC, starts {data[:16].hex()}")
    magic, raw_vdisk, found_lba, client, seq = _HEADER.unpack_from(data)
    if magic != MAGIC:
        return ReadBack(Decoded.CORRUPT, detail=f"bad magic {magic!r}")
    found_vdisk = raw_vdisk.rstrip(b"\0").decode(errors="replace")
    if found_lba != lba or found_vdisk != vdisk[:32]:
        return ReadBack(
            Decoded.MISDIRECTED,
            Value(client, seq),
            f"written for vDisk {found_vdisk} LBA {found_lba}",
        )
    return ReadBack(Decoded.VALUE, Value(client, seq))
