"""The CmdSN window: in-order delivery of non-immediate PDUs, held gaps, silent drops."""

from __future__ import annotations

from typing import TypeVar

from hypothesis import given
from hypothesis import strategies as st

from iscsicore.cmdsn import Arrival, CmdSNWindow
from iscsicore.seqnum import SERIAL_MASK

serials = st.integers(0, SERIAL_MASK)
windows = st.integers(1, 32)
T = TypeVar("T")


def _drive(window: CmdSNWindow[T], cmd_sn: int, immediate: bool, item: T) -> list[T]:
    """What a connection handles for one arrival: the PDU (if delivered), then every held
    PDU whose turn came."""
    handled: list[T] = []
    if window.arrive(cmd_sn, immediate=immediate, item=item) is Arrival.DELIVER:
        handled.append(item)
    while (ready := window.pop_ready()) is not None:
        handled.append(ready)
    return handled


@given(serials, st.permutations(list(range(16))))
def test_any_arrival_order_is_delivered_in_cmd_sn_order(start: int, order: list[int]) -> None:
    window: CmdSNWindow[int] = CmdSNWindow(start, (start + 15) & SERIAL_MASK)
    handled: list[int] = []
    for offset in order:
        handled += _drive(window, (start + offset) & SERIAL_MASK, False, offset)
        # Delivered: exactly the contiguous prefix of what arrived; ExpCmdSN right after it.
        arrived = set(order[: order.index(offset) + 1])
        prefix = 0
        while prefix in arrived:
            prefix += 1
        assert handled == list(range(prefix))
        assert window.exp_cmd_sn == (start + prefix) & SERIAL_MASK
        assert window.held.keys() == {(start + n) & SERIAL_MASK for n in arrived - set(handled)}
    assert handled == list(range(16)) and not window.held


@given(
    serials,
    windows,
    st.lists(st.tuples(st.integers(-40, 72), st.booleans()), max_size=60),
)
def test_against_a_model(start: int, size: int, arrivals: list[tuple[int, bool]]) -> None:
    """Random CmdSNs (in the window, beyond it, before it, repeated), some immediate."""
    window: CmdSNWindow[int] = CmdSNWindow(start, (start + size - 1) & SERIAL_MASK)
    expected = 0  # offset of ExpCmdSN from start: the window stays [expected, size - 1]
    held: dict[int, int] = {}
    for index, (offset, immediate) in enumerate(arrivals):
        handled = _drive(window, (start + offset) & SERIAL_MASK, immediate, index)
        model: list[int] = []
        if immediate:
            model.append(index)
        elif offset == expected and expected < size:
            model.append(index)
            expected += 1
            while expected in held:
                model.append(held.pop(expected))
                expected += 1
        elif expected < offset < size and offset not in held:
            held[offset] = index
        assert handled == model
        assert window.exp_cmd_sn == (start + expected) & SERIAL_MASK
        assert len(window.held) == len(held) <= size - 1  # bounded by the window
        assert window.max_cmd_sn == (start + size - 1) & SERIAL_MASK


@given(serials, st.integers(2, 32), st.data())
def test_consider_received_fills_a_gap(start: int, size: int, data: st.DataObject) -> None:
    """ABORT TASK of a command that never came: its CmdSN counts as received, the commands
    held behind it run; one held there itself is displaced and never runs."""
    window: CmdSNWindow[str] = CmdSNWindow(start, (start + size - 1) & SERIAL_MASK)
    gap = data.draw(st.integers(0, size - 2))
    for offset in range(size):
        if offset != gap:
            _drive(window, (start + offset) & SERIAL_MASK, False, f"c{offset}")
    assert window.exp_cmd_sn == (start + gap) & SERIAL_MASK
    assert window.consider_received((start + size + 5) & SERIAL_MASK) is None  # outside
    assert window.exp_cmd_sn == (start + gap) & SERIAL_MASK
    assert window.consider_received((start + gap + 1) & SERIAL_MASK) == f"c{gap + 1}"
    assert window.consider_received((start + gap) & SERIAL_MASK) is None
    released = []
    while (ready := window.pop_ready()) is not None:
        released.append(ready)
    assert released == [f"c{n}" for n in range(gap + 2, size)]
    assert window.exp_cmd_sn == (start + size) & SERIAL_MASK and not window.held


def test_a_closed_window_takes_nothing_but_immediate_commands() -> None:
    window: CmdSNWindow[str] = CmdSNWindow(10, 9)  # MaxCmdSN = ExpCmdSN - 1
    assert window.arrive(10, immediate=False, item="a") is Arrival.DROPPED
    assert window.arrive(11, immediate=False, item="b") is Arrival.DROPPED
    assert window.arrive(10, immediate=True, item="c") is Arrival.DELIVER
    assert window.exp_cmd_sn == 10 and not window.held


def test_drop_held_forgets_everything_held() -> None:
    window: CmdSNWindow[str] = CmdSNWindow(0xFFFFFFFF, 6)  # wraps
    assert window.arrive(1, immediate=False, item="x") is Arrival.HELD
    assert window.arrive(1, immediate=False, item="dup") is Arrival.DROPPED
    window.consider_received(3)
    assert window.drop_held() == ["x"]
    assert not window.held and window.pop_ready() is None


@given(serials, st.lists(st.integers(0, 64), max_size=20))
def test_advertised_max_cmd_sn_never_moves_back(start: int, shares: list[int]) -> None:
    window: CmdSNWindow[int] = CmdSNWindow(start)
    previous = window.max_cmd_sn
    for share in shares:
        advertised = window.advertise(share)
        assert (advertised - previous) & SERIAL_MASK < 1 << 31
        previous = advertised


@given(serials, st.integers(2, 32), st.data())
def test_a_task_set_function_ends_what_was_sent_before_it(
    start: int, size: int, data: st.DataObject
) -> None:
    """An immediate ABORT TASK SET with CmdSN `at`: every CmdSN before it counts as
    received (those held there are dropped); the ones held after it are delivered."""
    window: CmdSNWindow[int] = CmdSNWindow(start, (start + size - 1) & SERIAL_MASK)
    sent = data.draw(st.sets(st.integers(1, size - 1)))  # CmdSN `start` is lost
    for offset in sorted(sent):
        assert _drive(window, (start + offset) & SERIAL_MASK, False, offset) == []
    at = data.draw(st.integers(0, size))
    dropped = window.consider_received_before((start + at) & SERIAL_MASK)
    assert sorted(dropped) == sorted(n for n in sent if n < at)
    released = []
    while (ready := window.pop_ready()) is not None:
        released.append(ready)
    after = sorted(n for n in sent if n >= at)
    contiguous = [n for i, n in enumerate(after) if after[: i + 1] == list(range(at, n + 1))]
    assert released == contiguous
    assert window.exp_cmd_sn == (start + at + len(contiguous)) & SERIAL_MASK
