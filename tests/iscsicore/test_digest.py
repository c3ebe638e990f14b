"""CRC32C digests against RFC 3720 appendix B.4, in on-the-wire byte order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iscsicore.digest import crc32c, digest_bytes, digest_of_parts

# RFC 3720 B.4: the iSCSI SCSI Read (10) command PDU example.
READ10_PDU = bytes.fromhex(
    "01c00000 00000000 00000000 00000000 14000000 00000400"
    "00000014 00000018 28000000 00000000 02000000 00000000".replace(" ", "")
)


@pytest.mark.parametrize(
    ("data", "wire"),
    [
        (bytes(32), "aa 36 91 8a"),
        (b"\xff" * 32, "43 ab a8 62"),
        (bytes(range(32)), "4e 79 dd 46"),
        (bytes(range(31, -1, -1)), "5c db 3f 11"),
        (READ10_PDU, "56 3a 96 d9"),
    ],
)
def test_rfc3720_vectors_in_wire_order(data: bytes, wire: str) -> None:
    assert digest_bytes(data) == bytes.fromhex(wire)


def test_value_is_sent_least_significant_byte_first() -> None:
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert digest_bytes(bytes(32)) == (0x8A9136AA).to_bytes(4, "little")


def test_check_value_of_the_catalogue() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # CRC-32/ISCSI check value


@settings(deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=5))
def test_digest_of_parts_equals_digest_of_concatenation(parts: list[bytes]) -> None:
    assert digest_of_parts(*parts) == digest_bytes(b"".join(parts))


@settings(deadline=None)
@given(st.binary(min_size=1, max_size=128), st.data())
def test_any_single_bit_flip_changes_the_digest(data: bytes, draw: st.DataObject) -> None:
    bit = draw.draw(st.integers(0, len(data) * 8 - 1))
    flipped = bytearray(data)
    flipped[bit // 8] ^= 1 << (bit % 8)
    assert digest_bytes(bytes(flipped)) != digest_bytes(data)


def test_accepts_memoryview_and_bytearray() -> None:
    assert digest_bytes(memoryview(READ10_PDU)) == digest_bytes(bytearray(READ10_PDU))
