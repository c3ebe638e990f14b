"""The struct fast path equals the construct declarations, both directions, errors included."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iscsicore import fastpath, wire
from iscsicore.errors import IscsiProtocolError, PduEncodeError
from iscsicore.pdu import (
    BHS_LENGTH,
    PDU_CLASSES,
    Ahs,
    DataIn,
    NopIn,
    NopOut,
    Opcode,
    Pdu,
    ScsiCommand,
    ScsiResponse,
)

from .strategies import HOT_CLASSES, ahs_lists, pdus, pdus_of, raw_headers

HOT_OPCODES = [cls.OPCODE for cls in HOT_CLASSES]


def test_formats_are_48_bytes() -> None:
    formats = (
        fastpath.SCSI_COMMAND,
        fastpath.SCSI_RESPONSE,
        fastpath.DATA_IN,
        fastpath.DATA_OUT,
        fastpath.R2T_FORMAT,
        fastpath.NOP_OUT,
        fastpath.NOP_IN,
    )
    assert all(fmt.size == BHS_LENGTH for fmt in formats)


@pytest.mark.parametrize("cls", HOT_CLASSES, ids=lambda c: c.__name__)
@settings(deadline=None)
@given(data=st.data())
def test_fast_encode_equals_construct_encode(cls: type[Pdu], data: st.DataObject) -> None:
    pdu = data.draw(pdus_of(cls))
    assert fastpath.encode_bhs(pdu) == wire.encode_bhs(pdu)
    ahs_length = len(wire.encode_ahs(pdu.ahs))
    assert fastpath.encode_bhs(pdu, ahs_length) == wire.encode_bhs(pdu, ahs_length)


def _outcome(decode, header: bytes, ahs: bytes) -> object:
    try:
        return decode(header, ahs)
    except IscsiProtocolError as error:
        return (type(error), error.reject_reason, error.header)


@pytest.mark.parametrize("opcode", HOT_OPCODES, ids=lambda op: op.name)
@settings(deadline=None)
@given(data=st.data())
def test_fast_decode_equals_construct_decode_on_any_header(opcode, data: st.DataObject) -> None:
    """Arbitrary 48-byte headers: legal or not, both decoders agree (errors included)."""
    header = data.draw(raw_headers(opcode, total_ahs_length=None))
    ahs = data.draw(st.one_of(st.just(b""), ahs_lists().map(wire.encode_ahs)))
    assert _outcome(fastpath.decode_bhs, header, ahs) == _outcome(wire.decode_bhs, header, ahs)


@pytest.mark.parametrize("opcode", HOT_OPCODES, ids=lambda op: op.name)
@settings(deadline=None)
@given(data=st.data())
def test_fast_decode_equals_construct_decode_with_consistent_ahs(
    opcode, data: st.DataObject
) -> None:
    segments = data.draw(ahs_lists())
    ahs = wire.encode_ahs(segments)
    header = data.draw(raw_headers(opcode, total_ahs_length=len(ahs) // 4))
    assert _outcome(fastpath.decode_bhs, header, ahs) == _outcome(wire.decode_bhs, header, ahs)


@settings(deadline=None)
@given(pdus())
def test_fast_round_trip_any_class(pdu: Pdu) -> None:
    ahs = wire.encode_ahs(pdu.ahs)
    header = fastpath.encode_bhs(pdu)
    assert header == wire.encode_bhs(pdu)
    assert fastpath.decode_bhs(header, ahs) == dataclasses.replace(pdu, data=b"")


@settings(deadline=None)
@given(st.binary(max_size=100), st.binary(max_size=12))
def test_fast_decode_raises_only_protocol_errors(header: bytes, ahs: bytes) -> None:
    for decode in (fastpath.decode_bhs, wire.decode_bhs):
        with contextlib.suppress(IscsiProtocolError):
            decode(header, ahs)


@pytest.mark.parametrize("cls", HOT_CLASSES, ids=lambda c: c.__name__)
@settings(deadline=None)
@given(data=st.data())
def test_out_of_range_field_fails_alike(cls: type[Pdu], data: st.DataObject) -> None:
    pdu = data.draw(pdus_of(cls))
    name = data.draw(
        st.sampled_from(
            [f.name for f in dataclasses.fields(pdu) if f.type == "int" and f.name != "attr"]
        )
    )
    too_big = data.draw(st.sampled_from([1 << 64, -1]))
    setattr(pdu, name, too_big)
    with pytest.raises(PduEncodeError):
        wire.encode_bhs(pdu)
    with pytest.raises(PduEncodeError):
        fastpath.encode_bhs(pdu)


def test_non_hot_classes_fall_back_to_construct() -> None:
    for cls in PDU_CLASSES.values():
        pdu = cls(ahs=[Ahs(1, b"\x00abc")])
        assert fastpath.encode_bhs(pdu) == wire.encode_bhs(pdu)
        header = wire.encode_bhs(pdu)
        assert fastpath.decode_bhs(header, wire.encode_ahs(pdu.ahs)) == pdu


# ---------------------------------------------------------------------------------------
# The object-free shortcuts of the hot path: proven against the construct declarations too.


@settings(deadline=None)
@given(
    data=st.data(),
    prefix=st.binary(max_size=7),
    any_opcode=st.booleans(),
)
def test_scsi_command_at_equals_construct_decode(
    data: st.DataObject, prefix: bytes, any_opcode: bool
) -> None:
    """In place at any offset: the command and its lengths word exactly as wire decodes
    them, or None where wire would need an AHS, raise, or give another PDU."""
    if any_opcode:
        header = data.draw(st.binary(min_size=BHS_LENGTH, max_size=BHS_LENGTH))
    else:
        header = data.draw(
            raw_headers(
                Opcode.SCSI_COMMAND, total_ahs_length=data.draw(st.sampled_from([0, 0, 1, None]))
            )
        )
    buffer = bytearray(prefix + header + b"tail")
    found = fastpath.scsi_command_at(buffer, len(prefix))
    try:
        expected: object = wire.decode_bhs(header)
    except IscsiProtocolError:
        expected = None
    if found is None:
        assert header[4] or not isinstance(expected, ScsiCommand)
        return
    command, lengths_word = found
    assert not header[4]
    assert command == expected
    assert lengths_word == int.from_bytes(header[4:8], "big")


@pytest.mark.parametrize(
    ("cls", "decode_at"),
    [(DataIn, fastpath.data_in_at), (ScsiResponse, fastpath.scsi_response_at)],
    ids=["DataIn", "ScsiResponse"],
)
@settings(deadline=None)
@given(
    data=st.data(),
    prefix=st.binary(max_size=7),
    any_opcode=st.booleans(),
)
def test_initiator_side_decode_at_equals_construct_decode(
    cls: type[Pdu], decode_at: Any, data: st.DataObject, prefix: bytes, any_opcode: bool
) -> None:
    """The initiator's in-place decodes: exactly what wire decodes, or None where wire
    would need an AHS, raise, or give another PDU."""
    if any_opcode:
        header = data.draw(st.binary(min_size=BHS_LENGTH, max_size=BHS_LENGTH))
    else:
        header = data.draw(
            raw_headers(cls.OPCODE, total_ahs_length=data.draw(st.sampled_from([0, 0, 1])))
        )
    buffer = bytearray(prefix + header + b"tail")
    found = decode_at(buffer, len(prefix))
    try:
        expected: object = wire.decode_bhs(header)
    except IscsiProtocolError:
        expected = None
    if found is None:
        assert header[4] or not isinstance(expected, cls)
        return
    pdu, lengths_word = found
    assert not header[4]
    assert pdu == expected
    assert lengths_word == int.from_bytes(header[4:8], "big")


@settings(deadline=None)
@given(pdu=pdus_of(ScsiCommand), ahs_length=st.sampled_from([0, 4, 8]))
def test_scsi_command_bhs_equals_construct_encode(pdu: ScsiCommand, ahs_length: int) -> None:
    """The initiator's hot path packs its commands with this, without a `ScsiCommand`."""
    flags = (
        (0x80 if pdu.final else 0)
        | (0x40 if pdu.read else 0)
        | (0x20 if pdu.write else 0)
        | pdu.attr
    )
    lengths_word = (ahs_length // 4) << 24 | len(pdu.data)
    bhs = fastpath.scsi_command_bhs(
        0x01 | (0x40 if pdu.immediate else 0),
        flags,
        lengths_word,
        pdu.lun,
        pdu.itt,
        pdu.expected_data_transfer_length,
        pdu.cmd_sn,
        pdu.exp_stat_sn,
        pdu.cdb,
    )
    assert bhs == wire.encode_bhs(pdu, ahs_length)


@settings(deadline=None)
@given(pdu=pdus_of(DataIn), ahs_length=st.sampled_from([0, 4, 8]))
def test_data_in_bhs_equals_construct_encode(pdu: DataIn, ahs_length: int) -> None:
    flags = (
        (0x80 if pdu.final else 0)
        | (0x40 if pdu.acknowledge else 0)
        | (0x04 if pdu.overflow else 0)
        | (0x02 if pdu.underflow else 0)
        | (0x01 if pdu.status_present else 0)
    )
    lengths_word = (ahs_length // 4) << 24 | len(pdu.data)
    bhs = fastpath.data_in_bhs(
        flags,
        pdu.status,
        lengths_word,
        pdu.lun,
        pdu.itt,
        pdu.ttt,
        pdu.stat_sn,
        pdu.exp_cmd_sn,
        pdu.max_cmd_sn,
        pdu.data_sn,
        pdu.buffer_offset,
        pdu.residual_count,
    )
    assert bhs == wire.encode_bhs(pdu, ahs_length)


@settings(deadline=None)
@given(pdu=pdus_of(ScsiResponse), ahs_length=st.sampled_from([0, 4, 8]))
def test_scsi_response_bhs_equals_construct_encode(pdu: ScsiResponse, ahs_length: int) -> None:
    flags = (
        (0x10 if pdu.bidi_overflow else 0)
        | (0x08 if pdu.bidi_underflow else 0)
        | (0x04 if pdu.overflow else 0)
        | (0x02 if pdu.underflow else 0)
    )
    lengths_word = (ahs_length // 4) << 24 | len(pdu.data)
    bhs = fastpath.scsi_response_bhs(
        flags,
        pdu.response,
        pdu.status,
        lengths_word,
        pdu.itt,
        pdu.snack_tag,
        pdu.stat_sn,
        pdu.exp_cmd_sn,
        pdu.max_cmd_sn,
        pdu.exp_data_sn,
        pdu.bidi_residual_count,
        pdu.residual_count,
    )
    assert bhs == wire.encode_bhs(pdu, ahs_length)


def test_nop_ping_never_reaches_construct(monkeypatch: pytest.MonkeyPatch) -> None:
    """A NOP-Out flood costs a struct unpack and pack per ping, not construct (~60 µs: a
    flood on one vDisk took a core and made another vDisk's QD 1 p99 go 70 µs -> 1 ms)."""
    ping = NopOut(immediate=True, lun=1 << 48, itt=7, cmd_sn=9, exp_stat_sn=3)
    answer = NopIn(lun=1 << 48, itt=7, stat_sn=3, exp_cmd_sn=9, max_cmd_sn=40, data=b"abcd")
    ping_header, answer_header = wire.encode_bhs(ping), wire.encode_bhs(answer)

    def construct(*_args: object) -> None:
        raise AssertionError("construct codec used")

    monkeypatch.setattr(wire, "encode_bhs", construct)
    monkeypatch.setattr(wire, "decode_bhs", construct)
    assert fastpath.encode_bhs(ping) == ping_header
    assert fastpath.encode_bhs(answer) == answer_header
    assert fastpath.decode_bhs(ping_header) == ping
    assert fastpath.decode_bhs(answer_header) == dataclasses.replace(answer, data=b"")
