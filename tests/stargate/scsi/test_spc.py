"""Primary commands: INQUIRY and VPD, MODE SENSE/SELECT, REQUEST SENSE, REPORT LUNS, the
supported-operation-code reports."""

from __future__ import annotations

import struct

import pytest

from iscsicore.pdu import encode_lun, lun_number
from iscsicore.scsi.opcodes import ScsiOp, ScsiStatus
from iscsicore.scsi.sense import Asc, SenseKey, parse_sense
from stargate.scsi.lu import LogicalUnit
from stargate.scsi.vpd import BLOCK_LIMITS
from stargate.stores import MemoryStore
from tests.stargate.scsi import BLOCK, BLOCKS, NEXUS, OTHER_NEXUS, make_unit, run, rw10, sense_of
from topology.vdisk import VDiskMeta


def _inquiry(evpd: int = 0, page: int = 0, length: int = 255, flags: int = 0) -> bytes:
    return struct.pack(">BBBHB", ScsiOp.INQUIRY, evpd | flags, page, length, 0)


# ---- INQUIRY ----------------------------------------------------------------------------
def test_standard_inquiry() -> None:
    data = run(make_unit(), _inquiry()).data
    assert len(data) >= 36
    assert data[0] == 0x00  # connected direct-access block device
    assert data[1] & 0x80 == 0  # not removable
    assert data[2] == 0x06  # SPC-4
    assert data[3] & 0x0F == 2 and data[3] & 0x10  # response format 2, HiSup
    assert data[4] == len(data) - 5
    assert data[5] & 0x30 == 0  # no TPGS
    assert data[5] & 0x08  # 3PC: EXTENDED COPY
    assert data[7] & 0x02  # CmdQue
    assert data[8:16] == b"NUTANIX "
    assert data[16:32].rstrip() == b"VDISK"


def test_inquiry_allocation_length_truncates() -> None:
    unit = make_unit()
    full = run(unit, _inquiry()).data
    for length in (0, 1, 5, 36):
        assert run(unit, _inquiry(length=length)).data == full[:length]


@pytest.mark.parametrize(
    ("cdb", "byte", "bit"),
    [
        (_inquiry(page=0x80), 2, None),  # page code without EVPD
        (_inquiry(flags=0x02), 1, 1),  # CMDDT
        (_inquiry(evpd=1, page=0x42), 2, None),  # unknown VPD page
    ],
)
def test_inquiry_invalid_fields(cdb: bytes, byte: int, bit: int | None) -> None:
    sense = sense_of(run(make_unit(), cdb))
    assert sense.code is Asc.INVALID_FIELD_IN_CDB
    assert sense.field_pointer is not None
    assert (sense.field_pointer.byte, sense.field_pointer.bit) == (byte, bit)
    assert sense.field_pointer.in_cdb


def test_supported_vpd_pages() -> None:
    data = run(make_unit(), _inquiry(evpd=1, page=0x00)).data
    assert data[1] == 0x00
    pages = list(data[4 : 4 + struct.unpack_from(">H", data, 2)[0]])
    assert pages == [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]
    for page in pages:
        reply = run(make_unit(), _inquiry(evpd=1, page=page, length=1024)).data
        assert reply[1] == page
        assert struct.unpack_from(">H", reply, 2)[0] == len(reply) - 4


def test_unit_serial_number() -> None:
    data = run(make_unit(), _inquiry(evpd=1, page=0x80)).data
    assert data[4:] == b"vd1"


def _designators(page: bytes) -> list[tuple[int, int, int, bytes]]:
    out, position = [], 4
    while position < len(page):
        length = page[position + 3]
        out.append(
            (
                page[position] & 0x0F,
                (page[position + 1] >> 4) & 0x03,
                page[position + 1] & 0x0F,
                page[position + 4 : position + 4 + length],
            )
        )
        position += 4 + length
    return out


def test_device_identification_naa_is_stable() -> None:
    first = _designators(run(make_unit(), _inquiry(evpd=1, page=0x83, length=1024)).data)
    second = _designators(run(make_unit(), _inquiry(evpd=1, page=0x83, length=1024)).data)
    assert first == second
    naa = [d for d in first if d[2] == 3]
    assert len(naa) == 1 and naa[0][1] == 0 and len(naa[0][3]) == 16
    assert naa[0][3][0] >> 4 == 6  # NAA IEEE Registered Extended
    t10 = [d for d in first if d[2] == 1]
    assert t10 and t10[0][3].startswith(b"NUTANIX ")
    relative = [d for d in first if d[2] == 4]
    assert relative and relative[0][1] == 1 and relative[0][3] == b"\x00\x00\x00\x01"
    names = [d for d in first if d[2] == 8]
    assert names and names[0][3].rstrip(b"\x00") == NEXUS.target_port.encode()
    assert len(names[0][3]) % 4 == 0


def test_block_limits_page() -> None:
    data = run(make_unit(), _inquiry(evpd=1, page=0xB0)).data
    assert struct.unpack_from(">H", data, 2)[0] == 0x3C
    assert data[4] & 0x01  # WSNZ
    assert data[5] == BLOCK_LIMITS.max_compare_and_write_blocks
    assert struct.unpack_from(">I", data, 8)[0] == BLOCK_LIMITS.max_transfer_blocks
    assert struct.unpack_from(">I", data, 20)[0] == BLOCK_LIMITS.max_unmap_lba_count
    assert struct.unpack_from(">I", data, 24)[0] == BLOCK_LIMITS.max_unmap_descriptors
    assert struct.unpack_from(">Q", data, 36)[0] == BLOCK_LIMITS.max_write_same_blocks


def test_characteristics_and_provisioning_pages() -> None:
    b1 = run(make_unit(), _inquiry(evpd=1, page=0xB1)).data
    assert struct.unpack_from(">H", b1, 4)[0] == 1
    b2 = run(make_unit(), _inquiry(evpd=1, page=0xB2)).data
    assert b2[5] & 0xE4 == 0xE4  # LBPU LBPWS LBPWS10 LBPRZ
    assert b2[6] & 0x07 == 2  # thin


# ---- MODE SENSE / SELECT ----------------------------------------------------------------
def _mode_sense6(page: int = 0x3F, pc: int = 0, dbd: bool = False, length: int = 255) -> bytes:
    return bytes([ScsiOp.MODE_SENSE_6, 0x08 if dbd else 0, (pc << 6) | page, 0, length, 0])


def _mode_sense10(page: int = 0x3F, llbaa: bool = False, length: int = 1024) -> bytes:
    return struct.pack(">BBBB3xHB", ScsiOp.MODE_SENSE_10, 0x10 if llbaa else 0, page, 0, length, 0)


def _pages(data: bytes) -> dict[int, bytes]:
    pages, position = {}, 0
    while position < len(data):
        pages[data[position] & 0x3F] = data[position : position + 2 + data[position + 1]]
        position += 2 + data[position + 1]
    return pages


def test_mode_sense6_all_pages_with_block_descriptor() -> None:
    data = run(make_unit(), _mode_sense6()).data
    assert data[0] == len(data) - 1
    assert data[2] & 0x10  # DPOFUA
    assert data[2] & 0x80 == 0  # not write protected
    assert data[3] == 8
    assert struct.unpack_from(">I", data, 4)[0] == BLOCKS
    assert int.from_bytes(data[9:12], "big") == BLOCK
    pages = _pages(data[12:])
    assert set(pages) == {0x08, 0x0A, 0x1C}
    assert pages[0x08][2] & 0x04  # WCE


def test_mode_sense6_dbd_and_single_page_and_truncation() -> None:
    unit = make_unit()
    data = run(unit, _mode_sense6(page=0x0A, dbd=True)).data
    assert data[3] == 0
    assert data[4] == 0x0A and data[5] == 10
    assert len(data) == 4 + 12
    assert run(unit, _mode_sense6(page=0x0A, dbd=True, length=6)).data == data[:6]


def test_mode_sense10_long_lba_descriptor() -> None:
    data = run(make_unit(), _mode_sense10(llbaa=True)).data
    assert struct.unpack_from(">H", data, 0)[0] == len(data) - 2
    assert data[4] & 0x01
    assert struct.unpack_from(">H", data, 6)[0] == 16
    assert struct.unpack_from(">QII", data, 8) == (BLOCKS, 0, BLOCK)


def test_mode_sense_page_control() -> None:
    unit = make_unit()
    changeable = _pages(run(unit, _mode_sense6(pc=1, dbd=True)).data[4:])
    assert changeable[0x08][2] == 0x04  # only WCE can change
    assert changeable[0x0A][2] == 0x04  # and D_SENSE
    sense = sense_of(run(unit, _mode_sense6(pc=3)))
    assert sense.code is Asc.SAVING_PARAMETERS_NOT_SUPPORTED
    sense = sense_of(run(unit, _mode_sense6(page=0x19)))
    assert sense.code is Asc.INVALID_FIELD_IN_CDB


def _mode_select6(params: bytes, sp: bool = False) -> bytes:
    return bytes([ScsiOp.MODE_SELECT_6, 0x10 | (1 if sp else 0), 0, 0, len(params), 0])


def _current_page(unit, page: int) -> bytes:
    return _pages(run(unit, _mode_sense6(page=page, dbd=True)).data[4:])[page]


def test_mode_select_clears_wce_making_writes_synchronous() -> None:
    unit = make_unit()
    page = bytearray(_current_page(unit, 0x08))
    page[2] &= ~0x04
    result = run(unit, _mode_select6(bytes(4) + page), bytes(4) + page)
    assert result.status == ScsiStatus.GOOD
    assert _current_page(unit, 0x08)[2] & 0x04 == 0
    assert run(unit, rw10(ScsiOp.WRITE_10, 0, 1), bytes(BLOCK)).needs_sync


def test_mode_select_d_sense_switches_to_descriptor_sense() -> None:
    unit = make_unit()
    page = bytearray(_current_page(unit, 0x0A))
    page[2] |= 0x04
    assert run(unit, _mode_select6(bytes(4) + page), bytes(4) + page).status == 0
    result = run(unit, rw10(ScsiOp.READ_10, BLOCKS, 1))
    assert result.sense[0] == 0x72
    assert parse_sense(result.sense).code is Asc.LBA_OUT_OF_RANGE


def test_mode_select_rejects_unchangeable_bits_and_saving() -> None:
    unit = make_unit()
    page = bytearray(_current_page(unit, 0x0A))
    page[3] ^= 0x10  # QUEUE ALGORITHM MODIFIER is not changeable
    sense = sense_of(run(unit, _mode_select6(bytes(4) + page), bytes(4) + page))
    assert sense.code is Asc.INVALID_FIELD_IN_PARAMETER_LIST
    assert sense.field_pointer is not None and sense.field_pointer.byte == 4 + 3
    good = _current_page(unit, 0x08)
    sense = sense_of(run(unit, _mode_select6(bytes(4) + good, sp=True), bytes(4) + good))
    assert sense.code is Asc.INVALID_FIELD_IN_CDB


# ---- REQUEST SENSE, REPORT LUNS ----------------------------------------------------------
def test_request_sense_reports_then_clears_unit_attention() -> None:
    unit = make_unit()
    first = run(unit, bytes([ScsiOp.REQUEST_SENSE, 0, 0, 0, 252, 0]), nexus=OTHER_NEXUS)
    assert first.status == ScsiStatus.GOOD
    assert parse_sense(first.data).key == SenseKey.UNIT_ATTENTION
    second = run(unit, bytes([ScsiOp.REQUEST_SENSE, 1, 0, 0, 252, 0]), nexus=OTHER_NEXUS)
    parsed = parse_sense(second.data)
    assert parsed.descriptor_format
    assert parsed.key == SenseKey.NO_SENSE
    assert run(unit, bytes(6), nexus=OTHER_NEXUS).status == ScsiStatus.GOOD


def test_report_luns() -> None:
    unit = make_unit()
    cdb = struct.pack(">BB B3xIBB", ScsiOp.REPORT_LUNS, 0, 0, 16, 0, 0)
    assert run(unit, cdb).data == struct.pack(">IIQ", 8, 0, 0)
    well_known = struct.pack(">BBB3xIBB", ScsiOp.REPORT_LUNS, 0, 1, 16, 0, 0)
    assert run(unit, well_known).data == bytes(8)
    for bad in (
        struct.pack(">BBB3xIBB", ScsiOp.REPORT_LUNS, 0, 0x03, 16, 0, 0),
        struct.pack(">BBB3xIBB", ScsiOp.REPORT_LUNS, 0, 0, 15, 0, 0),
    ):
        assert sense_of(run(unit, bad)).code is Asc.INVALID_FIELD_IN_CDB


def test_report_luns_lists_every_lun_of_the_target_in_its_addressing_method() -> None:
    unit = make_unit()
    unit.target_luns = 300
    cdb = struct.pack(">BB B3xIBB", ScsiOp.REPORT_LUNS, 0, 0, 4096, 0, 0)
    data = run(unit, cdb).data
    assert struct.unpack_from(">I", data)[0] == 300 * 8
    luns = [struct.unpack_from(">Q", data, 8 + 8 * i)[0] for i in range(300)]
    assert luns[:2] == [0, 0x0001_0000_0000_0000]  # peripheral device addressing
    assert luns[255] == 0x00FF_0000_0000_0000
    assert luns[256] == 0x4100_0000_0000_0000  # flat space addressing from 256
    assert [lun_number(lun) for lun in luns] == list(range(300))
    with pytest.raises(ValueError, match="out of range"):
        encode_lun(0x4000)


# ---- REPORT SUPPORTED OPERATION CODES / TMFs ----------------------------------------------
def _rsoc(options: int, opcode: int = 0, action: int = 0, rctd: bool = False) -> bytes:
    flags = options | (0x80 if rctd else 0)
    return struct.pack(">BBBBHIBB", 0xA3, 0x0C, flags, opcode, action, 65536, 0, 0)


def test_rsoc_all_lists_every_dispatched_command() -> None:
    unit = make_unit()
    data = run(unit, _rsoc(0)).data
    (length,) = struct.unpack_from(">I", data)
    assert length == len(data) - 4
    listed = {
        (data[offset], struct.unpack_from(">H", data, offset + 2)[0])
        for offset in range(4, len(data), 8)
    }
    assert (ScsiOp.READ_10, 0) in listed
    assert (0x9E, 0x10) in listed and (0x9E, 0x12) in listed
    assert (0xA3, 0x0C) in listed
    assert (ScsiOp.PERSISTENT_RESERVE_IN, 0) not in listed  # no reservation engine plugged


def test_rsoc_all_with_timeouts() -> None:
    data = run(make_unit(), _rsoc(0, rctd=True)).data
    assert (len(data) - 4) % 20 == 0
    assert data[4 + 5] & 0x02  # CTDP
    assert struct.unpack_from(">H", data, 4 + 8)[0] == 0x0A


def test_rsoc_one_command_usage_data() -> None:
    unit = make_unit()
    data = run(unit, _rsoc(1, ScsiOp.READ_10)).data
    assert data[1] & 0x07 == 3
    assert struct.unpack_from(">H", data, 2)[0] == 10
    usage = data[4:14]
    assert usage[0] == ScsiOp.READ_10 and usage[1] & 0x18 == 0x18  # DPO and FUA honoured
    unsupported = run(unit, _rsoc(1, 0xC0)).data
    assert unsupported[1] & 0x07 == 1
    sense = sense_of(run(unit, _rsoc(1, 0x9E)))  # needs a service action
    assert sense.code is Asc.INVALID_FIELD_IN_CDB
    with_action = run(unit, _rsoc(2, 0x9E, 0x10)).data
    assert with_action[1] & 0x07 == 3 and with_action[4:6] == b"\x9e\x10"
    sense = sense_of(run(unit, _rsoc(2, ScsiOp.READ_10)))
    assert sense.code is Asc.INVALID_FIELD_IN_CDB


def test_report_supported_tmfs() -> None:
    cdb = struct.pack(">BBB3xIBB", 0xA3, 0x0D, 0, 4, 0, 0)
    data = run(make_unit(), cdb).data
    assert len(data) == 4 and data[0] & 0x80 and data[0] & 0x08


def test_start_stop_and_prevent_allow() -> None:
    unit = make_unit()
    assert run(unit, bytes([ScsiOp.START_STOP_UNIT, 0, 0, 0, 1, 0])).status == 0
    assert run(unit, bytes([ScsiOp.PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 1, 0])).status == 0


def test_mode_select_change_tells_the_other_initiators() -> None:
    unit = make_unit()
    run(unit, bytes(6), nexus=OTHER_NEXUS)  # power-on attention reported
    page = bytearray(_current_page(unit, 0x08))
    page[2] &= ~0x04
    assert run(unit, _mode_select6(bytes(4) + page), bytes(4) + page).status == 0
    assert run(unit, bytes(6)).status == ScsiStatus.GOOD  # not the one that changed them
    sense = sense_of(run(unit, bytes(6), nexus=OTHER_NEXUS))
    assert sense.code is Asc.MODE_PARAMETERS_CHANGED
    # Selecting the same values again changes nothing and tells nobody.
    run(unit, _mode_select6(bytes(4) + page), bytes(4) + page)
    assert run(unit, bytes(6), nexus=OTHER_NEXUS).status == ScsiStatus.GOOD


def test_software_write_protect_makes_the_medium_read_only() -> None:
    unit = make_unit()
    page = bytearray(_current_page(unit, 0x0A))
    page[4] |= 0x08  # SWP
    assert run(unit, _mode_select6(bytes(4) + page), bytes(4) + page).status == 0
    header = run(unit, _mode_sense6(page=0x0A, dbd=True)).data
    assert header[2] & 0x80  # WP in the device-specific parameter
    assert run(unit, rw10(ScsiOp.READ_10, 0, 1)).status == ScsiStatus.GOOD
    for cdb, data in (
        (rw10(ScsiOp.WRITE_10, 0, 1), bytes(BLOCK)),
        (rw10(ScsiOp.WRITE_SAME_10, 0, 1, flags=0x08), b""),  # checked before Data-Out
        (bytes([ScsiOp.UNMAP, 0, 0, 0, 0, 0, 0, 0, 24, 0]), bytes(24)),
    ):
        sense = sense_of(run(unit, cdb, data))
        assert sense.key == SenseKey.DATA_PROTECT and sense.code is Asc.WRITE_PROTECTED
    page[4] &= ~0x08
    run(unit, _mode_select6(bytes(4) + page), bytes(4) + page)
    assert run(unit, rw10(ScsiOp.WRITE_10, 0, 1), bytes(BLOCK)).status == ScsiStatus.GOOD


def test_read_only_unit() -> None:
    meta = VDiskMeta("ro", BLOCKS * BLOCK)
    unit = LogicalUnit(MemoryStore(meta), meta, read_only=True)
    run(unit, bytes(6))
    sense = sense_of(run(unit, rw10(ScsiOp.WRITE_10, 0, 1), bytes(BLOCK)))
    assert sense.key == SenseKey.DATA_PROTECT
    assert run(unit, rw10(ScsiOp.READ_10, 0, 1)).status == ScsiStatus.GOOD
