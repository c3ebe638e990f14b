"""The construct BHS declarations: hand-assembled vectors, round trips, reserved fields,
reserved values, AHS codec and the SCSI Command helpers."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iscsicore import fastpath, wire
from iscsicore.errors import (
    IscsiProtocolError,
    MalformedPdu,
    PduEncodeError,
    TruncatedAhs,
    UnknownOpcode,
)
from iscsicore.pdu import (
    BHS_LENGTH,
    PDU_CLASSES,
    R2T,
    Ahs,
    AhsType,
    AsyncMessage,
    DataIn,
    DataOut,
    LoginRequest,
    LoginResponse,
    LogoutRequest,
    LogoutResponse,
    NopIn,
    NopOut,
    Opcode,
    Pdu,
    Reject,
    RejectReason,
    ScsiCommand,
    ScsiResponse,
    SnackRequest,
    TaskMgmtRequest,
    TaskMgmtResponse,
    TextRequest,
    TextResponse,
    lun_from_number,
)

from .strategies import ahs_lists, pdus, pdus_of, raw_headers

CODECS = [
    pytest.param((wire.encode_bhs, wire.decode_bhs), id="construct"),
    pytest.param((fastpath.encode_bhs, fastpath.decode_bhs), id="fastpath"),
]


def _hex(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


def _without_payload(pdu: Pdu) -> Pdu:
    return dataclasses.replace(pdu, data=b"")


# ---------------------------------------------------------------------------------------
# Hand-assembled headers, byte by byte from RFC 7143 section 11

VECTORS: list[tuple[str, Pdu]] = [
    (  # RFC 3720 appendix B.4: SCSI Read (10), F and R set, ITT 0x14000000
        """01c00000 00000000 00000000 00000000 14000000 00000400
           00000014 00000018 28000000 00000000 02000000 00000000""",
        ScsiCommand(
            final=True,
            read=True,
            attr=0,
            itt=0x14000000,
            expected_data_transfer_length=1024,
            cmd_sn=0x14,
            exp_stat_sn=0x18,
            cdb=_hex("28000000 00000000 02000000 00000000"),
        ),
    ),
    (  # Login Request: I=1, T=1, CSG=1 -> NSG=3, 28 data bytes
        """43870000 0000001c 00023d00 00010000 00000007 00010000
           00000002 00000005 00000000 00000000 00000000 00000000""",
        LoginRequest(
            transit=True,
            csg=1,
            nsg=3,
            isid=0x00023D000001,
            itt=7,
            cid=1,
            cmd_sn=2,
            exp_stat_sn=5,
            data=bytes(28),
        ),
    ),
    (  # Login Response: redirect 0x0101
        """23000000 00000000 00023d00 00010000 00000007 00000000
           00000000 00000002 00000002 01010000 00000000 00000000""",
        LoginResponse(
            isid=0x00023D000001,
            itt=7,
            exp_cmd_sn=2,
            max_cmd_sn=2,
            status_class=1,
            status_detail=1,
        ),
    ),
    (  # R2T for LUN 1
        """31800000 00000000 00010000 00000000 00000009 0000000a
           00000003 00000004 00000013 00000000 00001000 00010000""",
        R2T(
            lun=lun_from_number(1),
            itt=9,
            ttt=10,
            stat_sn=3,
            exp_cmd_sn=4,
            max_cmd_sn=0x13,
            buffer_offset=0x1000,
            desired_data_transfer_length=0x10000,
        ),
    ),
    (  # Data-In with status: F, U, S; 512 data bytes
        """25830000 00000200 00000000 00000000 11223344 ffffffff
           00000007 00000008 00000009 00000000 00000000 00000200""",
        DataIn(
            final=True,
            underflow=True,
            status_present=True,
            itt=0x11223344,
            stat_sn=7,
            exp_cmd_sn=8,
            max_cmd_sn=9,
            residual_count=0x200,
            data=bytes(512),
        ),
    ),
    (  # Data-Out, final, DataSN 2 at offset 0x2000
        """05800000 00000004 00000000 00000000 00000021 00000033
           00000000 00000011 00000000 00000002 00002000 00000000""",
        DataOut(
            final=True,
            itt=0x21,
            ttt=0x33,
            exp_stat_sn=0x11,
            data_sn=2,
            buffer_offset=0x2000,
            data=b"abcd",
        ),
    ),
    (  # SCSI Response: CHECK CONDITION, underflow, 20 bytes of sense data
        """21820002 00000014 00000000 00000000 00000005 00000000
           0000000a 0000000b 0000001a 00000000 00000000 00000100""",
        ScsiResponse(
            underflow=True,
            status=2,
            itt=5,
            stat_sn=10,
            exp_cmd_sn=11,
            max_cmd_sn=0x1A,
            residual_count=0x100,
            data=bytes(20),
        ),
    ),
    (  # Task Management: ABORT TASK, immediate
        """42810000 00000000 00000000 00000000 00000030 00000029
           00000040 00000041 00000039 00000000 00000000 00000000""",
        TaskMgmtRequest(
            function=1,
            itt=0x30,
            referenced_task_tag=0x29,
            cmd_sn=0x40,
            exp_stat_sn=0x41,
            ref_cmd_sn=0x39,
        ),
    ),
    (  # Task Management response: function complete
        """22800000 00000000 00000000 00000000 00000030 00000000
           00000042 00000041 00000050 00000000 00000000 00000000""",
        TaskMgmtResponse(itt=0x30, stat_sn=0x42, exp_cmd_sn=0x41, max_cmd_sn=0x50),
    ),
    (  # Logout Request: close the connection, immediate
        """46810000 00000000 00000000 00000000 00000044 00020000
           00000050 00000060 00000000 00000000 00000000 00000000""",
        LogoutRequest(immediate=True, reason=1, itt=0x44, cid=2, cmd_sn=0x50, exp_stat_sn=0x60),
    ),
    (  # Logout Response: Time2Wait 2, Time2Retain 20
        """26800000 00000000 00000000 00000000 00000044 00000000
           00000060 00000051 00000070 00000000 00020014 00000000""",
        LogoutResponse(
            itt=0x44, stat_sn=0x60, exp_cmd_sn=0x51, max_cmd_sn=0x70, time2wait=2, time2retain=20
        ),
    ),
    (  # NOP-Out ping answered by the target (ITT set, TTT reserved)
        """40800000 00000000 00000000 00000000 00000001 ffffffff
           00000010 00000020 00000000 00000000 00000000 00000000""",
        NopOut(immediate=True, itt=1, cmd_sn=0x10, exp_stat_sn=0x20),
    ),
    (  # NOP-In answering it
        """20800000 00000000 00000000 00000000 00000001 ffffffff
           00000020 00000010 00000030 00000000 00000000 00000000""",
        NopIn(itt=1, stat_sn=0x20, exp_cmd_sn=0x10, max_cmd_sn=0x30),
    ),
    (  # Text Request: SendTargets=All (16 bytes)
        """04800000 00000010 00000000 00000000 00000002 ffffffff
           00000003 00000004 00000000 00000000 00000000 00000000""",
        TextRequest(itt=2, cmd_sn=3, exp_stat_sn=4, data=b"SendTargets=All\x00"),
    ),
    (  # Text Response, continued (C bit)
        """24400000 00000000 00000000 00000000 00000002 00000099
           00000004 00000004 00000014 00000000 00000000 00000000""",
        TextResponse(
            final=False, cont=True, itt=2, ttt=0x99, stat_sn=4, exp_cmd_sn=4, max_cmd_sn=0x14
        ),
    ),
    (  # SNACK: R-Data, BegRun 5, all remaining
        """10830000 00000000 00000000 00000000 00000012 00000077
           00000000 00000009 00000000 00000000 00000005 00000000""",
        SnackRequest(snack_type=3, itt=0x12, ttt=0x77, exp_stat_sn=9, beg_run=5),
    ),
    (  # Async message: target requests logout in 5 s (Parameter3)
        """32800000 00000000 00000000 00000000 ffffffff 00000000
           00000008 00000009 00000019 01000000 00020005 00000000""",
        AsyncMessage(
            stat_sn=8, exp_cmd_sn=9, max_cmd_sn=0x19, async_event=1, parameter2=2, parameter3=5
        ),
    ),
    (  # Reject: protocol error, carrying the 48-byte rejected header
        """3f800400 00000030 00000000 00000000 ffffffff 00000000
           00000008 00000009 00000019 00000000 00000000 00000000""",
        Reject(reason=4, stat_sn=8, exp_cmd_sn=9, max_cmd_sn=0x19, data=bytes(48)),
    ),
]


def test_vectors_cover_every_opcode() -> None:
    assert {type(pdu) for _, pdu in VECTORS} == set(PDU_CLASSES.values())


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize(("header", "pdu"), VECTORS, ids=[type(p).__name__ for _, p in VECTORS])
def test_hand_assembled_vectors(codec, header: str, pdu: Pdu) -> None:
    encode, decode = codec
    expected = _hex(header)
    assert encode(pdu) == expected
    assert decode(expected) == _without_payload(pdu)


def test_header_lengths_are_computed_from_ahs_and_data() -> None:
    command = ScsiCommand(ahs=[Ahs(AhsType.EXTENDED_CDB, bytes(17))], data=bytes(1000))
    header = wire.encode_bhs(command)
    assert header[4] == 5  # 3 + 17 bytes, padded to 20: five words
    assert wire.bhs_lengths(header) == (20, 1000)
    assert int.from_bytes(header[5:8], "big") == 1000


# ---------------------------------------------------------------------------------------
# Round trips


@settings(deadline=None)
@given(pdus())
def test_round_trip_every_class(pdu: Pdu) -> None:
    ahs = wire.encode_ahs(pdu.ahs)
    header = wire.encode_bhs(pdu)
    assert len(header) == BHS_LENGTH
    assert wire.bhs_lengths(header) == (len(ahs), len(pdu.data))
    assert wire.opcode_of(header) == pdu.opcode
    assert wire.decode_bhs(header, ahs) == _without_payload(pdu)


@settings(deadline=None)
@given(pdus())
def test_round_trip_is_canonical(pdu: Pdu) -> None:
    ahs = wire.encode_ahs(pdu.ahs)
    header = wire.encode_bhs(pdu)
    again = wire.decode_bhs(header, ahs)
    again.data = pdu.data
    assert wire.encode_bhs(again) == header


# ---------------------------------------------------------------------------------------
# Reserved fields: zero on encode, ignored on decode

_ALL = 0xFF
Bits = tuple[int, int]  # (byte index, bit mask)


def _bits(*parts: Bits | range) -> list[Bits]:
    """A bit table from (index, mask) pairs and ranges of whole bytes."""
    table: list[Bits] = []
    for part in parts:
        table += [(index, _ALL) for index in part] if isinstance(part, range) else [part]
    return table


I_RESERVED = (0, 0xC0)  # byte 0: bit 7 always reserved, the I bit too on these opcodes
I_FIELD = (0, 0x80)

# Reserved bits transcribed from the RFC 7143 section 11 diagrams.
RESERVED: dict[type[Pdu], list[Bits]] = {
    NopOut: _bits(I_FIELD, (1, 0x7F), range(2, 4), range(32, 48)),
    ScsiCommand: _bits(I_FIELD, (1, 0x18), range(2, 4)),
    TaskMgmtRequest: _bits(I_FIELD, range(2, 4), range(40, 48)),
    LoginRequest: _bits(I_FIELD, (1, 0x30), range(22, 24), range(32, 48)),
    TextRequest: _bits(I_FIELD, (1, 0x3F), range(2, 4), range(32, 48)),
    DataOut: _bits(I_RESERVED, (1, 0x7F), range(2, 4), range(24, 28), range(32, 36), range(44, 48)),
    LogoutRequest: _bits(I_FIELD, range(2, 4), range(8, 16), range(22, 24), range(32, 48)),
    SnackRequest: _bits(I_RESERVED, (1, 0x70), range(2, 4), range(24, 28), range(32, 40)),
    NopIn: _bits(I_RESERVED, (1, 0x7F), range(2, 4), range(36, 48)),
    ScsiResponse: _bits(I_RESERVED, (1, 0x61), range(8, 16)),
    TaskMgmtResponse: _bits(
        I_RESERVED, (1, 0x7F), (3, _ALL), range(8, 16), range(20, 24), range(36, 48)
    ),
    LoginResponse: _bits(I_RESERVED, (1, 0x30), range(20, 24), range(38, 48)),
    TextResponse: _bits(I_RESERVED, (1, 0x3F), range(2, 4), range(36, 48)),
    DataIn: _bits(I_RESERVED, (1, 0x38), (2, _ALL)),
    LogoutResponse: _bits(
        I_RESERVED,
        (1, 0x7F),
        (3, _ALL),
        range(8, 16),
        range(20, 24),
        range(36, 40),
        range(44, 48),
    ),
    R2T: _bits(I_RESERVED, (1, 0x7F), range(2, 4)),
    AsyncMessage: _bits(I_RESERVED, (1, 0x7F), range(2, 4), range(20, 24), range(44, 48)),
    Reject: _bits(I_RESERVED, (1, 0x7F), (3, _ALL), range(8, 16), range(20, 24), range(40, 48)),
}

# Bits the RFC fixes to a value: written with it, ignored on receipt.
_ONE_IN_BYTE1 = [(1, 0x80)]
FIXED: dict[type[Pdu], list[Bits]] = {
    NopOut: _ONE_IN_BYTE1,
    TaskMgmtRequest: _ONE_IN_BYTE1,
    LoginRequest: [(0, 0x40)],
    LogoutRequest: _ONE_IN_BYTE1,
    SnackRequest: _ONE_IN_BYTE1,
    NopIn: _ONE_IN_BYTE1,
    ScsiResponse: _ONE_IN_BYTE1,
    TaskMgmtResponse: _ONE_IN_BYTE1,
    LogoutResponse: _ONE_IN_BYTE1,
    R2T: _ONE_IN_BYTE1,
    AsyncMessage: _bits((1, 0x80), range(16, 20)),
    Reject: _bits((1, 0x80), range(16, 20)),
}


def _mask(table: list[Bits]) -> bytes:
    mask = bytearray(BHS_LENGTH)
    for index, bits in table:
        mask[index] |= bits
    return bytes(mask)


def test_reserved_table_covers_every_class() -> None:
    assert set(RESERVED) == set(PDU_CLASSES.values())


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("cls", list(PDU_CLASSES.values()), ids=lambda c: c.__name__)
@settings(deadline=None)
@given(data=st.data())
def test_reserved_bits_are_zero_on_encode_and_ignored_on_decode(
    codec, cls: type[Pdu], data: st.DataObject
) -> None:
    encode, decode = codec
    pdu = data.draw(pdus_of(cls))
    ahs = wire.encode_ahs(pdu.ahs)
    header = encode(pdu)
    mask = _mask(RESERVED[cls] + FIXED.get(cls, []))
    reserved_only = _mask(RESERVED[cls])
    assert all(h & m == 0 for h, m in zip(header, reserved_only, strict=True))
    noise = data.draw(st.binary(min_size=BHS_LENGTH, max_size=BHS_LENGTH))
    noisy = bytes(h ^ (n & m) for h, n, m in zip(header, noise, mask, strict=True))
    decoded = decode(noisy, ahs)
    assert decoded == _without_payload(pdu)
    decoded.data = pdu.data
    assert encode(decoded) == header


@pytest.mark.parametrize("cls", list(PDU_CLASSES.values()), ids=lambda c: c.__name__)
@settings(deadline=None, max_examples=20)  # 384 decodes per example
@given(data=st.data())
def test_every_other_bit_is_significant(cls: type[Pdu], data: st.DataObject) -> None:
    """Flipping a bit outside the reserved and fixed ones changes the decoded PDU (or makes
    it illegal): the declarations drop no defined field."""
    pdu = _without_payload(data.draw(pdus_of(cls)))
    pdu.ahs = []
    header = wire.encode_bhs(pdu)
    ignored = _mask(RESERVED[cls] + FIXED.get(cls, []) + _bits(range(4, 8)))
    for index in range(BHS_LENGTH):
        for bit in range(8):
            if ignored[index] & (1 << bit):
                continue
            flipped = bytearray(header)
            flipped[index] ^= 1 << bit
            try:
                decoded = wire.decode_bhs(bytes(flipped))
            except IscsiProtocolError:
                continue
            assert decoded != pdu, f"byte {index} bit {bit} is ignored"


# ---------------------------------------------------------------------------------------
# Reserved values in defined fields, unknown opcodes, inconsistent lengths


def _patched(pdu: Pdu, index: int, value: int, mask: int = 0xFF) -> bytes:
    header = bytearray(wire.encode_bhs(pdu))
    header[index] = (header[index] & ~mask) | value
    return bytes(header)


MALFORMED = [
    pytest.param(_patched(ScsiCommand(), 1, 0x85), id="task-attribute-5"),
    pytest.param(_patched(ScsiCommand(), 1, 0x87), id="task-attribute-7"),
    pytest.param(_patched(ScsiResponse(), 1, 0x86), id="scsi-response-O-and-U"),
    pytest.param(_patched(ScsiResponse(), 1, 0x98), id="scsi-response-o-and-u"),
    pytest.param(_patched(DataIn(), 1, 0x01), id="data-in-S-without-F"),
    pytest.param(_patched(DataIn(), 1, 0x87), id="data-in-O-and-U-with-status"),
    pytest.param(_patched(LoginRequest(), 1, 0xC0), id="login-T-and-C"),
    pytest.param(_patched(LoginRequest(), 1, 0x08), id="login-CSG-2"),
    pytest.param(_patched(LoginResponse(), 1, 0x82), id="login-response-NSG-2-with-T"),
    pytest.param(_patched(TextRequest(), 1, 0xC0), id="text-F-and-C"),
    pytest.param(_patched(TextResponse(), 1, 0xC0), id="text-response-F-and-C"),
    pytest.param(_patched(LogoutRequest(), 1, 0x83), id="logout-reason-3"),
    pytest.param(_patched(SnackRequest(), 1, 0x84), id="snack-type-4"),
]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("header", MALFORMED)
def test_reserved_values_are_malformed(codec, header: bytes) -> None:
    _, decode = codec
    with pytest.raises(MalformedPdu) as caught:
        decode(header)
    assert caught.value.header == header
    assert caught.value.reject_reason == RejectReason.PROTOCOL_ERROR
    assert caught.value.fatal


def test_nsg_is_not_checked_without_transit() -> None:
    assert wire.decode_bhs(_patched(LoginRequest(), 1, 0x02)) == LoginRequest(nsg=2)


def test_data_in_residual_bits_without_status_are_kept_as_sent() -> None:
    assert wire.decode_bhs(_patched(DataIn(), 1, 0x06)) == DataIn(overflow=True, underflow=True)


RESERVED_OPCODES = sorted(set(range(64)) - {int(op) for op in Opcode})


@pytest.mark.parametrize("codec", CODECS)
@settings(deadline=None)
@given(opcode=st.sampled_from(RESERVED_OPCODES), immediate=st.booleans())
def test_reserved_opcodes_are_unknown(codec, opcode: int, immediate: bool) -> None:
    _, decode = codec
    header = bytes([opcode | (0x40 if immediate else 0)]) + bytes(47)
    with pytest.raises(UnknownOpcode) as caught:
        decode(header)
    assert caught.value.reject_reason == RejectReason.COMMAND_NOT_SUPPORTED
    assert caught.value.header == header


@pytest.mark.parametrize("length", [0, 1, 47])
def test_header_helpers_need_a_whole_header(length: int) -> None:
    for helper in (wire.opcode_of, wire.bhs_lengths):
        with pytest.raises(MalformedPdu):
            helper(bytes(length))


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("length", [0, 47, 49, 96])
def test_a_bhs_is_48_bytes(codec, length: int) -> None:
    _, decode = codec
    with pytest.raises(MalformedPdu):
        decode(bytes([0x01]) + bytes(length - 1) if length else b"")


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("cls", [ScsiCommand, DataOut, NopOut, LoginRequest])
def test_ahs_bytes_must_match_total_ahs_length(codec, cls: type[Pdu]) -> None:
    _, decode = codec
    header = wire.encode_bhs(cls(ahs=[Ahs(AhsType.BIDI_READ_LENGTH, bytes(5))]))
    assert header[4] == 2
    ahs = wire.encode_ahs([Ahs(AhsType.BIDI_READ_LENGTH, bytes(5))])
    assert decode(header, ahs).ahs == [Ahs(AhsType.BIDI_READ_LENGTH, bytes(5))]
    for wrong in (b"", ahs[:4], ahs + bytes(4)):
        with pytest.raises(TruncatedAhs) as caught:
            decode(header, wrong)
        assert caught.value.reject_reason == RejectReason.INVALID_PDU_FIELD


@pytest.mark.parametrize(
    "ahs",
    [
        pytest.param(b"\x00", id="stray-byte"),
        pytest.param(b"\x00\x05\x01\x00", id="payload-overruns"),
        pytest.param(b"\x00\x01\x01\x00\x00\x09\x02\x00", id="second-overruns"),
    ],
)
def test_inconsistent_ahs_lengths(ahs: bytes) -> None:
    with pytest.raises(TruncatedAhs):
        wire.decode_ahs(ahs)


# ---------------------------------------------------------------------------------------
# Encode errors


OUT_OF_RANGE = [
    pytest.param(ScsiCommand(itt=1 << 32), id="itt-33-bits"),
    pytest.param(ScsiCommand(attr=8), id="attr-4-bits"),
    pytest.param(ScsiCommand(attr=-1), id="attr-negative"),
    pytest.param(ScsiCommand(cdb=bytes(10)), id="short-cdb"),
    pytest.param(ScsiCommand(lun=1 << 64), id="lun-65-bits"),
    pytest.param(DataIn(status=256), id="status-9-bits"),
    pytest.param(DataOut(data_sn=-1), id="negative-datasn"),
    pytest.param(R2T(ttt=1 << 32), id="r2t-ttt"),
    pytest.param(ScsiResponse(response=300), id="response-byte"),
    pytest.param(LoginRequest(isid=1 << 48), id="isid-49-bits"),
    pytest.param(LoginRequest(csg=4), id="csg-3-bits"),
    pytest.param(TaskMgmtRequest(function=128), id="function-8-bits"),
    pytest.param(SnackRequest(snack_type=16), id="snack-type-5-bits"),
    pytest.param(LogoutResponse(time2wait=1 << 16), id="time2wait-17-bits"),
    pytest.param(NopOut(data=memoryview(bytearray(1 << 24))), id="data-segment-too-long"),
]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("pdu", OUT_OF_RANGE)
def test_out_of_range_fields_raise_encode_error(codec, pdu: Pdu) -> None:
    encode, _ = codec
    with pytest.raises(PduEncodeError):
        encode(pdu)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("cls", [ScsiCommand, DataOut, NopOut])
@pytest.mark.parametrize("ahs_length", [2, 1024, -4])
def test_given_ahs_length_must_fit_the_field(codec, cls: type[Pdu], ahs_length: int) -> None:
    encode, _ = codec
    with pytest.raises(PduEncodeError):
        encode(cls(), ahs_length)


def test_ahs_beyond_total_ahs_length_reach() -> None:
    with pytest.raises(PduEncodeError):
        wire.encode_ahs([Ahs(1, bytes(1021))])
    with pytest.raises(PduEncodeError):
        wire.encode_ahs([Ahs(256, b"")])


# ---------------------------------------------------------------------------------------
# AHS codec and SCSI Command helpers


@settings(deadline=None)
@given(ahs_lists())
def test_ahs_round_trip_and_padding(segments: list[Ahs]) -> None:
    encoded = wire.encode_ahs(segments)
    assert len(encoded) % 4 == 0
    assert wire.decode_ahs(encoded) == segments


def test_ahs_layout() -> None:
    assert wire.encode_ahs([Ahs(AhsType.BIDI_READ_LENGTH, _hex("00 00001000"))]) == _hex(
        "0005 02 00 00001000"
    )


@settings(deadline=None)
@given(st.binary(min_size=1, max_size=260))
def test_scsi_command_for_any_cdb_length(cdb: bytes) -> None:
    command = wire.scsi_command_for_cdb(cdb, itt=3, read=True)
    assert command.itt == 3 and command.read
    assert len(command.cdb) == 16
    assert wire.full_cdb(command).rstrip(b"\x00") == cdb.rstrip(b"\x00")
    if len(cdb) >= 16:
        assert wire.full_cdb(command) == cdb
    ahs = wire.encode_ahs(command.ahs)
    decoded = wire.decode_bhs(wire.encode_bhs(command), ahs)
    assert isinstance(decoded, ScsiCommand)
    assert wire.full_cdb(decoded) == wire.full_cdb(command)


def test_extended_cdb_ahs_layout() -> None:
    cdb = bytes(range(32))  # a 32-byte variable-length CDB
    command = wire.scsi_command_for_cdb(cdb)
    assert command.cdb == cdb[:16]
    # AHSLength = CDB length - 15, type 1, a reserved byte, then CDB bytes 16.. padded.
    assert wire.encode_ahs(command.ahs) == _hex("0011 01 00") + cdb[16:]
    odd = wire.scsi_command_for_cdb(bytes(range(1, 18)))
    assert wire.encode_ahs(odd.ahs) == _hex("0002 01 00 11 000000")


def test_bidi_read_length() -> None:
    command = wire.scsi_command_for_cdb(bytes(16), bidi_read_length=0x12345)
    assert wire.bidi_read_length(command) == 0x12345
    assert wire.bidi_read_length(ScsiCommand()) is None
    assert wire.encode_ahs(command.ahs) == _hex("0005 02 00 00012345")
    with pytest.raises(MalformedPdu):
        wire.bidi_read_length(ScsiCommand(ahs=[Ahs(AhsType.BIDI_READ_LENGTH, b"\x00")]))


def test_empty_cdb_is_refused() -> None:
    with pytest.raises(PduEncodeError):
        wire.scsi_command_for_cdb(b"")


def test_layouts_are_48_bytes() -> None:
    for layout in wire.LAYOUTS.values():
        assert layout.struct.sizeof() == BHS_LENGTH


def _plain(container: object) -> object:
    """A parsed construct Container as plain dicts, without construct's private keys."""
    if isinstance(container, dict):
        return {k: _plain(v) for k, v in container.items() if not str(k).startswith("_")}
    return container


@pytest.mark.parametrize("opcode", list(wire.LAYOUTS), ids=lambda op: op.name)
@settings(deadline=None, max_examples=30)
@given(data=st.data())
def test_compiled_structs_equal_their_declarations(opcode: Opcode, data: st.DataObject) -> None:
    layout = wire.LAYOUTS[opcode]
    header = data.draw(raw_headers(opcode, total_ahs_length=None))
    parsed = layout.struct.parse(header)
    assert _plain(parsed) == _plain(layout.declaration.parse(header))
    assert layout.struct.build(parsed) == layout.declaration.build(parsed)
