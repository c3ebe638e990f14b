"""The key=value codec, the key table, TargetAddress parsing and the C-bit helpers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iscsicore.keys import (
    KEY_TABLE,
    KeyKind,
    MalformedText,
    Phase,
    Scope,
    SessionParams,
    TextAssembler,
    TextError,
    TextSplitter,
    TextTooLong,
    decode_text,
    encode_text,
    parse_numeric,
    parse_target_address,
)
from iscsicore.portal import Portal


def test_round_trip() -> None:
    pairs = [("InitiatorName", "iqn.2024-01.org.example:h1"), ("InitiatorAlias", "hôte un")]
    data = encode_text(pairs)
    assert data == b"InitiatorName=iqn.2024-01.org.example:h1\0InitiatorAlias=h\xc3\xb4te un\0"
    assert decode_text(data) == pairs


def test_empty_values_and_padding() -> None:
    assert decode_text(b"SendTargets=\0\0\0") == [("SendTargets", "")]
    assert decode_text(b"") == []
    # No final NUL: cut short, malformed (RFC 7143 6.1); accepted only when asked to be lenient.
    with pytest.raises(MalformedText, match="terminating NUL"):
        decode_text(memoryview(b"A=1\0B=2"))
    assert decode_text(memoryview(b"A=1\0B=2"), terminated=False) == [("A", "1"), ("B", "2")]


@pytest.mark.parametrize(
    "data",
    [
        b"NoEquals\0",
        b"=value\0",
        b"lowercase=1\0",
        b"Bad Key=1\0",
        b"K" * 64 + b"=1\0",
        b"InitiatorAlias=" + b"x" * 256 + b"\0",
        b"Key=\xff\xfe\0",
        b"K\xc3\xa9y=1\0",
    ],
)
def test_malformed_text(data: bytes) -> None:
    with pytest.raises(MalformedText):
        decode_text(data)


def test_length_limits() -> None:
    assert decode_text(b"K" * 63 + b"=1\0")
    assert decode_text(b"InitiatorAlias=" + b"x" * 255 + b"\0")
    # CHAP binaries may be long; each list item is limited on its own.
    assert decode_text(b"CHAP_C=0x" + b"ab" * 1024 + b"\0")
    with pytest.raises(MalformedText):
        decode_text(b"CHAP_C=0x" + b"ab" * 4097 + b"\0")
    assert decode_text(b"HeaderDigest=" + b",".join([b"CRC32C"] * 60) + b"\0")


def test_encode_refuses_bad_keys() -> None:
    with pytest.raises(MalformedText):
        encode_text([("bad key", "1")])
    with pytest.raises(MalformedText):
        encode_text([("Key", "nul\0inside")])


@given(st.binary(max_size=600))
def test_random_bytes_decode_or_raise_text_error(data: bytes) -> None:
    try:
        pairs = decode_text(data)
    except TextError:
        return
    assert decode_text(encode_text(pairs)) == pairs


@given(
    st.lists(
        st.tuples(
            st.from_regex(r"[A-Z][A-Za-z0-9.\-+@_]{0,20}", fullmatch=True),
            st.text(
                st.characters(codec="utf-8", exclude_characters="\0"),
                max_size=60,
            ),
        ),
        max_size=20,
    )
)
def test_round_trip_property(pairs: list[tuple[str, str]]) -> None:
    pairs = [(k, v) for k, v in pairs if k not in KEY_TABLE or len(v.encode()) <= 255]
    assert decode_text(encode_text(pairs)) == pairs


@pytest.mark.parametrize(
    ("text", "number"),
    [("0", 0), ("8192", 8192), ("0x2000", 8192), ("0X10", 16), ("", None), ("0x", None),
     ("-1", None), ("12a", None), ("٣", None), ("1" * 17, None)],
)  # fmt: skip
def test_numeric_values(text: str, number: int | None) -> None:
    assert parse_numeric(text) == number


def test_table_rows_match_the_rfc() -> None:
    """Result functions and scopes of RFC 7143 section 13, row by row."""
    kinds = {
        "InitialR2T": KeyKind.BOOLEAN_OR,
        "ImmediateData": KeyKind.BOOLEAN_AND,
        "DataPDUInOrder": KeyKind.BOOLEAN_OR,
        "DataSequenceInOrder": KeyKind.BOOLEAN_OR,
        "MaxBurstLength": KeyKind.NUMERIC_MIN,
        "FirstBurstLength": KeyKind.NUMERIC_MIN,
        "DefaultTime2Wait": KeyKind.NUMERIC_MAX,
        "DefaultTime2Retain": KeyKind.NUMERIC_MIN,
        "MaxOutstandingR2T": KeyKind.NUMERIC_MIN,
        "MaxConnections": KeyKind.NUMERIC_MIN,
        "ErrorRecoveryLevel": KeyKind.NUMERIC_MIN,
        "HeaderDigest": KeyKind.LIST,
        "DataDigest": KeyKind.LIST,
        "AuthMethod": KeyKind.LIST,
        "MaxRecvDataSegmentLength": KeyKind.NUMERIC_DECLARATIVE,
        "TargetPortalGroupTag": KeyKind.NUMERIC_DECLARATIVE,
        "InitiatorName": KeyKind.DECLARATIVE,
        "TargetName": KeyKind.DECLARATIVE,
        "InitiatorAlias": KeyKind.DECLARATIVE,
        "TargetAlias": KeyKind.DECLARATIVE,
        "TargetAddress": KeyKind.DECLARATIVE,
    }
    for name, kind in kinds.items():
        assert KEY_TABLE[name].kind is kind, name
    defaults = {
        "MaxRecvDataSegmentLength": "8192",
        "MaxBurstLength": "262144",
        "FirstBurstLength": "65536",
        "DefaultTime2Wait": "2",
        "DefaultTime2Retain": "20",
        "MaxOutstandingR2T": "1",
        "MaxConnections": "1",
        "ErrorRecoveryLevel": "0",
        "InitialR2T": "Yes",
        "ImmediateData": "Yes",
        "HeaderDigest": "None",
    }
    for name, default in defaults.items():
        assert KEY_TABLE[name].default == default, name
    assert KEY_TABLE["HeaderDigest"].scope is Scope.CONNECTION
    assert KEY_TABLE["MaxRecvDataSegmentLength"].scope is Scope.CONNECTION
    assert KEY_TABLE["MaxBurstLength"].leading_only
    assert KEY_TABLE["AuthMethod"].phases is Phase.SECURITY
    assert KEY_TABLE["SendTargets"].phases is Phase.FULL_FEATURE
    irrelevant = {n for n, spec in KEY_TABLE.items() if spec.irrelevant_in_discovery}
    assert {"MaxBurstLength", "ImmediateData", "InitialR2T", "MaxOutstandingR2T"} <= irrelevant
    assert "HeaderDigest" not in irrelevant and "MaxRecvDataSegmentLength" not in irrelevant
    assert (KEY_TABLE["ErrorRecoveryLevel"].minimum, KEY_TABLE["ErrorRecoveryLevel"].maximum) == (
        0,
        2,
    )
    assert KEY_TABLE["MaxBurstLength"].maximum == 2**24 - 1


def test_session_params_defaults() -> None:
    params = SessionParams()
    assert params.max_burst_length == 262144 and params.first_burst_length == 65536
    assert params.initial_r2t and params.immediate_data and not params.header_digest
    assert params.initiator_max_recv_data_segment_length == 8192


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("1.2.3.4:3260,1", Portal("1.2.3.4", 3260, 1)),
        ("[::1]:3260,1", Portal("::1", 3260, 1)),
        ("[fe80::1%eth0]:3262,7", Portal("fe80::1%eth0", 3262, 7)),
        ("host", Portal("host", 3260, None)),
        ("host.example.com,2", Portal("host.example.com", 3260, 2)),
        ("[2001:db8::2]", Portal("2001:db8::2", 3260, None)),
        ("10.0.0.1:3261", Portal("10.0.0.1", 3261, None)),
    ],
)
def test_target_address(text: str, address: Portal) -> None:
    assert parse_target_address(text) == address
    assert parse_target_address(str(address)) == address


@pytest.mark.parametrize(
    "text",
    ["", ":3260", "host:", "host:port", "host:70000", "[::1", "[::1]x", "::1:3260", "h,x",
     "h,70000", "[1.2.3.4]:1"],
)  # fmt: skip
def test_bad_target_address(text: str) -> None:
    with pytest.raises(MalformedText):
        parse_target_address(text)


def test_portal_address_formats_ipv6_in_brackets() -> None:
    assert str(Portal("fd00::5", 3261, 2)) == "[fd00::5]:3261,2"
    assert str(Portal("10.0.0.1", 3261, 1)) == "10.0.0.1:3261,1"


@given(st.binary(max_size=300), st.integers(1, 50))
def test_split_and_reassemble(data: bytes, size: int) -> None:
    chunks = list(TextSplitter(size).chunks(data))
    assert all(len(chunk) <= size for chunk, _ in chunks)
    assert [more for _, more in chunks] == [True] * (len(chunks) - 1) + [False]
    assembler = TextAssembler()
    results = [assembler.feed(chunk, more) for chunk, more in chunks]
    assert results[:-1] == [None] * (len(chunks) - 1)
    assert results[-1] == data
    assert not assembler.pending


def test_assembler_limit() -> None:
    assembler = TextAssembler(limit=10)
    assert assembler.feed(b"123456", True) is None
    with pytest.raises(TextTooLong):
        assembler.feed(b"123456", True)
    assert not assembler.pending
