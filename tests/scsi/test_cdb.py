"""Block CDB decoding."""

from __future__ import annotations

import pytest

from iscsicore.scsi.cdb import (
    CdbFieldError,
    decode_compare_and_write,
    decode_read_write,
    decode_sync_cache,
    decode_verify,
    decode_write_same,
)
from iscsicore.scsi.opcodes import ScsiOp, cdb_length_for_opcode
from iscsicore.scsi.sense import Asc, SenseKey, parse_sense
from tests.scsi import rw10, rw12, rw16


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
