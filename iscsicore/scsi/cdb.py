"""Typed decoding of block-command CDBs (SBC-3).

Decoders check only what the CDB layout itself can get wrong (length, a field that cannot
be encoded); semantic checks against the medium (LBA range, limits) belong to the target.
Errors are ``CdbFieldError``: ILLEGAL REQUEST, INVALID FIELD IN CDB with a field pointer.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from iscsicore.scsi.opcodes import ScsiOp
from iscsicore.scsi.sense import Asc, CheckCondition, FieldPointer, SenseKey


class CdbFieldError(CheckCondition):
    """A CDB field is invalid: maps to INVALID FIELD IN CDB pointing at ``byte``/``bit``."""

    def __init__(self, byte: int, bit: int | None = None, reason: str = "") -> None:
        super().__init__(
            SenseKey.ILLEGAL_REQUEST,
            Asc.INVALID_FIELD_IN_CDB,
            field_pointer=FieldPointer(in_cdb=True, byte=byte, bit=bit),
        )
        self.byte = byte
        self.bit = bit
        self.reason = reason


def require_length(cdb: bytes, length: int) -> None:
    """A CDB shorter than its opcode's layout: point past the last byte received."""
    if len(cdb) < length:
        raise CdbFieldError(len(cdb), reason=f"CDB is {len(cdb)} bytes, needs {length}")


class BlockRange(NamedTuple):
    """What most block commands address: a starting LBA and a number of blocks."""

    lba: int
    blocks: int


# NamedTuples rather than frozen dataclasses: one is decoded per I/O, and tuples are
# several times cheaper to build.
class ReadWriteCdb(NamedTuple):
    """READ/WRITE/WRITE AND VERIFY 6/10/12/16, ORWRITE(16) and COMPARE AND WRITE."""

    lba: int
    blocks: int
    protect: int = 0  # RDPROTECT / WRPROTECT (bits 7-5 of byte 1)
    dpo: bool = False
    fua: bool = False
    group: int = 0
    bytchk: int = 0  # WRITE AND VERIFY only


class VerifyCdb(NamedTuple):
    lba: int
    blocks: int
    protect: int = 0
    dpo: bool = False
    bytchk: int = 0
    group: int = 0


class WriteSameCdb(NamedTuple):
    lba: int
    blocks: int
    protect: int = 0
    anchor: bool = False
    unmap: bool = False
    ndob: bool = False
    group: int = 0


class SyncCacheCdb(NamedTuple):
    lba: int
    blocks: int
    immed: bool = False
    group: int = 0


_READ_WRITE_6 = frozenset({ScsiOp.READ_6, ScsiOp.WRITE_6})
_TEN = frozenset(
    {
        ScsiOp.READ_10,
        ScsiOp.WRITE_10,
        ScsiOp.WRITE_AND_VERIFY_10,
        ScsiOp.VERIFY_10,
        ScsiOp.WRITE_SAME_10,
        ScsiOp.SYNCHRONIZE_CACHE_10,
        ScsiOp.PRE_FETCH_10,
    }
)
_TWELVE = frozenset({ScsiOp.READ_12, ScsiOp.WRITE_12, ScsiOp.WRITE_AND_VERIFY_12, ScsiOp.VERIFY_12})
_SIXTEEN = frozenset(
    {
        ScsiOp.READ_16,
        ScsiOp.WRITE_16,
        ScsiOp.ORWRITE_16,
        ScsiOp.WRITE_AND_VERIFY_16,
        ScsiOp.VERIFY_16,
        ScsiOp.WRITE_SAME_16,
        ScsiOp.SYNCHRONIZE_CACHE_16,
        ScsiOp.PRE_FETCH_16,
    }
)


def decode_block_range(cdb: bytes) -> tuple[int, int, int]:
    """(lba, blocks, group) of a 10/12/16-byte block CDB in the common SBC layout."""
    opcode = cdb[0]
    if opcode in _TEN:
        require_length(cdb, 10)
        lba, group, blocks = struct.unpack_from(">IBH", cdb, 2)
    elif opcode in _TWELVE:
        require_length(cdb, 12)
        lba, blocks, group = struct.unpack_from(">IIB", cdb, 2)
    elif opcode in _SIXTEEN:
        require_length(cdb, 16)
        lba, blocks, group = struct.unpack_from(">QIB", cdb, 2)
    else:
        raise CdbFieldError(0, reason=f"opcode {opcode:#04x} has no block range")
    return lba, blocks, group & 0x3F


def decode_read_write(cdb: bytes) -> ReadWriteCdb:
    """READ/WRITE 6/10/12/16, WRITE AND VERIFY 10/12/16 and ORWRITE(16)."""
    if not cdb:
        raise CdbFieldError(0, reason="empty CDB")
    if cdb[0] in _READ_WRITE_6:
        require_length(cdb, 6)
        lba = ((cdb[1] & 0x1F) << 16) | (cdb[2] << 8) | cdb[3]
        # SBC-3 5.15: a TRANSFER LENGTH of zero in READ(6)/WRITE(6) means 256 blocks.
        return ReadWriteCdb(lba=lba, blocks=cdb[4] or 256)
    lba, blocks, group = decode_block_range(cdb)
    flags = cdb[1]
    return ReadWriteCdb(
        lba=lba,
        blocks=blocks,
        protect=flags >> 5,
        dpo=bool(flags & 0x10),
        fua=bool(flags & 0x08),
        group=group,
        bytchk=(flags >> 1) & 0x03,
    )


def decode_write_atomic(cdb: bytes) -> ReadWriteCdb:
    """WRITE ATOMIC(16) (SBC-4): a 2-byte TRANSFER LENGTH at bytes 12-13."""
    require_length(cdb, 16)
    flags = cdb[1]
    lba, blocks = struct.unpack_from(">Q2xH", cdb, 2)
    return ReadWriteCdb(
        lba=lba,
        blocks=blocks,
        protect=flags >> 5,
        dpo=bool(flags & 0x10),
        fua=bool(flags & 0x08),
        group=cdb[14] & 0x3F,
    )


def decode_verify(cdb: bytes) -> VerifyCdb:
    """VERIFY 10/12/16: BYTCHK is two bits (SBC-3 5.27)."""
    lba, blocks, group = decode_block_range(cdb)
    flags = cdb[1]
    return VerifyCdb(
        lba=lba,
        blocks=blocks,
        protect=flags >> 5,
        dpo=bool(flags & 0x10),
        bytchk=(flags >> 1) & 0x03,
        group=group,
    )


def decode_write_same(cdb: bytes) -> WriteSameCdb:
    """WRITE SAME 10/16 (NDOB exists only in the 16-byte form)."""
    lba, blocks, group = decode_block_range(cdb)
    flags = cdb[1]
    return WriteSameCdb(
        lba=lba,
        blocks=blocks,
        protect=flags >> 5,
        anchor=bool(flags & 0x10),
        unmap=bool(flags & 0x08),
        ndob=cdb[0] == ScsiOp.WRITE_SAME_16 and bool(flags & 0x01),
        group=group,
    )


def decode_sync_cache(cdb: bytes) -> SyncCacheCdb:
    """SYNCHRONIZE CACHE 10/16 and PRE-FETCH 10/16 (same layout)."""
    lba, blocks, group = decode_block_range(cdb)
    return SyncCacheCdb(lba=lba, blocks=blocks, immed=bool(cdb[1] & 0x02), group=group)


def decode_compare_and_write(cdb: bytes) -> ReadWriteCdb:
    """COMPARE AND WRITE (0x89): NUMBER OF LOGICAL BLOCKS is one byte (byte 13)."""
    require_length(cdb, 16)
    flags = cdb[1]
    (lba,) = struct.unpack_from(">Q", cdb, 2)
    return ReadWriteCdb(
        lba=lba,
        blocks=cdb[13],
        protect=flags >> 5,
        dpo=bool(flags & 0x10),
        fua=bool(flags & 0x08),
        group=cdb[14] & 0x3F,
    )


def allocation_length(cdb: bytes, offset: int, width: int) -> int:
    """The big-endian ALLOCATION LENGTH (or PARAMETER LIST LENGTH) field at ``offset``."""
    require_length(cdb, offset + width)
    return int.from_bytes(cdb[offset : offset + width], "big")
