"""encode_pdu and PduFramer: layout, digests, splitting, limits and typed errors."""

from __future__ import annotations

import contextlib
import itertools
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iscsicore import wire
from iscsicore.digest import digest_bytes
from iscsicore.errors import (
    DataDigestError,
    DataSegmentTooLong,
    HeaderDigestError,
    IscsiProtocolError,
    MalformedPdu,
    TruncatedAhs,
    UnknownOpcode,
    WrongDirection,
)
from iscsicore.framing import PduFramer, encode_pdu
from iscsicore.pdu import (
    BHS_LENGTH,
    Ahs,
    DataIn,
    DataOut,
    LoginRequest,
    LoginResponse,
    NopIn,
    NopOut,
    Pdu,
    RejectReason,
    ScsiCommand,
    TextRequest,
)

from .strategies import initiator_pdus, target_pdus

Peer = Literal["initiator", "target"]


def _drain(framer: PduFramer) -> list[Pdu]:
    received = []
    while (pdu := framer.next_pdu()) is not None:
        received.append(pdu)
    return received


def _split(blob: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(blob), *(c % (len(blob) + 1) for c in cuts)})
    return [blob[a:b] for a, b in itertools.pairwise(points)]


# ---------------------------------------------------------------------------------------
# encode_pdu layout


def test_layout_without_digests() -> None:
    pdu = DataOut(data=b"hello")
    encoded = encode_pdu(pdu)
    assert encoded == wire.encode_bhs(pdu) + b"hello\x00\x00\x00"


def test_layout_with_both_digests() -> None:
    pdu = ScsiCommand(ahs=[Ahs(1, b"\x00" + bytes(range(16, 20)))], data=b"abcdef")
    bhs = wire.encode_bhs(pdu)
    ahs = wire.encode_ahs(pdu.ahs)
    padded = b"abcdef\x00\x00"
    expected = bhs + ahs + digest_bytes(bhs + ahs) + padded + digest_bytes(padded)
    assert encode_pdu(pdu, header_digest=True, data_digest=True) == expected


def test_no_data_digest_without_data() -> None:
    pdu = NopOut()
    assert len(encode_pdu(pdu, data_digest=True)) == BHS_LENGTH
    assert len(encode_pdu(pdu, header_digest=True, data_digest=True)) == BHS_LENGTH + 4


@pytest.mark.parametrize("length", range(9))
def test_data_is_padded_to_four_bytes(length: int) -> None:
    encoded = encode_pdu(DataOut(data=b"\xaa" * length))
    assert len(encoded) == BHS_LENGTH + (length + 3) // 4 * 4
    assert encoded[BHS_LENGTH + length :] == bytes(len(encoded) - BHS_LENGTH - length)


# ---------------------------------------------------------------------------------------
# Round trips through the framer


@settings(max_examples=150, deadline=None)
@given(
    direction=st.sampled_from(["initiator", "target"]),
    data=st.data(),
    header_digest=st.booleans(),
    data_digest=st.booleans(),
)
def test_any_pdus_any_split(
    direction: Peer, data: st.DataObject, header_digest: bool, data_digest: bool
) -> None:
    strategy = initiator_pdus() if direction == "initiator" else target_pdus()
    sent = data.draw(st.lists(strategy, min_size=1, max_size=5))
    blob = b"".join(
        encode_pdu(p, header_digest=header_digest, data_digest=data_digest) for p in sent
    )
    cuts = data.draw(st.lists(st.integers(0, len(blob)), max_size=12))
    framer = PduFramer(
        receiving_from=direction,
        max_recv_data_segment_length=1 << 24,
        header_digest=header_digest,
        data_digest=data_digest,
    )
    received: list[Pdu] = []
    for chunk in _split(blob, cuts):
        framer.feed(chunk)
        received += _drain(framer)
    assert received == sent
    assert framer.buffered == 0
    assert all(type(p.data) is bytes for p in received)


def test_several_pdus_in_one_feed_and_one_byte_feeds() -> None:
    sent = [ScsiCommand(itt=n, data=bytes([n]) * n) for n in range(20)]
    blob = b"".join(encode_pdu(p) for p in sent)
    whole = PduFramer(receiving_from="initiator")
    whole.feed(blob)
    assert _drain(whole) == sent
    bytewise = PduFramer(receiving_from="initiator")
    received: list[Pdu] = []
    for index in range(len(blob)):
        bytewise.feed(blob[index : index + 1])
        received += _drain(bytewise)
    assert received == sent


def test_buffered_counts_unconsumed_bytes() -> None:
    framer = PduFramer(receiving_from="target")
    first, second = encode_pdu(NopIn(data=b"x" * 8)), encode_pdu(NopIn())
    framer.feed(first + second[:10])
    assert framer.buffered == len(first) + 10
    assert framer.next_pdu() == NopIn(data=b"x" * 8)
    assert framer.buffered == 10
    assert framer.next_pdu() is None
    framer.feed(bytearray(second[10:]))
    assert framer.next_pdu() == NopIn()
    assert framer.buffered == 0


def test_buffer_does_not_grow_with_the_stream() -> None:
    pdu = DataOut(data=bytes(1000))
    encoded = encode_pdu(pdu)
    framer = PduFramer(receiving_from="initiator")
    for _ in range(2000):
        framer.feed(memoryview(encoded)[:700])
        framer.feed(encoded[700:] + encoded[:100])
        assert framer.next_pdu() == pdu
        framer.feed(encoded[100:])
        assert framer.next_pdu() == pdu
    assert framer.buffered == 0
    assert len(framer._buffer) < 4 * len(encoded)


def test_digests_switched_on_after_login() -> None:
    framer = PduFramer(receiving_from="initiator")
    framer.feed(encode_pdu(LoginRequest(data=b"HeaderDigest=CRC32C\x00")))
    assert isinstance(framer.next_pdu(), LoginRequest)
    framer.header_digest = framer.data_digest = True
    framer.max_recv_data_segment_length = 65536
    command = ScsiCommand(data=bytes(40000))
    framer.feed(encode_pdu(command, header_digest=True, data_digest=True))
    assert framer.next_pdu() == command


# ---------------------------------------------------------------------------------------
# Errors


def test_data_digest_error_is_not_fatal() -> None:
    bad = bytearray(encode_pdu(DataOut(itt=7, data=b"abcdefgh"), data_digest=True))
    bad[BHS_LENGTH + 2] ^= 0x01
    good = DataOut(itt=8, data=b"xyz")
    framer = PduFramer(receiving_from="initiator", data_digest=True)
    framer.feed(bytes(bad) + encode_pdu(good, data_digest=True))
    with pytest.raises(DataDigestError) as caught:
        framer.next_pdu()
    error = caught.value
    assert not error.fatal
    assert error.reject_reason == RejectReason.DATA_DIGEST_ERROR
    assert error.header == bytes(bad[:BHS_LENGTH])
    assert not framer.failed
    assert framer.next_pdu() == good


def test_corrupt_padding_fails_the_data_digest() -> None:
    bad = bytearray(encode_pdu(DataOut(data=b"abc"), data_digest=True))
    bad[BHS_LENGTH + 3] = 0xFF  # the pad byte, covered by the digest
    framer = PduFramer(receiving_from="initiator", data_digest=True)
    framer.feed(bytes(bad))
    with pytest.raises(DataDigestError):
        framer.next_pdu()


def test_header_digest_error_is_fatal_and_sticky() -> None:
    bad = bytearray(encode_pdu(ScsiCommand(itt=1), header_digest=True))
    bad[20] ^= 0x80
    framer = PduFramer(receiving_from="initiator", header_digest=True)
    framer.feed(bytes(bad) + encode_pdu(ScsiCommand(itt=2), header_digest=True))
    with pytest.raises(HeaderDigestError) as caught:
        framer.next_pdu()
    assert caught.value.fatal
    assert caught.value.header == bytes(bad[:BHS_LENGTH])
    assert framer.failed
    with pytest.raises(HeaderDigestError):
        framer.next_pdu()


def test_header_digest_covers_the_ahs() -> None:
    bad = bytearray(encode_pdu(ScsiCommand(ahs=[Ahs(2, bytes(5))]), header_digest=True))
    bad[BHS_LENGTH + 6] ^= 0x01
    framer = PduFramer(receiving_from="initiator", header_digest=True)
    framer.feed(bytes(bad))
    with pytest.raises(HeaderDigestError):
        framer.next_pdu()


def test_data_segment_longer_than_declared_is_refused_from_the_header() -> None:
    framer = PduFramer(receiving_from="initiator", max_recv_data_segment_length=512)
    framer.feed(encode_pdu(DataOut(data=bytes(512))))
    assert framer.next_pdu() == DataOut(data=bytes(512))
    header = encode_pdu(DataOut(data=bytes(513)))[:BHS_LENGTH]
    framer.feed(header)  # the data has not arrived: the header alone is enough
    with pytest.raises(DataSegmentTooLong) as caught:
        framer.next_pdu()
    assert caught.value.fatal and caught.value.header == header


def test_login_pdus_are_limited_to_8192_whatever_the_mrdsl() -> None:
    framer = PduFramer(receiving_from="target", max_recv_data_segment_length=512)
    framer.feed(encode_pdu(LoginResponse(data=bytes(8192))))
    assert framer.next_pdu() == LoginResponse(data=bytes(8192))
    big = PduFramer(receiving_from="initiator", max_recv_data_segment_length=1 << 20)
    big.feed(encode_pdu(LoginRequest(data=bytes(8193)))[:BHS_LENGTH])
    with pytest.raises(DataSegmentTooLong):
        big.next_pdu()


@pytest.mark.parametrize(
    ("receiving_from", "pdu"),
    [("initiator", NopIn()), ("initiator", DataIn()), ("target", NopOut()), ("target", DataOut())],
)
def test_wrong_direction(receiving_from: Peer, pdu: Pdu) -> None:
    framer = PduFramer(receiving_from=receiving_from)
    framer.feed(encode_pdu(pdu))
    with pytest.raises(WrongDirection) as caught:
        framer.next_pdu()
    assert isinstance(caught.value, UnknownOpcode)
    assert caught.value.fatal
    assert caught.value.header == encode_pdu(pdu)[:BHS_LENGTH]


def test_reserved_opcode() -> None:
    framer = PduFramer(receiving_from="initiator")
    header = bytes([0x1C]) + bytes(47)
    framer.feed(header)
    with pytest.raises(UnknownOpcode) as caught:
        framer.next_pdu()
    assert caught.value.reject_reason == RejectReason.COMMAND_NOT_SUPPORTED
    assert caught.value.header == header


def test_inconsistent_ahs_is_fatal() -> None:
    header = bytearray(wire.encode_bhs(ScsiCommand()))
    header[4] = 1  # one word of AHS ...
    framer = PduFramer(receiving_from="initiator")
    framer.feed(bytes(header) + b"\x00\x09\x01\x00")  # ... claiming 9 payload bytes
    with pytest.raises(TruncatedAhs):
        framer.next_pdu()
    assert framer.failed


def test_malformed_header() -> None:
    header = bytearray(wire.encode_bhs(TextRequest()))
    header[1] = 0xC0  # F and C
    framer = PduFramer(receiving_from="initiator")
    framer.feed(bytes(header))
    with pytest.raises(MalformedPdu):
        framer.next_pdu()


def test_feed_after_a_fatal_error_is_ignored() -> None:
    framer = PduFramer(receiving_from="initiator")
    framer.feed(bytes([0x3C]) + bytes(47))
    with pytest.raises(UnknownOpcode):
        framer.next_pdu()
    framer.feed(encode_pdu(NopOut()))
    with pytest.raises(UnknownOpcode):
        framer.next_pdu()


def test_receiving_from_is_checked() -> None:
    with pytest.raises(ValueError):
        PduFramer(receiving_from="both")  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(st.binary(max_size=300), max_size=8),
    direction=st.sampled_from(["initiator", "target"]),
    header_digest=st.booleans(),
    data_digest=st.booleans(),
    mrdsl=st.sampled_from([512, 8192, 1 << 24]),
)
def test_random_bytes_raise_only_protocol_errors(
    chunks: list[bytes], direction: Peer, header_digest: bool, data_digest: bool, mrdsl: int
) -> None:
    framer = PduFramer(
        receiving_from=direction,
        max_recv_data_segment_length=mrdsl,
        header_digest=header_digest,
        data_digest=data_digest,
    )
    for chunk in chunks:
        framer.feed(chunk)
        for _ in range(len(chunk) + 1):  # each PDU consumes at least 48 bytes
            try:
                if framer.next_pdu() is None:
                    break
            except IscsiProtocolError as error:
                if error.fatal:
                    return


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    direction=st.sampled_from(["initiator", "target"]),
)
def test_plausible_headers_raise_only_protocol_errors(data: st.DataObject, direction: Peer) -> None:
    """Headers with a real opcode and small lengths get past the opcode check and exercise
    the decoders' field checks."""
    strategy = initiator_pdus() if direction == "initiator" else target_pdus()
    blob = bytearray(encode_pdu(data.draw(strategy)))
    for _ in range(data.draw(st.integers(0, 6))):
        index = data.draw(st.integers(0, len(blob) - 1))
        blob[index] = data.draw(st.integers(0, 255))
    framer = PduFramer(receiving_from=direction, max_recv_data_segment_length=1 << 24)
    framer.feed(bytes(blob))
    with contextlib.suppress(IscsiProtocolError):
        framer.next_pdu()


def test_changing_settings_reparses_a_header_already_buffered() -> None:
    """The first full feature PDU may arrive in the same segment as the last login PDU,
    before the connection switches digests on."""
    login = LoginRequest(transit=True, csg=1, nsg=3, data=b"HeaderDigest=CRC32C\x00")
    command = ScsiCommand(itt=9, data=bytes(100))
    following = encode_pdu(command, header_digest=True, data_digest=True)
    framer = PduFramer(receiving_from="initiator")
    framer.feed(encode_pdu(login) + following[:60])
    assert framer.next_pdu() == login
    assert framer.next_pdu() is None  # header parsed under the login-phase settings
    framer.header_digest = True
    framer.data_digest = True
    framer.feed(following[60:])
    assert framer.next_pdu() == command
    assert framer.buffered == 0


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_data_digest_errors_never_lose_sync(data: st.DataObject) -> None:
    """Corrupt the data of some PDUs: exactly those raise DataDigestError, each consumed,
    and every other PDU still arrives intact, however the stream is split."""
    sent = data.draw(st.lists(initiator_pdus(), min_size=1, max_size=6))
    corrupt = [bool(p.data) and data.draw(st.booleans()) for p in sent]
    blob = bytearray()
    for pdu, bad in zip(sent, corrupt, strict=True):
        encoded = bytearray(encode_pdu(pdu, header_digest=True, data_digest=True))
        if bad:
            header_end = BHS_LENGTH + len(wire.encode_ahs(pdu.ahs)) + 4
            encoded[data.draw(st.integers(header_end, len(encoded) - 1))] ^= 0x5A
        blob += encoded
    cuts = data.draw(st.lists(st.integers(0, len(blob)), max_size=8))
    framer = PduFramer(
        receiving_from="initiator",
        max_recv_data_segment_length=1 << 24,
        header_digest=True,
        data_digest=True,
    )
    outcomes: list[Pdu | bytes] = []
    for chunk in _split(bytes(blob), cuts):
        framer.feed(chunk)
        while True:
            try:
                received = framer.next_pdu()
            except DataDigestError as error:
                assert error.header is not None
                outcomes.append(error.header)
                continue
            if received is None:
                break
            outcomes.append(received)
    expected = [
        encode_pdu(p)[:BHS_LENGTH] if bad else p for p, bad in zip(sent, corrupt, strict=True)
    ]
    assert outcomes == expected
    assert framer.buffered == 0 and not framer.failed
