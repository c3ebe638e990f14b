"""Block commands against a MemoryStore-backed unit."""

from __future__ import annotations

import struct

import pytest

from iscsicore.scsi.opcodes import ScsiOp, ScsiStatus
from iscsicore.scsi.sense import Asc, SenseKey
from stargate.scsi.vpd import BLOCK_LIMITS
from tests.stargate.scsi import BLOCK, BLOCKS, make_unit, run, rw10, rw12, rw16, sense_of


def _pattern(blocks: int, seed: int = 1) -> bytes:
    return bytes((seed + i) % 251 for i in range(blocks * BLOCK))


def _assert_check(result, key: SenseKey, code: Asc) -> None:
    sense = sense_of(result)
    assert sense.key == key, sense
    assert (sense.asc, sense.ascq) == code.value, sense


# ---- capacity ------------------------------------------------------------------------------
def test_read_capacity_10() -> None:
    result = run(make_unit(), bytes([ScsiOp.READ_CAPACITY_10]) + bytes(9))
    assert result.data == struct.pack(">II", BLOCKS - 1, BLOCK)


def test_read_capacity_10_saturates_for_huge_units() -> None:
    unit = make_unit(blocks=(1 << 32) + 8)  # 2 TiB: thin MemoryStore costs nothing
    result = run(unit, bytes([ScsiOp.READ_CAPACITY_10]) + bytes(9))
    assert result.data[:4] == b"\xff\xff\xff\xff"
    rc16 = run(unit, bytes([0x9E, 0x10]) + bytes(8) + struct.pack(">I", 32) + bytes(2))
    assert struct.unpack_from(">Q", rc16.data)[0] == (1 << 32) + 7


def test_read_capacity_10_lba_without_pmi_is_invalid() -> None:
    cdb = bytes([ScsiOp.READ_CAPACITY_10, 0, 0, 0, 0, 1, 0, 0, 0, 0])
    sense = sense_of(run(make_unit(), cdb))
    assert sense.code is Asc.INVALID_FIELD_IN_CDB
    assert sense.field_pointer is not None and sense.field_pointer.byte == 2


def test_read_capacity_16_thin_bits_and_truncation() -> None:
    unit = make_unit()
    full = run(unit, bytes([0x9E, 0x10]) + bytes(8) + struct.pack(">I", 32) + bytes(2))
    assert len(full.data) == 32
    assert struct.unpack_from(">QI", full.data) == (BLOCKS - 1, BLOCK)
    assert full.data[14] & 0xC0 == 0xC0  # LBPME, LBPRZ
    assert full.data[13] & 0x0F == 0  # one logical block per physical block
    short = run(unit, bytes([0x9E, 0x10]) + bytes(8) + struct.pack(">I", 12) + bytes(2))
    assert short.data == full.data[:12]


def test_unknown_service_action_in() -> None:
    sense = sense_of(run(make_unit(), bytes([0x9E, 0x1F]) + bytes(14)))
    assert sense.code is Asc.INVALID_FIELD_IN_CDB


# ---- read / write --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("write", "read"),
    [
        (lambda lba, n: rw10(ScsiOp.WRITE_10, lba, n), lambda lba, n: rw10(ScsiOp.READ_10, lba, n)),
        (lambda lba, n: rw12(ScsiOp.WRITE_12, lba, n), lambda lba, n: rw12(ScsiOp.READ_12, lba, n)),
        (lambda lba, n: rw16(ScsiOp.WRITE_16, lba, n), lambda lba, n: rw16(ScsiOp.READ_16, lba, n)),
        (
            lambda lba, n: bytes([ScsiOp.WRITE_6, 0, lba >> 8, lba & 0xFF, n, 0]),
            lambda lba, n: bytes([ScsiOp.READ_6, 0, lba >> 8, lba & 0xFF, n, 0]),
        ),
    ],
)
def test_write_then_read(write, read) -> None:
    unit = make_unit()
    data = _pattern(3)
    assert run(unit, write(100, 3), data).status == ScsiStatus.GOOD
    assert run(unit, read(100, 3)).data == data
    assert run(unit, read(99, 1)).data == bytes(BLOCK)


def test_read6_zero_transfer_length_reads_256_blocks() -> None:
    result = run(make_unit(), bytes([ScsiOp.READ_6, 0, 0, 0, 0, 0]))
    assert len(result.data) == 256 * BLOCK


def test_zero_length_transfers_are_good() -> None:
    unit = make_unit()
    assert run(unit, rw10(ScsiOp.READ_10, 0, 0)).status == ScsiStatus.GOOD
    assert run(unit, rw16(ScsiOp.WRITE_16, BLOCKS, 0)).status == ScsiStatus.GOOD


@pytest.mark.parametrize(
    "cdb",
    [
        rw10(ScsiOp.READ_10, BLOCKS, 1),
        rw10(ScsiOp.READ_10, BLOCKS - 1, 2),
        rw10(ScsiOp.READ_10, 0xFFFFFFFF, 1),
        rw16(ScsiOp.READ_16, (1 << 64) - 1, 1),
        rw16(ScsiOp.WRITE_16, (1 << 63), 1),
        rw12(ScsiOp.WRITE_12, BLOCKS + 1, 0),
        bytes([ScsiOp.READ_6, 0x1F, 0xFF, 0xFF, 1, 0]),
    ],
)
def test_beyond_end_is_lba_out_of_range(cdb: bytes) -> None:
    result = run(make_unit(), cdb, bytes(4 * BLOCK))
    _assert_check(result, SenseKey.ILLEGAL_REQUEST, Asc.LBA_OUT_OF_RANGE)


def test_protection_fields_are_refused() -> None:
    unit = make_unit()
    for opcode in (ScsiOp.READ_10, ScsiOp.WRITE_10):
        sense = sense_of(run(unit, rw10(opcode, 0, 1, flags=0x20), bytes(BLOCK)))
        assert sense.code is Asc.INVALID_FIELD_IN_CDB
        assert sense.field_pointer is not None and sense.field_pointer.byte == 1


def test_fua_write_needs_sync_plain_write_does_not() -> None:
    unit = make_unit()
    assert run(unit, rw10(ScsiOp.WRITE_10, 0, 1, flags=0x08), bytes(BLOCK)).needs_sync
    assert not run(unit, rw10(ScsiOp.WRITE_10, 0, 1), bytes(BLOCK)).needs_sync
    assert not run(unit, rw10(ScsiOp.READ_10, 0, 1, flags=0x18)).needs_sync


def test_short_data_out_is_refused_without_writing() -> None:
    unit = make_unit()
    result = run(unit, rw10(ScsiOp.WRITE_10, 0, 2), b"\x01" * BLOCK)
    assert result.status == ScsiStatus.CHECK_CONDITION
    assert run(unit, rw10(ScsiOp.READ_10, 0, 1)).data == bytes(BLOCK)


def test_transfer_longer_than_block_limits_is_invalid() -> None:
    blocks = BLOCK_LIMITS.max_transfer_blocks + 1
    sense = sense_of(run(make_unit(blocks=blocks * 2), rw16(ScsiOp.READ_16, 0, blocks)))
    assert sense.code is Asc.INVALID_FIELD_IN_CDB
    assert sense.field_pointer is not None and sense.field_pointer.byte == 10


# ---- verify / write and verify --------------------------------------------------------------
def test_verify_bytchk_match_and_miscompare_offset() -> None:
    unit = make_unit()
    data = _pattern(2)
    run(unit, rw10(ScsiOp.WRITE_10, 10, 2), data)
    assert run(unit, rw10(ScsiOp.VERIFY_10, 10, 2, flags=0x02), data).status == ScsiStatus.GOOD
    tampered = bytearray(data)
    tampered[700] ^= 0xFF
    sense = sense_of(run(unit, rw16(ScsiOp.VERIFY_16, 10, 2, flags=0x02), bytes(tampered)))
    assert sense.key == SenseKey.MISCOMPARE
    assert sense.code is Asc.MISCOMPARE_DURING_VERIFY
    assert sense.information == 700


def test_verify_without_bytchk_only_checks_range() -> None:
    unit = make_unit()
    assert run(unit, rw12(ScsiOp.VERIFY_12, 0, 5)).status == ScsiStatus.GOOD
    result = run(unit, rw12(ScsiOp.VERIFY_12, BLOCKS - 1, 2))
    _assert_check(result, SenseKey.ILLEGAL_REQUEST, Asc.LBA_OUT_OF_RANGE)


def test_verify_bytchk_3_compares_one_block_against_each() -> None:
    unit = make_unit()
    block = bytes([7]) * BLOCK
    run(unit, rw10(ScsiOp.WRITE_10, 0, 3), block * 3)
    assert run(unit, rw16(ScsiOp.VERIFY_16, 0, 3, flags=0x06), block).status == ScsiStatus.GOOD
    run(unit, rw10(ScsiOp.WRITE_10, 2, 1), bytes(BLOCK))
    sense = sense_of(run(unit, rw16(ScsiOp.VERIFY_16, 0, 3, flags=0x06), block))
    assert sense.information == 2 * BLOCK


def test_write_and_verify_writes_and_syncs() -> None:
    unit = make_unit()
    data = _pattern(1, seed=9)
    result = run(unit, rw10(ScsiOp.WRITE_AND_VERIFY_10, 4, 1, flags=0x02), data)
    assert result.status == ScsiStatus.GOOD and result.needs_sync
    assert run(unit, rw10(ScsiOp.READ_10, 4, 1)).data == data


# ---- compare and write -----------------------------------------------------------------------
def _caw(lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQ3xBBB", ScsiOp.COMPARE_AND_WRITE, flags, lba, blocks, 0, 0)


def test_compare_and_write_swaps_when_equal() -> None:
    unit = make_unit()
    old, new = _pattern(1, 1), _pattern(1, 2)
    run(unit, rw10(ScsiOp.WRITE_10, 8, 1), old)
    assert run(unit, _caw(8, 1), old + new).status == ScsiStatus.GOOD
    assert run(unit, rw10(ScsiOp.READ_10, 8, 1)).data == new


def test_compare_and_write_miscompare_reports_offset_and_leaves_data() -> None:
    unit = make_unit()
    old = _pattern(2, 1)
    run(unit, rw10(ScsiOp.WRITE_10, 8, 2), old)
    expected = bytearray(old)
    expected[BLOCK + 3] ^= 1
    result = run(unit, _caw(8, 2), bytes(expected) + _pattern(2, 5))
    sense = sense_of(result)
    assert sense.key == SenseKey.MISCOMPARE
    assert sense.code is Asc.MISCOMPARE_DURING_VERIFY
    assert sense.information == BLOCK + 3
    assert run(unit, rw10(ScsiOp.READ_10, 8, 2)).data == old


def test_compare_and_write_limits() -> None:
    unit = make_unit()
    assert run(unit, _caw(0, 0)).status == ScsiStatus.GOOD
    result = run(unit, _caw(BLOCKS - 1, 2), bytes(4 * BLOCK))
    _assert_check(result, SenseKey.ILLEGAL_REQUEST, Asc.LBA_OUT_OF_RANGE)
    assert run(unit, _caw(0, 1, flags=0x08), bytes(2 * BLOCK)).needs_sync


# ---- write same ----------------------------------------------------------------------------
def test_write_same_10_replicates_block() -> None:
    unit = make_unit()
    block = _pattern(1, 3)
    assert run(unit, rw10(ScsiOp.WRITE_SAME_10, 20, 5), block).status == ScsiStatus.GOOD
    assert run(unit, rw10(ScsiOp.READ_10, 20, 5)).data == block * 5


def test_write_same_unmap_zero_pattern_deallocates() -> None:
    unit = make_unit()
    run(unit, rw10(ScsiOp.WRITE_10, 0, 256), _pattern(256))
    assert run(unit, rw16(ScsiOp.WRITE_SAME_16, 0, 256, flags=0x08), bytes(BLOCK)).status == 0
    assert run(unit, rw10(ScsiOp.READ_10, 0, 256)).data == bytes(256 * BLOCK)
    assert unit.store.allocated_extents(0, 256 * BLOCK)[0].mapped is False


def test_write_same_unmap_nonzero_pattern_writes_it() -> None:
    unit = make_unit()
    block = b"\x5a" * BLOCK
    run(unit, rw16(ScsiOp.WRITE_SAME_16, 0, 4, flags=0x08), block)
    assert run(unit, rw10(ScsiOp.READ_10, 0, 4)).data == block * 4


def test_write_same_16_ndob_needs_no_data() -> None:
    unit = make_unit()
    run(unit, rw10(ScsiOp.WRITE_10, 0, 2), _pattern(2))
    assert run(unit, rw16(ScsiOp.WRITE_SAME_16, 0, 2, flags=0x01)).status == ScsiStatus.GOOD
    assert run(unit, rw10(ScsiOp.READ_10, 0, 2)).data == bytes(2 * BLOCK)


@pytest.mark.parametrize(
    ("cdb", "byte", "bit"),
    [
        (rw10(ScsiOp.WRITE_SAME_10, 0, 0), 7, None),  # WSNZ
        (rw16(ScsiOp.WRITE_SAME_16, 0, 0), 10, None),
        (rw16(ScsiOp.WRITE_SAME_16, 0, 1, flags=0x10), 1, 4),  # ANCHOR
        (rw10(ScsiOp.WRITE_SAME_10, 0, 1, flags=0x01), 1, 0),  # NDOB in the 10-byte form
        (rw10(ScsiOp.WRITE_SAME_10, 0, 1, flags=0x40), 1, 7),  # WRPROTECT
    ],
)
def test_write_same_invalid_fields(cdb: bytes, byte: int, bit: int | None) -> None:
    sense = sense_of(run(make_unit(), cdb, bytes(BLOCK)))
    assert sense.code is Asc.INVALID_FIELD_IN_CDB
    assert sense.field_pointer is not None
    assert (sense.field_pointer.byte, sense.field_pointer.bit) == (byte, bit)


def test_write_same_beyond_end_checked_before_zero_length() -> None:
    result = run(make_unit(), rw10(ScsiOp.WRITE_SAME_10, BLOCKS + 1, 0), bytes(BLOCK))
    _assert_check(result, SenseKey.ILLEGAL_REQUEST, Asc.LBA_OUT_OF_RANGE)


def test_write_same_longer_than_limit() -> None:
    blocks = BLOCK_LIMITS.max_write_same_blocks + 1
    unit = make_unit(blocks=blocks + 8)
    sense = sense_of(run(unit, rw16(ScsiOp.WRITE_SAME_16, 0, blocks), bytes(BLOCK)))
    assert sense.code is Asc.INVALID_FIELD_IN_CDB


# ---- unmap ------------------------------------------------------------------------------
def _unmap_cdb(length: int, anchor: bool = False) -> bytes:
    return struct.pack(">BB5sHB", ScsiOp.UNMAP, 1 if anchor else 0, bytes(5), length, 0)


def _unmap_list(*ranges: tuple[int, int], extra: bytes = b"") -> bytes:
    body = b"".join(struct.pack(">QI4x", lba, blocks) for lba, blocks in ranges) + extra
    return struct.pack(">HH4x", len(body) + 6, len(body)) + body


def test_unmap_deallocates_ranges() -> None:
    unit = make_unit()
    run(unit, rw10(ScsiOp.WRITE_10, 0, 512), _pattern(512))
    params = _unmap_list((0, 128), (256, 128))
    assert run(unit, _unmap_cdb(len(params)), params).status == ScsiStatus.GOOD
    assert run(unit, rw10(ScsiOp.READ_10, 0, 1)).data == bytes(BLOCK)
    assert run(unit, rw10(ScsiOp.READ_10, 128, 1)).data == _pattern(512)[128 * BLOCK :][:BLOCK]
    extents = unit.store.allocated_extents(0, 512 * BLOCK)
    assert [e.mapped for e in extents] == [False, True, False, True]


def test_unmap_empty_and_zero_block_descriptors() -> None:
    unit = make_unit()
    assert run(unit, _unmap_cdb(0)).status == ScsiStatus.GOOD
    params = _unmap_list((5, 0))
    assert run(unit, _unmap_cdb(len(params)), params).status == ScsiStatus.GOOD


def test_unmap_trailing_partial_descriptor_is_ignored() -> None:
    """A BLOCK DESCRIPTOR DATA LENGTH that is not a multiple of 16 (misaligned)."""
    unit = make_unit()
    run(unit, rw10(ScsiOp.WRITE_10, 0, 8), _pattern(8))
    params = _unmap_list((0, 8), extra=b"\xff" * 8)
    assert run(unit, _unmap_cdb(len(params)), params).status == ScsiStatus.GOOD
    assert run(unit, rw10(ScsiOp.READ_10, 0, 8)).data == bytes(8 * BLOCK)


def test_unmap_out_of_range_changes_nothing() -> None:
    unit = make_unit()
    run(unit, rw10(ScsiOp.WRITE_10, 0, 8), _pattern(8))
    params = _unmap_list((0, 8), (BLOCKS - 1, 2))
    result = run(unit, _unmap_cdb(len(params)), params)
    _assert_check(result, SenseKey.ILLEGAL_REQUEST, Asc.LBA_OUT_OF_RANGE)
    assert run(unit, rw10(ScsiOp.READ_10, 0, 8)).data == _pattern(8)


def test_unmap_oversized_descriptor_and_too_many() -> None:
    unit = make_unit(blocks=BLOCK_LIMITS.max_unmap_lba_count * 2)
    params = _unmap_list((0, BLOCK_LIMITS.max_unmap_lba_count + 1))
    sense = sense_of(run(unit, _unmap_cdb(len(params)), params))
    assert sense.code is Asc.INVALID_FIELD_IN_PARAMETER_LIST
    assert sense.field_pointer is not None and not sense.field_pointer.in_cdb
    many = _unmap_list(*[(i, 1) for i in range(BLOCK_LIMITS.max_unmap_descriptors + 1)])
    sense = sense_of(run(unit, _unmap_cdb(len(many)), many))
    assert sense.code is Asc.INVALID_FIELD_IN_PARAMETER_LIST


def test_unmap_bad_lengths() -> None:
    unit = make_unit()
    sense = sense_of(run(unit, _unmap_cdb(4), bytes(4)))
    assert sense.code is Asc.PARAMETER_LIST_LENGTH_ERROR
    params = bytearray(_unmap_list((0, 1)))
    params[2:4] = (64).to_bytes(2, "big")  # descriptors claimed beyond the list
    sense = sense_of(run(unit, _unmap_cdb(len(params)), bytes(params)))
    assert sense.code is Asc.INVALID_FIELD_IN_PARAMETER_LIST
    sense = sense_of(run(unit, _unmap_cdb(24, anchor=True), _unmap_list((0, 1))))
    assert sense.code is Asc.INVALID_FIELD_IN_CDB


# ---- get lba status ----------------------------------------------------------------------
def _get_lba_status(lba: int, length: int = 4096) -> bytes:
    return struct.pack(">BBQIBB", 0x9E, 0x12, lba, length, 0, 0)


def test_get_lba_status_reports_mapped_and_deallocated() -> None:
    unit = make_unit()
    run(unit, rw10(ScsiOp.WRITE_10, 128, 128), _pattern(128))  # one 64 KiB chunk
    result = run(unit, _get_lba_status(0))
    (length,) = struct.unpack_from(">I", result.data)
    assert length == len(result.data) - 4
    descriptors = [
        struct.unpack_from(">QIB", result.data, offset) for offset in range(8, len(result.data), 16)
    ]
    assert descriptors[0] == (0, 128, 1)
    assert descriptors[1] == (128, 128, 0)
    assert descriptors[2] == (256, BLOCKS - 256, 1)


def test_get_lba_status_beyond_end() -> None:
    unit = make_unit()
    _assert_check(
        run(unit, _get_lba_status(BLOCKS)), SenseKey.ILLEGAL_REQUEST, Asc.LBA_OUT_OF_RANGE
    )
    assert run(unit, _get_lba_status(BLOCKS - 1)).status == ScsiStatus.GOOD


# ---- cache -------------------------------------------------------------------------------
def test_synchronize_cache_needs_sync_and_checks_range() -> None:
    unit = make_unit()
    assert run(unit, rw10(ScsiOp.SYNCHRONIZE_CACHE_10, 0, 0)).needs_sync
    assert run(unit, rw16(ScsiOp.SYNCHRONIZE_CACHE_16, 10, 10)).needs_sync
    result = run(unit, rw10(ScsiOp.SYNCHRONIZE_CACHE_10, BLOCKS, 1))
    _assert_check(result, SenseKey.ILLEGAL_REQUEST, Asc.LBA_OUT_OF_RANGE)


def test_pre_fetch() -> None:
    unit = make_unit()
    assert run(unit, rw10(ScsiOp.PRE_FETCH_10, 0, 10)).status == ScsiStatus.GOOD
    result = run(unit, rw16(ScsiOp.PRE_FETCH_16, BLOCKS, 1))
    _assert_check(result, SenseKey.ILLEGAL_REQUEST, Asc.LBA_OUT_OF_RANGE)


# ---- ORWRITE, WRITE ATOMIC, READ DEFECT DATA, Data-Out sizes -------------------------------
def test_orwrite_ors_into_the_medium() -> None:
    unit = make_unit()
    run(unit, rw10(ScsiOp.WRITE_10, 3, 2), b"\xa0" * (2 * BLOCK))
    result = run(unit, rw16(ScsiOp.ORWRITE_16, 3, 2, flags=0x08), b"\x05" * (2 * BLOCK))
    assert result.status == ScsiStatus.GOOD and result.needs_sync
    assert run(unit, rw10(ScsiOp.READ_10, 3, 2)).data == b"\xa5" * (2 * BLOCK)
    sense = sense_of(run(unit, rw16(ScsiOp.ORWRITE_16, 0, 1, flags=0x20), bytes(BLOCK)))
    assert sense.code is Asc.INVALID_FIELD_IN_CDB
    _assert_check(
        run(unit, rw16(ScsiOp.ORWRITE_16, BLOCKS, 1), bytes(BLOCK)),
        SenseKey.ILLEGAL_REQUEST,
        Asc.LBA_OUT_OF_RANGE,
    )


def _write_atomic(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBQ2xHBB", ScsiOp.WRITE_ATOMIC_16, 0, lba, blocks, 0, 0)


def test_write_atomic() -> None:
    unit = make_unit()
    data = _pattern(4, 7)
    assert run(unit, _write_atomic(BLOCKS - 4, 4), data).status == ScsiStatus.GOOD
    assert run(unit, rw16(ScsiOp.READ_16, BLOCKS - 4, 4)).data == data
    _assert_check(
        run(unit, _write_atomic(BLOCKS - 3, 4), data),
        SenseKey.ILLEGAL_REQUEST,
        Asc.LBA_OUT_OF_RANGE,
    )
    big = make_unit(blocks=2 * BLOCK_LIMITS.max_atomic_transfer_blocks)
    blocks = BLOCK_LIMITS.max_atomic_transfer_blocks + 1
    sense = sense_of(run(big, _write_atomic(0, blocks), bytes(blocks * BLOCK)))
    assert sense.field_pointer is not None and sense.field_pointer.byte == 12


def test_read_defect_data_is_an_empty_list() -> None:
    unit = make_unit()
    ten = run(unit, bytes([ScsiOp.READ_DEFECT_DATA_10, 0, 0x18, 0, 0, 0, 0, 0, 32, 0]))
    assert ten.data == bytes([0, 0x18, 0, 0])
    twelve = run(unit, struct.pack(">BBxxxxIBB", ScsiOp.READ_DEFECT_DATA_12, 0x08, 32, 0, 0))
    assert twelve.data == bytes([0, 0x08]) + bytes(6)


@pytest.mark.parametrize("size", [BLOCK // 2, 2 * BLOCK])
def test_write_same_data_out_must_be_one_block(size: int) -> None:
    sense = sense_of(run(make_unit(), rw10(ScsiOp.WRITE_SAME_10, 0, 1, flags=0x08), bytes(size)))
    assert sense.code is Asc.INVALID_FIELD_IN_CDB


def test_compare_and_write_data_out_must_match_length() -> None:
    unit = make_unit()
    for size in (BLOCK, 3 * BLOCK, 4 * BLOCK):
        assert sense_of(run(unit, _caw(0, 1), bytes(size))).code is Asc.INVALID_FIELD_IN_CDB
    # 256 blocks do not fit the one-byte field: encoded as 0 with 512 blocks of Data-Out.
    assert sense_of(run(unit, _caw(0, 0), bytes(512 * BLOCK))).code is Asc.INVALID_FIELD_IN_CDB


def test_get_lba_status_limits_descriptors_to_the_allocation_length() -> None:
    unit = make_unit()
    for lba in range(0, BLOCKS, 256):  # alternate mapped / deallocated 128-block runs
        run(unit, rw10(ScsiOp.WRITE_10, lba, 128), _pattern(128))
    reply = run(unit, _get_lba_status(0, 8 + 3 * 16)).data
    assert struct.unpack_from(">I", reply)[0] == 4 + 3 * 16
    runs = [struct.unpack_from(">QIB", reply, 8 + 16 * i) for i in range(3)]
    assert runs == [(0, 128, 0), (128, 128, 1), (256, 128, 0)]
