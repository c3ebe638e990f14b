"""CRC32C header and data digests (RFC 7143 section 13.1; the `crc32c` package, C-backed).

The 32-bit CRC is sent least significant byte first: the CRC of 32 zero bytes,
0x8A9136AA, appears on the wire as ``aa 36 91 8a`` (RFC 3720 appendix B.4; libiscsi and
Linux store it the same way).
"""

from __future__ import annotations

import struct

import crc32c as _crc32c

DIGEST_LENGTH = 4
_LE32 = struct.Struct("<I")


def crc32c(data: bytes | bytearray | memoryview) -> int:
    return int(_crc32c.crc32c(data))


def digest_bytes(data: bytes | bytearray | memoryview) -> bytes:
    """The 4-byte digest of ``data`` as it is sent on the wire."""
    return _LE32.pack(_crc32c.crc32c(data))


def digest_of_parts(*parts: bytes | bytearray | memoryview) -> bytes:
    """The wire digest of the concatenation of ``parts``, without concatenating them."""
    value = 0
    for part in parts:
        value = _crc32c.crc32c(part, value)
    return _LE32.pack(value)
