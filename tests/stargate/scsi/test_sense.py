"""Sense data builders and parser: both formats, round trips, field pointers."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iscsicore.scsi.sense import (
    Asc,
    FieldPointer,
    SenseKey,
    SenseParseError,
    build_descriptor,
    build_fixed,
    parse_sense,
)


def test_fixed_layout_matches_spc4() -> None:
    sense = build_fixed(
        SenseKey.ILLEGAL_REQUEST,
        Asc.INVALID_FIELD_IN_CDB,
        field_pointer=FieldPointer(in_cdb=True, byte=1, bit=4),
    )
    assert len(sense) == 18
    assert sense[0] == 0x70
    assert sense[2] == 0x05
    assert sense[7] == 10
    assert (sense[12], sense[13]) == (0x24, 0x00)
    assert sense[15] == 0x80 | 0x40 | 0x08 | 4  # SKSV, C/D, BPV, bit 4
    assert sense[16:18] == b"\x00\x01"


def test_fixed_information_sets_valid() -> None:
    sense = build_fixed(SenseKey.MISCOMPARE, Asc.MISCOMPARE_DURING_VERIFY, information=517)
    assert sense[0] == 0xF0
    assert int.from_bytes(sense[3:7], "big") == 517
    parsed = parse_sense(sense)
    assert parsed.information == 517
    assert parsed.key == SenseKey.MISCOMPARE
    assert parsed.code is Asc.MISCOMPARE_DURING_VERIFY


def test_fixed_cannot_carry_64_bit_information() -> None:
    sense = build_fixed(SenseKey.MEDIUM_ERROR, Asc.UNRECOVERED_READ_ERROR, information=1 << 40)
    assert sense[0] == 0x70  # VALID clear
    assert parse_sense(sense).information is None


def test_descriptor_layout_and_round_trip() -> None:
    sense = build_descriptor(
        SenseKey.ILLEGAL_REQUEST,
        Asc.INVALID_FIELD_IN_PARAMETER_LIST,
        information=1 << 40,
        field_pointer=FieldPointer(in_cdb=False, byte=300),
    )
    assert sense[0] == 0x72
    assert sense[1:4] == bytes([0x05, 0x26, 0x00])
    assert sense[7] == len(sense) - 8
    parsed = parse_sense(sense)
    assert parsed.descriptor_format
    assert parsed.information == 1 << 40
    assert parsed.field_pointer == FieldPointer(in_cdb=False, byte=300)


def test_unit_attention_names() -> None:
    parsed = parse_sense(build_fixed(SenseKey.UNIT_ATTENTION, Asc.POWER_ON_RESET))
    assert (parsed.asc, parsed.ascq) == (0x29, 0x00)
    assert Asc.lookup(0x2A, 0x09) is Asc.CAPACITY_DATA_HAS_CHANGED
    assert Asc.lookup(0x7F, 0x7F) is None


def test_truncated_fixed_sense_still_parses_key() -> None:
    parsed = parse_sense(build_fixed(SenseKey.NOT_READY, Asc.MEDIUM_NOT_PRESENT)[:8])
    assert parsed.key == SenseKey.NOT_READY
    assert parsed.asc == 0


@pytest.mark.parametrize("raw", [b"", b"\x01\x02\x03", b"\x70\x00"])
def test_garbage_is_a_typed_error(raw: bytes) -> None:
    with pytest.raises(SenseParseError):
        parse_sense(raw)


@given(
    key=st.sampled_from(list(SenseKey)),
    code=st.sampled_from(list(Asc)),
    information=st.none() | st.integers(0, 0xFFFFFFFF),
    pointer=st.none()
    | st.builds(FieldPointer, st.booleans(), st.integers(0, 0xFFFF), st.none() | st.integers(0, 7)),
    descriptor=st.booleans(),
)
def test_round_trip(
    key: SenseKey,
    code: Asc,
    information: int | None,
    pointer: FieldPointer | None,
    descriptor: bool,
) -> None:
    builder = build_descriptor if descriptor else build_fixed
    parsed = parse_sense(builder(key, code, information=information, field_pointer=pointer))
    assert parsed.key == key
    assert (parsed.asc, parsed.ascq) == code.value
    assert parsed.information == information
    if pointer is not None:
        assert parsed.sense_key_specific is not None
        if key == SenseKey.ILLEGAL_REQUEST:
            assert parsed.field_pointer == pointer


@given(st.binary(max_size=64))
def test_parser_never_raises_anything_else(raw: bytes) -> None:
    with contextlib.suppress(SenseParseError):
        parse_sense(raw)
