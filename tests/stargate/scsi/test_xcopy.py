"""EXTENDED COPY (LID1) and RECEIVE COPY RESULTS."""

from __future__ import annotations

import struct

from iscsicore.scsi.opcodes import ScsiOp, ScsiStatus
from iscsicore.scsi.sense import Asc, SenseKey
from stargate.scsi.lu import LogicalUnit
from stargate.scsi.xcopy import LIMITS
from stargate.stores import MemoryStore
from tests.stargate.scsi import BLOCK, BLOCKS, OTHER_NEXUS, make_unit, run, rw10, sense_of
from topology.vdisk import VDiskMeta


def _target(unit: LogicalUnit, *, kind: int = 0xE4, block: int = BLOCK) -> bytes:
    descriptor = bytearray(32)
    descriptor[0] = kind
    descriptor[4:8] = bytes([0x01, 0x03, 0, 16])  # binary, LU association, NAA, 16 bytes
    descriptor[8:24] = unit.meta.naa
    descriptor[29:32] = block.to_bytes(3, "big")
    return bytes(descriptor)


def _segment(
    blocks: int, source_lba: int, destination_lba: int, src: int = 0, dst: int = 0
) -> bytes:
    return struct.pack(">BBHHH2xHQQ", 0x02, 0, 0x18, src, dst, blocks, source_lba, destination_lba)


def _parameters(
    targets: list[bytes], segments: list[bytes], list_id: int = 1, usage: int = 0
) -> bytes:
    target_bytes, segment_bytes = b"".join(targets), b"".join(segments)
    header = struct.pack(">BBH4xII", list_id, usage << 3, len(target_bytes), len(segment_bytes), 0)
    return header + target_bytes + segment_bytes


def _xcopy(parameters: bytes, length: int | None = None) -> bytes:
    size = len(parameters) if length is None else length
    return struct.pack(">BB8xIBB", ScsiOp.EXTENDED_COPY, 0, size, 0, 0)


def _copy_status(list_id: int) -> bytes:
    return struct.pack(">BBB7xIBB", ScsiOp.RECEIVE_COPY_RESULTS, 0x00, list_id, 1024, 0, 0)


def test_copy_within_the_unit_and_status() -> None:
    unit = make_unit()
    data = bytes(range(256)) * 2 * 16
    run(unit, rw10(ScsiOp.WRITE_10, 0, 16), data)
    assert sense_of(run(unit, _copy_status(7))).code is Asc.INVALID_FIELD_IN_CDB
    params = _parameters([_target(unit)], [_segment(16, 0, BLOCKS - 16)], list_id=7)
    assert run(unit, _xcopy(params), params).status == ScsiStatus.GOOD
    assert run(unit, rw10(ScsiOp.READ_10, BLOCKS - 16, 16)).data == data
    status = run(unit, _copy_status(7)).data
    assert struct.unpack(">IBHBI", status) == (8, 1, 1, 0, 16 * BLOCK)
    # Held per nexus: another initiator has no such list.
    run(unit, bytes(6), nexus=OTHER_NEXUS)  # its power-on unit attention
    sense = sense_of(run(unit, _copy_status(7), nexus=OTHER_NEXUS))
    assert sense.code is Asc.INVALID_FIELD_IN_CDB


def test_overlapping_copy_reads_before_writing() -> None:
    unit = make_unit()
    data = bytes(range(256)) * 2 * 4
    run(unit, rw10(ScsiOp.WRITE_10, 0, 4), data)
    params = _parameters([_target(unit)], [_segment(4, 0, 2)])
    assert run(unit, _xcopy(params), params).status == ScsiStatus.GOOD
    assert run(unit, rw10(ScsiOp.READ_10, 2, 4)).data == data


def test_copy_to_a_sibling_vdisk_through_the_resolver() -> None:
    meta = VDiskMeta("vd2", BLOCKS * BLOCK)
    sibling = LogicalUnit(MemoryStore(meta), meta)
    unit = make_unit()
    unit.copy_target_resolver = lambda designator: sibling if designator == meta.naa else None
    run(unit, rw10(ScsiOp.WRITE_10, 0, 1), b"\x42" * BLOCK)
    params = _parameters([_target(unit), _target(sibling)], [_segment(1, 0, 9, src=0, dst=1)])
    assert run(unit, _xcopy(params), params).status == ScsiStatus.GOOD
    assert sibling.store.read(9 * BLOCK, BLOCK) == b"\x42" * BLOCK


def test_parameter_list_errors() -> None:
    unit = make_unit()
    params = _parameters([_target(unit)], [_segment(1, 0, 1)])
    assert run(unit, _xcopy(b"", 0)).status == ScsiStatus.GOOD
    for cut in (16 + 31, len(params) - 1):
        sense = sense_of(run(unit, _xcopy(params, cut), params[:cut]))
        assert sense.code is Asc.PARAMETER_LIST_LENGTH_ERROR


def test_descriptor_limits_and_types() -> None:
    unit = make_unit()
    many_targets = _parameters(
        [_target(unit)] * (LIMITS.max_target_descriptors + 1), [_segment(1, 0, 1)]
    )
    sense = sense_of(run(unit, _xcopy(many_targets), many_targets))
    assert (sense.asc, sense.ascq) == (0x26, 0x06)
    many_segments = _parameters(
        [_target(unit)], [_segment(1, 0, 1)] * (LIMITS.max_segment_descriptors + 1)
    )
    sense = sense_of(run(unit, _xcopy(many_segments), many_segments))
    assert (sense.asc, sense.ascq) == (0x26, 0x08)
    fibre = _parameters([_target(unit, kind=0xE0)], [_segment(1, 0, 1)])
    sense = sense_of(run(unit, _xcopy(fibre), fibre))
    assert (sense.asc, sense.ascq) == (0x26, 0x07)
    stream = _parameters([_target(unit)], [bytes([0x03, 0, 0, 0x10]) + bytes(16)])
    sense = sense_of(run(unit, _xcopy(stream), stream))
    assert (sense.asc, sense.ascq) == (0x26, 0x09)


def test_copy_aborted_cases() -> None:
    unit = make_unit()
    bad_index = _parameters([_target(unit)], [_segment(1, 0, 1, dst=1)])
    sense = sense_of(run(unit, _xcopy(bad_index), bad_index))
    assert sense.key == SenseKey.COPY_ABORTED
    beyond = _parameters([_target(unit)], [_segment(2, 0, BLOCKS - 1)])
    sense = sense_of(run(unit, _xcopy(beyond), beyond))
    assert sense.key == SenseKey.COPY_ABORTED and sense.command_specific == 0
    stranger = VDiskMeta("elsewhere", BLOCK * 8)
    unknown = _parameters(
        [_target(LogicalUnit(MemoryStore(stranger), stranger))], [_segment(1, 0, 1)]
    )
    assert sense_of(run(unit, _xcopy(unknown), unknown)).key == SenseKey.COPY_ABORTED


def test_operating_parameters() -> None:
    cdb = struct.pack(">BBB7xIBB", ScsiOp.RECEIVE_COPY_RESULTS, 0x03, 0, 1024, 0, 0)
    data = run(make_unit(), cdb).data
    assert struct.unpack_from(">I", data)[0] == len(data) - 4
    assert struct.unpack_from(">HHI", data, 8) == (
        LIMITS.max_target_descriptors,
        LIMITS.max_segment_descriptors,
        LIMITS.max_descriptor_list_length,
    )
    assert data[44 : 44 + data[43]] == bytes([0x02, 0xE4])
