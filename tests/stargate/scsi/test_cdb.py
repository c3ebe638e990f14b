"""Block CDB decoding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iscsicore.scsi.cdb import (
    BLOCK_CDBS,
    DPO,
    FUA,
    CdbFieldError,
    decode_block_range,
    decode_compare_and_write,
    decode_read_write,
    decode_sync_cache,
    decode_verify,
    decode_write_atomic,
    decode_write_same,
    encode_block_cdb,
)
from iscsicore.scsi.opcodes import ScsiOp, cdb_length_for_opcode
from iscsicore.scsi.sense import Asc, SenseKey, parse_sense
from tests.stargate.scsi import rw10, rw12, rw16


def test_read6_zero_length_means_256() -> None:
    decoded = decode_read_write(bytes([ScsiOp.READ_6, 0x1F, 0xFF, 0xFE, 0, 0]))
    assert decoded.lba == 0x1FFFFE
    assert decoded.blocks == 256


def test_write6_length() -> None:
    assert decode_read_write(bytes([ScsiOp.WRITE_6, 0, 0, 7, 9, 0])).blocks == 9


@pytest.mark.parametrize(
    ("cdb", "lba", "blocks"),
    [
        (rw10(ScsiOp.READ_10, 0xDEADBEEF, 0x1234), 0xDEADBEEF, 0x1234),
        (rw12(ScsiOp.WRITE_12, 77, 0x10000), 77, 0x10000),
        (rw16(ScsiOp.READ_16, 1 << 40, 0xFFFFFFFF), 1 << 40, 0xFFFFFFFF),
    ],
)
def test_lba_and_length(cdb: bytes, lba: int, blocks: int) -> None:
    decoded = decode_read_write(cdb)
    assert (decoded.lba, decoded.blocks) == (lba, blocks)


def test_flags() -> None:
    decoded = decode_read_write(rw10(ScsiOp.WRITE_10, 0, 1, flags=0x18 | 0x60))
    assert decoded.fua and decoded.dpo
    assert decoded.protect == 3


def test_verify_bytchk_and_write_same_bits() -> None:
    assert decode_verify(rw16(ScsiOp.VERIFY_16, 5, 1, flags=0x06)).bytchk == 3
    ws = decode_write_same(rw16(ScsiOp.WRITE_SAME_16, 5, 8, flags=0x19))
    assert ws.anchor and ws.unmap and ws.ndob
    ws10 = decode_write_same(rw10(ScsiOp.WRITE_SAME_10, 5, 8, flags=0x09))
    assert ws10.unmap and not ws10.ndob  # no NDOB in the 10-byte form


def test_sync_cache_immed() -> None:
    assert decode_sync_cache(rw10(ScsiOp.SYNCHRONIZE_CACHE_10, 1, 2, flags=0x02)).immed


def test_compare_and_write_length_byte() -> None:
    cdb = bytearray(16)
    cdb[0], cdb[13] = ScsiOp.COMPARE_AND_WRITE, 3
    cdb[2:10] = (99).to_bytes(8, "big")
    decoded = decode_compare_and_write(bytes(cdb))
    assert (decoded.lba, decoded.blocks) == (99, 3)


def test_short_cdb_is_invalid_field_with_pointer() -> None:
    with pytest.raises(CdbFieldError) as caught:
        decode_read_write(bytes([ScsiOp.READ_16, 0, 0]))
    sense = parse_sense(caught.value.sense())
    assert sense.key == SenseKey.ILLEGAL_REQUEST
    assert sense.code is Asc.INVALID_FIELD_IN_CDB
    assert sense.field_pointer is not None and sense.field_pointer.byte == 3


def test_group_code_lengths() -> None:
    assert cdb_length_for_opcode(ScsiOp.READ_6) == 6
    assert cdb_length_for_opcode(ScsiOp.READ_10) == 10
    assert cdb_length_for_opcode(ScsiOp.READ_12) == 12
    assert cdb_length_for_opcode(ScsiOp.READ_16) == 16
    assert cdb_length_for_opcode(0x7F) is None


# ---- the block-CDB table: fast unpackers against the table and the general decoders ----
_SHORT_OPS = sorted(op for op, layout in BLOCK_CDBS.items() if layout.short)
_LONG_OPS = sorted(op for op, layout in BLOCK_CDBS.items() if not layout.short)


@st.composite
def _block_fields(draw: st.DrawFn) -> tuple[int, int, int, int, int, int]:
    """(opcode, lba, blocks, flags, group, control) that fit the opcode's layout."""
    opcode = draw(st.sampled_from(sorted(BLOCK_CDBS)))
    layout = BLOCK_CDBS[opcode]
    if layout.short:
        lba = draw(st.integers(0, (1 << 21) - 1))
        blocks = draw(st.integers(1, 256))
        return opcode, lba, blocks, 0, 0, draw(st.integers(0, 255))
    lba = draw(st.integers(0, (1 << (8 * layout.lba_width)) - 1))
    blocks = draw(st.integers(0, (1 << (8 * layout.blocks_width)) - 1))
    group = draw(st.integers(0, 0x3F)) if layout.group_offset is not None else 0
    return opcode, lba, blocks, draw(st.integers(0, 255)), group, draw(st.integers(0, 255))


@given(_block_fields())
def test_table_round_trip(fields: tuple[int, int, int, int, int, int]) -> None:
    opcode, lba, blocks, flags, group, control = fields
    layout = BLOCK_CDBS[opcode]
    cdb = encode_block_cdb(opcode, lba, blocks, flags=flags, group=group, control=control)
    assert len(cdb) == layout.length and cdb[0] == opcode and cdb[-1] == control
    # The fast unpacker (one precompiled unpack_from) reads what was encoded ...
    unpacked_flags, unpacked_lba, unpacked_blocks, unpacked_control = layout.unpack(cdb)
    assert (unpacked_lba, unpacked_blocks, unpacked_control) == (lba, blocks, control)
    if not layout.short:
        assert unpacked_flags == flags
        assert layout.fields.unpack_from(cdb) == (flags, lba, blocks, control)
        assert layout.blocks_field.unpack_from(cdb) == (blocks,)
    assert layout.group(cdb) == group
    # Patching the transfer length touches that field alone.
    other = (blocks + 1) % (1 << (8 * layout.blocks_width))
    patched = layout.with_blocks(cdb, other)
    assert layout.blocks_field.unpack_from(patched) == (other,)
    end = layout.blocks_offset + layout.blocks_width
    assert (
        patched[: layout.blocks_offset] + patched[end:] == cdb[: layout.blocks_offset] + cdb[end:]
    )
    # ... and so does the general decoder for the opcode.
    decoder = {
        ScsiOp.COMPARE_AND_WRITE: decode_compare_and_write,
        ScsiOp.WRITE_ATOMIC_16: decode_write_atomic,
    }.get(ScsiOp(opcode))
    if decoder is not None:
        decoded = decoder(cdb)
        assert (decoded.lba, decoded.blocks, decoded.group) == (lba, blocks, group)
        assert (decoded.dpo, decoded.fua, decoded.protect) == (
            bool(flags & DPO),
            bool(flags & FUA),
            flags >> 5,
        )
    elif layout.short:
        decoded_rw = decode_read_write(cdb)
        assert (decoded_rw.lba, decoded_rw.blocks) == (lba, blocks)
    else:
        assert decode_block_range(cdb) == (lba, blocks, group)


@given(st.sampled_from(_LONG_OPS), st.binary(min_size=16, max_size=16))
def test_fast_unpacker_matches_the_table_offsets(opcode: int, raw: bytes) -> None:
    """Any bytes: the derived struct reads exactly the table's byte ranges."""
    layout = BLOCK_CDBS[opcode]
    cdb = bytes([opcode]) + raw[1 : layout.length]
    lba = int.from_bytes(cdb[layout.lba_offset : layout.lba_offset + layout.lba_width], "big")
    end = layout.blocks_offset + layout.blocks_width
    blocks = int.from_bytes(cdb[layout.blocks_offset : end], "big")
    assert layout.fields.unpack_from(cdb) == (cdb[1], lba, blocks, cdb[-1])


@given(st.sampled_from(_SHORT_OPS), st.binary(min_size=5, max_size=5))
def test_short_form_unpacker(opcode: int, raw: bytes) -> None:
    cdb = bytes([opcode]) + raw
    _, lba, blocks, control = BLOCK_CDBS[opcode].unpack(cdb)
    assert lba == int.from_bytes(cdb[1:4], "big") & 0x1FFFFF
    assert blocks == (cdb[4] or 256) and control == cdb[5]
    assert (decode_read_write(cdb).lba, decode_read_write(cdb).blocks) == (lba, blocks)


def test_table_covers_the_block_commands() -> None:
    assert set(BLOCK_CDBS) == {
        int(op)
        for op in ScsiOp
        if op.name.startswith(
            ("READ_", "WRITE_", "VERIFY_", "PRE_FETCH_", "SYNCHRONIZE_CACHE_", "ORWRITE_")
        )
        and op.name not in {"READ_CAPACITY_10", "WRITE_BUFFER", "READ_BUFFER"}
        and not op.name.startswith("READ_DEFECT")
    } | {ScsiOp.COMPARE_AND_WRITE}
    for opcode, layout in BLOCK_CDBS.items():
        assert layout.length == cdb_length_for_opcode(opcode)


@pytest.mark.parametrize("opcode", sorted(BLOCK_CDBS))
def test_usage_data_marks_the_table_fields(opcode: int) -> None:
    layout = BLOCK_CDBS[opcode]
    usage = layout.usage(DPO | FUA)
    assert len(usage) == layout.length and usage[0] == opcode and usage[-1] == 0
    # Every field the table names is honoured, whatever it holds: a CDB of all of them
    # set decodes to the widest values.
    _, lba, blocks, _ = layout.unpack(usage)
    if layout.short:
        assert (usage[1], lba, blocks) == (0x1F, 0x1FFFFF, 255)
    else:
        assert usage[1] == DPO | FUA
        assert lba == (1 << (8 * layout.lba_width)) - 1
        assert blocks == (1 << (8 * layout.blocks_width)) - 1
        assert layout.group(usage) == (0x3F if layout.group_offset is not None else 0)
