"""RFC 1982 serial number arithmetic for 32-bit iSCSI sequence numbers.

CmdSN, StatSN, DataSN and R2TSN wrap at 2**32 (RFC 7143 section 4.2.2.1). Two numbers
exactly 2**31 apart are incomparable under RFC 1982; here neither is less than the other.
"""

from __future__ import annotations

SERIAL_BITS = 32
SERIAL_MODULUS = 1 << SERIAL_BITS
SERIAL_MASK = SERIAL_MODULUS - 1
_HALF = 1 << (SERIAL_BITS - 1)


def sn_add(sn: int, increment: int) -> int:
    """``sn + increment`` modulo 2**32; RFC 1982 limits increments to 0 .. 2**31 - 1."""
    if not 0 <= increment < _HALF:
        raise ValueError(f"serial increment {increment} outside 0 .. 2**31 - 1")
    return (sn + increment) & SERIAL_MASK


def sn_diff(a: int, b: int) -> int:
    """The signed distance from ``b`` to ``a`` (``a - b``), in -2**31 .. 2**31 - 1."""
    distance = (a - b) & SERIAL_MASK
    return distance - SERIAL_MODULUS if distance >= _HALF else distance


def sn_lt(a: int, b: int) -> bool:
    distance = (b - a) & SERIAL_MASK
    return 0 < distance < _HALF


def sn_gt(a: int, b: int) -> bool:
    return sn_lt(b, a)


def sn_le(a: int, b: int) -> bool:
    return a == b or sn_lt(a, b)


def sn_ge(a: int, b: int) -> bool:
    return a == b or sn_gt(a, b)


def in_window(sn: int, low: int, high: int) -> bool:
    """Whether ``low <= sn <= high`` in serial arithmetic, e.g. ExpCmdSN <= CmdSN <= MaxCmdSN.

    The window is empty when ``high`` is ``low - 1`` (MaxCmdSN = ExpCmdSN - 1 closes the
    command window, RFC 7143 section 4.2.2.1).
    """
    return ((sn - low) & SERIAL_MASK) <= ((high - low) & SERIAL_MASK) and sn_le(low, high)


def sn_max(a: int, b: int) -> int:
    return b if sn_gt(b, a) else a
