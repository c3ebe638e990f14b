"""Sequence numbers of the full feature phase (iscsicore.fullfeature.numbering) against
RFC 7143 sections 3.2.2.1, 4.2.2.1 and 4.2.2.2, wraparound at 2**32 included."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from iscsicore.fullfeature.numbering import InitiatorNumbering, StatSN
from iscsicore.seqnum import SERIAL_MASK, in_window, sn_add, sn_diff, sn_ge, sn_gt

serials = st.integers(0, SERIAL_MASK)
windows = st.integers(1, 64)


def test_login_values_start_the_numbering() -> None:
    # The final Login Response carries StatSN, ExpCmdSN and MaxCmdSN (RFC 7143 11.13).
    numbering = InitiatorNumbering(exp_cmd_sn=7, max_cmd_sn=38, stat_sn=SERIAL_MASK)
    assert (numbering.cmd_sn, numbering.exp_cmd_sn, numbering.max_cmd_sn) == (7, 7, 38)
    assert numbering.exp_stat_sn == 0  # one past 2**32 - 1


def test_cmd_sn_wraps_at_2_32() -> None:
    numbering = InitiatorNumbering(exp_cmd_sn=SERIAL_MASK, max_cmd_sn=1, stat_sn=0)
    assert [numbering.take_cmd_sn() for _ in range(3)] == [SERIAL_MASK, 0, 1]
    assert numbering.cmd_sn == 2
    assert not numbering.can_send()  # 2 is past MaxCmdSN 1


def test_max_cmd_sn_one_below_exp_cmd_sn_closes_the_window() -> None:
    # RFC 7143 4.2.2.1: MaxCmdSN = ExpCmdSN - 1 is a zero window.
    numbering = InitiatorNumbering(exp_cmd_sn=0, max_cmd_sn=SERIAL_MASK, stat_sn=0)
    assert not numbering.can_send()
    assert numbering.update_window(0, 0)
    assert numbering.can_send()


def test_max_cmd_sn_below_exp_cmd_sn_minus_one_is_ignored() -> None:
    # RFC 7143 4.2.2.1: "If MaxCmdSN < ExpCmdSN - 1 ... the values are ignored".
    numbering = InitiatorNumbering(exp_cmd_sn=10, max_cmd_sn=20, stat_sn=0)
    assert not numbering.update_window(30, 28)
    assert (numbering.exp_cmd_sn, numbering.max_cmd_sn) == (10, 20)
    assert numbering.update_window(30, 29)  # exactly ExpCmdSN - 1: accepted (closed)
    assert (numbering.exp_cmd_sn, numbering.max_cmd_sn) == (30, 29)


def test_window_across_the_wrap() -> None:
    numbering = InitiatorNumbering(exp_cmd_sn=0xFFFFFFFE, max_cmd_sn=0xFFFFFFFE, stat_sn=0)
    numbering.take_cmd_sn()
    assert not numbering.can_send()
    assert numbering.update_window(0xFFFFFFFF, 3)  # the window now spans 2**32
    sent = []
    while numbering.can_send():
        sent.append(numbering.take_cmd_sn())
    assert sent == [0xFFFFFFFF, 0, 1, 2, 3]


def test_stale_values_never_move_the_window_back() -> None:
    numbering = InitiatorNumbering(exp_cmd_sn=100, max_cmd_sn=131, stat_sn=0)
    assert numbering.update_window(105, 140)
    assert not numbering.update_window(101, 132)  # an older PDU's view
    assert (numbering.exp_cmd_sn, numbering.max_cmd_sn) == (105, 140)
    assert not numbering.update_window(105, 140)  # nothing moved


@given(serials, windows, st.lists(st.tuples(st.integers(-70, 70), st.integers(-70, 70))))
def test_window_edges_only_advance(start: int, window: int, updates: list[tuple[int, int]]) -> None:
    numbering = InitiatorNumbering(start, sn_add(start, window - 1), 0)
    for exp_delta, max_delta in updates:
        before = (numbering.exp_cmd_sn, numbering.max_cmd_sn)
        exp_cmd_sn = (start + exp_delta) & SERIAL_MASK
        max_cmd_sn = (start + max_delta) & SERIAL_MASK
        moved = numbering.update_window(exp_cmd_sn, max_cmd_sn)
        after = (numbering.exp_cmd_sn, numbering.max_cmd_sn)
        assert moved == (after != before)
        assert sn_ge(after[0], before[0]) and sn_ge(after[1], before[1])
        if max_delta < exp_delta - 1:
            assert after == before


@given(serials, windows)
def test_exactly_the_window_may_be_sent(start: int, window: int) -> None:
    numbering = InitiatorNumbering(start, sn_add(start, window - 1), 0)
    sent = 0
    while numbering.can_send() and sent <= window:
        numbering.take_cmd_sn()
        sent += 1
    assert sent == window


@given(serials, st.lists(st.integers(-40, 40), max_size=30))
def test_exp_stat_sn_acknowledges_the_highest_status(start: int, deltas: list[int]) -> None:
    numbering = InitiatorNumbering(0, 0, start)
    highest = 0  # the login's StatSN: nothing below it moves ExpStatSN back
    for delta in deltas:
        numbering.status_seen((start + delta) & SERIAL_MASK)
        highest = max(highest, delta)
        assert numbering.exp_stat_sn == (start + highest + 1) & SERIAL_MASK


@given(serials, st.integers(0, 100))
def test_stat_sn_counts_only_what_takes_one(first: int, taken: int) -> None:
    stat_sn = StatSN(first)
    numbers = [stat_sn.take() for _ in range(taken)]
    assert numbers == [(first + n) & SERIAL_MASK for n in range(taken)]
    assert stat_sn.next == (first + taken) & SERIAL_MASK


_HALF = 1 << 31
# offsets from a base serial number: neighbours, the 2**31 edge, anything
_offsets = st.integers(-3, 3) | st.sampled_from([_HALF - 1, _HALF, _HALF + 1]) | serials


@given(serials, _offsets, _offsets, _offsets, _offsets, _offsets)
def test_inlined_serial_arithmetic_equals_seqnum(
    base: int, to_cmd: int, to_max: int, to_new_exp: int, to_new_max: int, to_stat: int
) -> None:
    """can_send, update_window and status_seen inline RFC 1982 arithmetic for speed; they
    decide exactly as seqnum's functions do, wrap and the 2**31 edge included."""
    exp_cmd_sn = base
    max_cmd_sn = (base + to_max) & SERIAL_MASK
    cmd_sn = (base + to_cmd) & SERIAL_MASK
    new_exp = (base + to_new_exp) & SERIAL_MASK
    new_max = (new_exp + to_new_max) & SERIAL_MASK
    sn = InitiatorNumbering(exp_cmd_sn, max_cmd_sn, base)
    sn.cmd_sn = cmd_sn
    assert sn.can_send() == in_window(cmd_sn, exp_cmd_sn, max_cmd_sn)
    ignored = sn_diff(new_max, new_exp) < -1
    exp_moves = not ignored and sn_gt(new_exp, exp_cmd_sn)
    max_moves = not ignored and sn_gt(new_max, max_cmd_sn)
    assert sn.update_window(new_exp, new_max) == (exp_moves or max_moves)
    assert sn.exp_cmd_sn == (new_exp if exp_moves else exp_cmd_sn)
    assert sn.max_cmd_sn == (new_max if max_moves else max_cmd_sn)
    before = sn.exp_stat_sn
    stat_sn = (base + to_stat) & SERIAL_MASK
    sn.status_seen(stat_sn)
    after = (stat_sn + 1) & SERIAL_MASK
    assert sn.exp_stat_sn == (after if sn_gt(after, before) else before)
