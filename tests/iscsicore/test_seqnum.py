"""RFC 1982 serial arithmetic on 32 bits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iscsicore.seqnum import (
    in_window,
    sn_add,
    sn_diff,
    sn_ge,
    sn_gt,
    sn_le,
    sn_lt,
    sn_max,
)

u32 = st.integers(0, 0xFFFFFFFF)
step = st.integers(1, 0x7FFFFFFF)


def test_wraparound_examples() -> None:
    assert sn_add(0xFFFFFFFF, 1) == 0
    assert sn_lt(0xFFFFFFFF, 0)
    assert sn_gt(0, 0xFFFFFFFF)
    assert sn_lt(0xFFFFFFF0, 5)
    assert sn_diff(5, 0xFFFFFFF0) == 21
    assert sn_diff(0xFFFFFFF0, 5) == -21


def test_numbers_half_the_space_apart_are_incomparable() -> None:
    assert not sn_lt(0, 0x80000000)
    assert not sn_gt(0, 0x80000000)
    assert not sn_lt(0x80000000, 0)


def test_increment_must_be_below_half_the_space() -> None:
    with pytest.raises(ValueError):
        sn_add(0, 0x80000000)
    with pytest.raises(ValueError):
        sn_add(0, -1)


@settings(deadline=None)
@given(u32, step)
def test_adding_moves_forward(sn: int, increment: int) -> None:
    later = sn_add(sn, increment)
    assert sn_lt(sn, later)
    assert sn_gt(later, sn)
    assert sn_le(sn, later) and sn_ge(later, sn)
    assert not sn_lt(later, sn)
    assert sn_diff(later, sn) == increment
    assert sn_diff(sn, later) == -increment
    assert sn_max(sn, later) == later == sn_max(later, sn)


@settings(deadline=None)
@given(u32, u32)
def test_at_most_one_order_holds(a: int, b: int) -> None:
    assert sum((sn_lt(a, b), sn_gt(a, b), a == b)) <= 1
    assert sn_le(a, b) == (sn_lt(a, b) or a == b)


@settings(deadline=None)
@given(u32)
def test_equal_numbers(sn: int) -> None:
    assert sn_le(sn, sn) and sn_ge(sn, sn)
    assert not sn_lt(sn, sn) and not sn_gt(sn, sn)
    assert sn_diff(sn, sn) == 0


@settings(deadline=None)
@given(u32, st.integers(0, 1000), st.integers(0, 2000))
def test_window_membership(low: int, width: int, offset: int) -> None:
    high = sn_add(low, width)
    sn = sn_add(low, offset)
    assert in_window(sn, low, high) == (offset <= width)


@settings(deadline=None)
@given(u32, st.integers(1, 1000))
def test_below_the_window_is_outside(low: int, distance: int) -> None:
    below = (low - distance) & 0xFFFFFFFF
    assert not in_window(below, low, sn_add(low, 100))


@settings(deadline=None)
@given(u32, u32)
def test_closed_window_admits_nothing(low: int, sn: int) -> None:
    # MaxCmdSN = ExpCmdSN - 1: the target accepts no new command.
    assert not in_window(sn, low, (low - 1) & 0xFFFFFFFF)
