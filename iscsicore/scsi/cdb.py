"""Typed decoding of block-command CDBs (SBC-3).

Decoders check only what the CDB layout itself can get wrong (length, a field that cannot
be encoded); semantic checks against the medium (LBA range, limits) belong to the target.
Errors are ``CdbFieldError``: ILLEGAL REQUEST, INVALID FIELD IN CDB with a field pointer.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
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


# ---- THE block-CDB layout table ------------------------------------------------------
# Every place that reads an LBA, a transfer length or the flags byte of a block CDB takes
# the layout from here (the general decoders below, the logical unit's fast path, the plain
# connection path, write residuals, fault triggers). Byte 1 holds the flags (protect,
# DPO, FUA, ...) in all but the 6-byte forms; the last byte is CONTROL.

_STRUCT_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}
# Byte 1 (the flags byte of every non-short layout)
PROTECT_MASK = 0xE0  # RDPROTECT / WRPROTECT / VRPROTECT (bits 7-5)
DPO = 0x10
FUA = 0x08


@dataclass(frozen=True)
class BlockCdbLayout:
    """Where one opcode's fields live: byte offsets and widths (big-endian).

    ``short`` is the READ(6)/WRITE(6) form: a 21-bit LBA in bytes 1-3 (no flags byte),
    and a TRANSFER LENGTH of zero meaning 256 blocks (SBC-3 5.15). ``fields`` and
    ``blocks_field`` are derived, precompiled unpackers: one ``unpack_from`` each (never
    pack with them: their pad bytes would zero the other fields; see `with_blocks`).
    """

    opcode: int
    length: int
    lba_offset: int
    lba_width: int
    blocks_offset: int
    blocks_width: int
    group_offset: int | None
    short: bool = False
    # Derived (see __post_init__): (flags, lba, blocks, control) in one unpack; for the
    # short form "flags" is byte 1 (LBA bits 20-16 included) and "lba" bytes 2-3 only.
    fields: struct.Struct = field(init=False, repr=False, compare=False)
    blocks_field: struct.Struct = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The short form's 3-byte LBA has no struct code: byte 1 is unpacked as the
        # "flags" byte and bytes 2-3 as the "lba"; `unpack` puts them together.
        lba = (2, 2) if self.short else (self.lba_offset, self.lba_width)
        slots = {1: 1, lba[0]: lba[1], self.blocks_offset: self.blocks_width, self.length - 1: 1}
        fmt, at = ">", 0
        for offset in sorted(slots):
            fmt += (f"{offset - at}x" if offset > at else "") + _STRUCT_CODES[slots[offset]]
            at = offset + slots[offset]
        object.__setattr__(self, "fields", struct.Struct(fmt))
        blocks_fmt = f">{self.blocks_offset}x{_STRUCT_CODES[self.blocks_width]}"
        object.__setattr__(self, "blocks_field", struct.Struct(blocks_fmt))

    def unpack(self, cdb: bytes | bytearray | memoryview) -> tuple[int, int, int, int]:
        """(flags, lba, blocks, control); the CDB must be at least ``length`` bytes."""
        flags, lba, blocks, control = self.fields.unpack_from(cdb)
        if self.short:
            return 0, ((flags & 0x1F) << 16) | lba, blocks or 256, control
        return flags, lba, blocks, control

    def with_blocks(self, cdb: bytes, blocks: int) -> bytes:
        """``cdb`` with its TRANSFER LENGTH set to ``blocks`` (0-255 in the short form),
        every other byte kept."""
        patched = bytearray(cdb)
        end = self.blocks_offset + self.blocks_width
        patched[self.blocks_offset : end] = blocks.to_bytes(self.blocks_width, "big")
        return bytes(patched)

    def usage(self, flags: int) -> bytes:
        """CDB USAGE DATA (REPORT SUPPORTED OPERATION CODES, SPC-4 6.35): every LBA,
        length and group bit honoured, plus ``flags`` in byte 1 (the short form: its LBA
        bits there); CONTROL 0 (no NACA)."""
        usage = bytearray(self.length)
        usage[0] = self.opcode
        usage[self.lba_offset : self.lba_offset + self.lba_width] = b"\xff" * self.lba_width
        usage[1] = 0x1F if self.short else flags  # short form: LBA bits 20-16
        end = self.blocks_offset + self.blocks_width
        usage[self.blocks_offset : end] = b"\xff" * self.blocks_width
        if self.group_offset is not None:
            usage[self.group_offset] = 0x3F
        return bytes(usage)

    def group(self, cdb: bytes | bytearray | memoryview) -> int:
        """GROUP NUMBER (bits 5-0 of its byte); 0 where the layout has none."""
        return 0 if self.group_offset is None else cdb[self.group_offset] & 0x3F


def _layouts() -> dict[int, BlockCdbLayout]:
    six = {ScsiOp.READ_6, ScsiOp.WRITE_6}
    ten = {
        ScsiOp.READ_10,
        ScsiOp.WRITE_10,
        ScsiOp.WRITE_AND_VERIFY_10,
        ScsiOp.VERIFY_10,
        ScsiOp.WRITE_SAME_10,
        ScsiOp.SYNCHRONIZE_CACHE_10,
        ScsiOp.PRE_FETCH_10,
    }
    twelve = {ScsiOp.READ_12, ScsiOp.WRITE_12, ScsiOp.WRITE_AND_VERIFY_12, ScsiOp.VERIFY_12}
    sixteen = {
        ScsiOp.READ_16,
        ScsiOp.WRITE_16,
        ScsiOp.ORWRITE_16,
        ScsiOp.WRITE_AND_VERIFY_16,
        ScsiOp.VERIFY_16,
        ScsiOp.WRITE_SAME_16,
        ScsiOp.SYNCHRONIZE_CACHE_16,
        ScsiOp.PRE_FETCH_16,
    }
    table: dict[int, BlockCdbLayout] = {}
    for op in six:  # LBA bytes 1-3 (21 bits), length byte 4
        table[op] = BlockCdbLayout(op, 6, 1, 3, 4, 1, None, short=True)
    for op in ten:  # LBA 2-5, group 6, length 7-8
        table[op] = BlockCdbLayout(op, 10, 2, 4, 7, 2, 6)
    for op in twelve:  # LBA 2-5, length 6-9, group 10
        table[op] = BlockCdbLayout(op, 12, 2, 4, 6, 4, 10)
    for op in sixteen:  # LBA 2-9, length 10-13, group 14
        table[op] = BlockCdbLayout(op, 16, 2, 8, 10, 4, 14)
    # COMPARE AND WRITE: NUMBER OF LOGICAL BLOCKS is one byte (13), group 14.
    table[ScsiOp.COMPARE_AND_WRITE] = BlockCdbLayout(ScsiOp.COMPARE_AND_WRITE, 16, 2, 8, 13, 1, 14)
    # WRITE ATOMIC(16) (SBC-4): a 2-byte TRANSFER LENGTH at 12-13, group 14.
    table[ScsiOp.WRITE_ATOMIC_16] = BlockCdbLayout(ScsiOp.WRITE_ATOMIC_16, 16, 2, 8, 12, 2, 14)
    return {int(op): layout for op, layout in table.items()}


BLOCK_CDBS: dict[int, BlockCdbLayout] = _layouts()
# The opcodes `decode_block_range` takes: the common 10/12/16 layouts (not the 6-byte forms,
# COMPARE AND WRITE or WRITE ATOMIC, which have their own decoders).
_RANGED = frozenset(
    op
    for op, layout in BLOCK_CDBS.items()
    if not layout.short and op not in (ScsiOp.COMPARE_AND_WRITE, ScsiOp.WRITE_ATOMIC_16)
)


def encode_block_cdb(
    opcode: int, lba: int, blocks: int, flags: int = 0, group: int = 0, control: int = 0
) -> bytes:
    """A block CDB of ``opcode`` per `BLOCK_CDBS` (for the short form, ``blocks`` 256 is
    encoded as 0 and ``flags`` is ignored: byte 1 holds LBA bits)."""
    layout = BLOCK_CDBS[opcode]
    cdb = bytearray(layout.length)
    cdb[0] = opcode
    if layout.short:
        cdb[1:4] = (lba & 0x1FFFFF).to_bytes(3, "big")
        cdb[4] = blocks & 0xFF
    else:
        cdb[1] = flags
        cdb[layout.lba_offset : layout.lba_offset + layout.lba_width] = lba.to_bytes(
            layout.lba_width, "big"
        )
        cdb[layout.blocks_offset : layout.blocks_offset + layout.blocks_width] = blocks.to_bytes(
            layout.blocks_width, "big"
        )
        if layout.group_offset is not None:
            cdb[layout.group_offset] = group & 0x3F
    cdb[-1] = control
    return bytes(cdb)


def decode_block_range(cdb: bytes) -> tuple[int, int, int]:
    """(lba, blocks, group) of a 10/12/16-byte block CDB in the common SBC layout."""
    opcode = cdb[0]
    if opcode not in _RANGED:
        raise CdbFieldError(0, reason=f"opcode {opcode:#04x} has no block range")
    layout = BLOCK_CDBS[opcode]
    require_length(cdb, layout.length)
    _, lba, blocks, _ = layout.fields.unpack_from(cdb)
    return lba, blocks, layout.group(cdb)


def _decode_flagged(cdb: bytes, layout: BlockCdbLayout) -> ReadWriteCdb:
    require_length(cdb, layout.length)
    flags, lba, blocks, _ = layout.fields.unpack_from(cdb)
    return ReadWriteCdb(
        lba=lba,
        blocks=blocks,
        protect=flags >> 5,
        dpo=bool(flags & DPO),
        fua=bool(flags & FUA),
        group=layout.group(cdb),
    )


def decode_read_write(cdb: bytes) -> ReadWriteCdb:
    """READ/WRITE 6/10/12/16, WRITE AND VERIFY 10/12/16 and ORWRITE(16)."""
    if not cdb:
        raise CdbFieldError(0, reason="empty CDB")
    layout = BLOCK_CDBS.get(cdb[0])
    if layout is not None and layout.short:
        require_length(cdb, 6)
        _, lba, blocks, _ = layout.unpack(cdb)
        return ReadWriteCdb(lba=lba, blocks=blocks)
    lba, blocks, group = decode_block_range(cdb)
    flags = cdb[1]
    return ReadWriteCdb(
        lba=lba,
        blocks=blocks,
        protect=flags >> 5,
        dpo=bool(flags & DPO),
        fua=bool(flags & FUA),
        group=group,
        bytchk=(flags >> 1) & 0x03,
    )


def decode_write_atomic(cdb: bytes) -> ReadWriteCdb:
    """WRITE ATOMIC(16) (SBC-4): a 2-byte TRANSFER LENGTH at bytes 12-13."""
    return _decode_flagged(cdb, BLOCK_CDBS[ScsiOp.WRITE_ATOMIC_16])


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
    return _decode_flagged(cdb, BLOCK_CDBS[ScsiOp.COMPARE_AND_WRITE])


def allocation_length(cdb: bytes, offset: int, width: int) -> int:
    """The big-endian ALLOCATION LENGTH (or PARAMETER LIST LENGTH) field at ``offset``."""
    require_length(cdb, offset + width)
    return int.from_bytes(cdb[offset : offset + width], "big")
