"""The fault model and triggers, without a target: shapes, matching, windows, counts."""

from __future__ import annotations

import random
import struct
import time

import pytest

from faults import Delay, Fault, FaultInjector, FaultKind, IoClass
from faults.triggers import io_class, lba_extent


def _read16(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBQIBB", 0x88, 0, lba, blocks, 0, 0)


def test_round_trip_through_the_json_shape() -> None:
    delay = {"distribution": "uniform", "seconds": 0.1, "high": 0.2}
    fault = Fault.from_dict({"kind": "check_condition", "vdisk": "vd1", "opcodes": ["0x88"],
                             "lba": [10, 20], "sense_key": "0x03", "asc": 0x11, "count": 2,
                             "delay": delay})  # fmt: skip
    again = Fault.from_dict(fault.to_dict())
    assert again.to_dict() == fault.to_dict()
    assert again.opcodes == (0x88,) and again.lba == (10, 20) and again.sense_key == 3
    for bad in ({"kind": "nope"}, {"kind": "busy", "colour": 1}, {"kind": "busy",
                "probability": 2}, {"kind": "login_redirect"}):  # fmt: skip
        with pytest.raises(ValueError):
            Fault.from_dict(bad)
    named = Fault.from_dict({"kind": "unit_attention", "asc": "luns_changed"})
    assert (named.asc, named.ascq) == (0x3F, 0x0E)


def test_cdb_decoding() -> None:
    assert lba_extent(_read16(1 << 40, 8)) == (1 << 40, 8)
    assert io_class(_read16(0, 1)) is IoClass.READ
    assert io_class(bytes([0x35]) + bytes(9)) is IoClass.FLUSH


def test_delay_distributions_stay_in_range() -> None:
    rng = random.Random(1)
    uniform = [Delay(0.1, "uniform", 0.3).draw(rng) for _ in range(200)]
    assert all(0.1 <= d <= 0.3 for d in uniform) and max(uniform) - min(uniform) > 0.1
    exponential = [Delay(0.05, "exponential").draw(rng) for _ in range(2000)]
    assert 0.035 < sum(exponential) / len(exponential) < 0.065
    assert Delay(0.2).draw(rng) == 0.2


def test_time_window_scope_and_failed_over_only() -> None:
    moved = {"vd1": False}
    faults = FaultInjector(is_failed_over=lambda vdisk: moved[vdisk])
    later = faults.add(Fault(FaultKind.BUSY, after_seconds=30))
    assert faults.scsi_fault("vd1", _read16(0, 1)) is None  # not yet
    faults.remove(later.fault_id)
    short = faults.add(Fault(FaultKind.BUSY, vdisk="vd2", at=time.time() - 10, duration=5))
    assert faults.scsi_fault("vd2", _read16(0, 1)) is None  # its window has passed
    assert short.fault_id not in faults.faults and not faults.armed  # and it went away
    faults.add(Fault(FaultKind.BUSY, only_failed_over=True, lba=(0, 7)))
    assert faults.scsi_fault("vd1", _read16(0, 1)) is None
    moved["vd1"] = True
    assert faults.scsi_fault("vd1", _read16(8, 1)) is None  # outside the LBA range
    assert faults.scsi_fault("vd1", _read16(7, 4)) is not None  # overlaps it
    assert [event.kind for event in faults.events] == ["busy"]


def test_login_parameters_are_checked() -> None:
    assert Fault.from_dict({"kind": "login_redirect", "portal": "h:1"}).status == 0x0101
    assert Fault.from_dict({"kind": "login_fail", "status": "0x0203"}).status == 0x0203
    for bad, message in (
        ({"kind": "login_fail", "status": "0x0101"}, "0x02xx"),
        ({"kind": "login_redirect", "portal": "h:1", "status": "0x0301"}, "0x0102"),
        ({"kind": "login_delay", "delay": -1}, "not negative"),
        ({"kind": "login_delay", "delay": {"distribution": "normal"}}, "distribution"),
        ({"kind": "busy", "count": 0}, "count"),
    ):
        with pytest.raises(ValueError, match=message):
            Fault.from_dict(bad)
