"""SANITIZE (SBC-3 5.30): block erase, overwrite, exit failure mode, the in-progress state."""

from __future__ import annotations

import struct

import pytest

from iscsicore.scsi.opcodes import ScsiOp, ScsiStatus
from iscsicore.scsi.sense import Asc, SenseKey, parse_sense
from stargate.scsi.lu import LogicalUnit
from stargate.scsi.sanitize import HoldFlushUntilSanitized
from tests.stargate.scsi import BLOCK, BLOCKS, OTHER_NEXUS, make_unit, run, rw10, sense_of

OVERWRITE, BLOCK_ERASE, CRYPTO_ERASE, EXIT_FAILURE_MODE = 0x01, 0x02, 0x03, 0x1F
IMMED = 0x80
TUR = bytes(6)
WAIT = 30.0  # seconds: bounded waits for the worker thread on a loaded machine


def sanitize_cdb(action: int, parameter_length: int = 0, flags: int = 0) -> bytes:
    return struct.pack(">BB5xHB", ScsiOp.SANITIZE, flags | action, parameter_length, 0)


def overwrite_parameters(pattern: bytes, passes: int = 1, invert: bool = False) -> bytes:
    return struct.pack(">BxH", (0x80 if invert else 0) | passes, len(pattern)) + pattern


def overwrite(unit: LogicalUnit, pattern: bytes, *, flags: int = 0, **options: bool | int):
    parameters = overwrite_parameters(pattern, **options)  # type: ignore[arg-type]
    return run(unit, sanitize_cdb(OVERWRITE, len(parameters), flags), parameters)


def wait_for_the_job(unit: LogicalUnit) -> None:
    job = unit.sanitizer.job
    assert job is not None and job.wait(WAIT), "the sanitize did not end"


def slow_unit() -> LogicalUnit:
    """A unit whose overwrite takes about two seconds: long enough to look at it running."""
    unit = make_unit()
    unit.sanitizer.overwrite_rate = BLOCKS * BLOCK // 2
    return unit


def read_all(unit: LogicalUnit) -> bytes:
    return bytes(run(unit, rw10(ScsiOp.READ_10, 0, BLOCKS)).data)


# ---- what is offered ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("action", "supported"),
    [(OVERWRITE, True), (BLOCK_ERASE, True), (EXIT_FAILURE_MODE, True), (CRYPTO_ERASE, False)],
)
def test_report_supported_opcodes_lists_the_offered_service_actions(
    action: int, supported: bool
) -> None:
    cdb = struct.pack(">BBBBHIBB", 0xA3, 0x0C, 0x02, ScsiOp.SANITIZE, action, 512, 0, 0)
    result = run(make_unit(), cdb)
    assert result.status == ScsiStatus.GOOD
    assert (result.data[1] & 0x07 == 0x03) is supported


def test_block_device_characteristics_say_reads_work_after_a_block_erase() -> None:
    page = run(make_unit(), bytes([ScsiOp.INQUIRY, 0x01, 0xB1, 0, 0xFF, 0])).data
    assert page[7] >> 6 == 0b01  # WABEREQ


# ---- block erase ----------------------------------------------------------------------------
def test_block_erase_deallocates_every_block() -> None:
    unit = make_unit()
    run(unit, rw10(ScsiOp.WRITE_10, 0, 8), b"\xaa" * 8 * BLOCK)
    result = run(unit, sanitize_cdb(BLOCK_ERASE))
    assert result.status == ScsiStatus.GOOD and result.needs_sync
    unit.store.sync()  # what the transport does before sending the status: waits for it
    assert read_all(unit) == bytes(BLOCKS * BLOCK)
    status = run(unit, bytes([0x9E, 0x12]) + bytes(8) + struct.pack(">I", 64) + bytes(2))
    lba, count, provisioning = struct.unpack_from(">QIB", status.data, 8)
    assert (lba, count, provisioning) == (0, BLOCKS, 1)  # one run, deallocated


# ---- overwrite ------------------------------------------------------------------------------
def test_overwrite_repeats_a_short_pattern_over_every_block() -> None:
    unit = make_unit()
    assert overwrite(unit, b"\x01\x02\x03\x04").status == ScsiStatus.GOOD
    unit.store.sync()
    assert read_all(unit) == b"\x01\x02\x03\x04" * (BLOCKS * BLOCK // 4)


def test_overwrite_inverts_between_passes() -> None:
    unit = make_unit()
    assert overwrite(unit, b"\x0f" * BLOCK, passes=2, invert=True).status == ScsiStatus.GOOD
    unit.store.sync()
    assert read_all(unit) == b"\xf0" * (BLOCKS * BLOCK)  # the second pass wrote it inverted


def test_immediate_overwrite_reports_progress_until_it_ends() -> None:
    unit = slow_unit()
    result = overwrite(unit, b"\x5a" * BLOCK, flags=IMMED)
    assert result.status == ScsiStatus.GOOD and not result.needs_sync
    busy = sense_of(run(unit, TUR))
    assert busy.key == SenseKey.NOT_READY
    assert busy.code is Asc.LOGICAL_UNIT_NOT_READY_SANITIZE_IN_PROGRESS
    assert busy.sense_key_specific is not None and busy.sense_key_specific[0] & 0x80  # SKSV
    for refused in (rw10(ScsiOp.READ_10, 0, 1), sanitize_cdb(BLOCK_ERASE)):
        assert sense_of(run(unit, refused)).code is Asc.LOGICAL_UNIT_NOT_READY_SANITIZE_IN_PROGRESS
    assert run(unit, bytes([ScsiOp.INQUIRY, 0, 0, 0, 36, 0])).status == ScsiStatus.GOOD
    polled = parse_sense(run(unit, bytes([ScsiOp.REQUEST_SENSE, 0, 0, 0, 252, 0])).data)
    assert polled.code is Asc.LOGICAL_UNIT_NOT_READY_SANITIZE_IN_PROGRESS
    wait_for_the_job(unit)
    assert run(unit, TUR).status == ScsiStatus.GOOD
    assert read_all(unit) == b"\x5a" * (BLOCKS * BLOCK)


def test_without_immed_the_status_waits_in_the_flush_and_the_store_comes_back() -> None:
    unit = slow_unit()
    real_store = unit.store
    result = overwrite(unit, b"\x33" * BLOCK)
    assert result.status == ScsiStatus.GOOD and result.needs_sync
    assert isinstance(unit.store, HoldFlushUntilSanitized)
    unit.store.sync()  # blocks (in the transport: a worker thread) until the end
    assert unit.sanitizer.job is not None and unit.sanitizer.job.finished
    assert run(unit, TUR).status == ScsiStatus.GOOD
    assert unit.store is real_store


def test_a_lun_reset_does_not_stop_a_running_sanitize() -> None:
    unit = slow_unit()
    overwrite(unit, b"\x77" * BLOCK, flags=IMMED)
    unit.logical_unit_reset(OTHER_NEXUS)
    run(unit, TUR)  # the BUS DEVICE RESET unit attention
    assert sense_of(run(unit, TUR)).code is Asc.LOGICAL_UNIT_NOT_READY_SANITIZE_IN_PROGRESS
    wait_for_the_job(unit)
    assert read_all(unit) == b"\x77" * (BLOCKS * BLOCK)


# ---- failure mode ---------------------------------------------------------------------------
def test_a_failed_sanitize_refuses_medium_access_until_exit_failure_mode() -> None:
    unit = make_unit()

    def broken_write(offset: int, data: object) -> None:
        raise OSError(5, "I/O error")

    unit.store.write = broken_write  # type: ignore[method-assign]
    overwrite(unit, b"\x01" * BLOCK, flags=IMMED)
    wait_for_the_job(unit)
    sense = sense_of(run(unit, rw10(ScsiOp.READ_10, 0, 1)))
    assert sense.key == SenseKey.MEDIUM_ERROR and (sense.asc, sense.ascq) == (0x31, 0x03)
    assert run(unit, TUR).status == ScsiStatus.GOOD  # not a medium access
    assert run(unit, sanitize_cdb(EXIT_FAILURE_MODE)).status == ScsiStatus.GOOD
    assert run(unit, rw10(ScsiOp.READ_10, 0, 1)).status == ScsiStatus.GOOD


# ---- refusals -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cdb", "data", "byte"),
    [
        (sanitize_cdb(BLOCK_ERASE, flags=0x40), b"", 1),  # reserved bit
        (sanitize_cdb(BLOCK_ERASE)[:3] + b"\x01" + sanitize_cdb(0)[4:], b"", 3),  # reserved
        (sanitize_cdb(CRYPTO_ERASE), b"", 1),  # not offered
        (sanitize_cdb(0x07), b"", 1),
        (sanitize_cdb(BLOCK_ERASE, 8), bytes(8), 7),  # no parameter list for block erase
        (sanitize_cdb(EXIT_FAILURE_MODE, 8), bytes(8), 7),
        (sanitize_cdb(OVERWRITE, 4), bytes(4), 7),  # header only
        (sanitize_cdb(OVERWRITE, BLOCK + 5), bytes(BLOCK + 5), 7),  # longer than a block
        (sanitize_cdb(OVERWRITE, 8), overwrite_parameters(b"abcd", passes=0), 7),
        (sanitize_cdb(OVERWRITE, 8), struct.pack(">BxH", 1, 0) + b"abcd", 7),
    ],
)
def test_invalid_sanitize_commands(cdb: bytes, data: bytes, byte: int) -> None:
    unit = make_unit()
    sense = sense_of(run(unit, cdb, data))
    assert sense.code is Asc.INVALID_FIELD_IN_CDB
    assert sense.field_pointer is not None and sense.field_pointer.byte == byte
    assert unit.sanitizer.job is None


def test_a_write_protected_unit_refuses_sanitize() -> None:
    unit = make_unit()
    unit.read_only = True
    sense = sense_of(run(unit, sanitize_cdb(BLOCK_ERASE)))
    assert sense.key == SenseKey.DATA_PROTECT and sense.code is Asc.WRITE_PROTECTED
