"""The checker on hand-made histories (each anomaly kind) and on generated valid ones."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.evidence import EpochEvidence
from cluster.jepsen.blocks import INITIAL, Decoded, Value, decode, encode
from cluster.jepsen.checker import AnomalyKind, check, check_evidence
from cluster.jepsen.history import EventType, Function, History, Key, Operation, operations

KEY = Key("vd-1", 7)
_ids = iter(range(10**9))


def write(client: int, seq: int, start: float, end: float | None, outcome: str = "ok") -> Operation:
    return Operation(next(_ids), f"c{client}", Function.WRITE, KEY, Value(client, seq),
                     EventType(outcome), start, end)  # fmt: skip


def read(
    value: Value | None, start: float, end: float, decoded: Decoded = Decoded.VALUE
) -> Operation:
    return Operation(next(_ids), "reader", Function.READ, KEY, value, EventType.OK, start, end,
                     decoded)  # fmt: skip


def kinds(ops: list[Operation]) -> list[AnomalyKind]:
    return [anomaly.kind for anomaly in check(ops)]


def test_a_plain_register_history_is_clean() -> None:
    ops = [
        read(INITIAL, 0, 1),
        write(1, 1, 2, 3),
        read(Value(1, 1), 4, 5),
        write(1, 2, 6, 8),
        read(Value(1, 1), 6.5, 7),  # concurrent with the write: either value is fine
        read(Value(1, 2), 7, 9),
        write(2, 1, 10, None, "info"),  # unknown outcome: may land any time later
        read(Value(1, 2), 11, 12),
        read(Value(2, 1), 20, 21),
        write(2, 2, 22, 23, "fail"),
        read(Value(2, 1), 24, 25),
    ]
    assert check(ops) == []


def test_lost_write() -> None:
    ops = [write(1, 1, 0, 1), write(1, 2, 2, 3), read(Value(1, 1), 4, 5)]
    assert kinds(ops) == [AnomalyKind.LOST_WRITE]


def test_an_acknowledged_write_lost_to_the_initial_value() -> None:
    assert kinds([write(1, 1, 0, 1), read(INITIAL, 2, 3)]) == [AnomalyKind.LOST_WRITE]


def test_older_value_reappears_after_a_newer_one_was_read() -> None:
    # w2 was never acknowledged (info), but once read, w1 (done before) cannot come back.
    ops = [
        write(1, 1, 0, 1),
        write(1, 2, 2, None, "info"),
        read(Value(1, 2), 3, 4),
        read(Value(1, 1), 5, 6),
    ]
    assert kinds(ops) == [AnomalyKind.REAPPEARED]


def test_future_read() -> None:
    assert kinds([read(Value(1, 1), 0, 1), write(1, 1, 2, 3)]) == [AnomalyKind.FUTURE_READ]


def test_unknown_value_and_failed_write() -> None:
    assert kinds([read(Value(9, 9), 0, 1)]) == [AnomalyKind.UNKNOWN_VALUE]
    ops = [write(1, 1, 0, 1, "fail"), read(Value(1, 1), 2, 3)]
    assert kinds(ops) == [AnomalyKind.FAILED_WRITE_READ]


def test_corrupt_and_misdirected_sectors() -> None:
    sector = bytearray(encode("vd-1", 7, Value(1, 1)))
    assert decode("vd-1", 7, sector).value == Value(1, 1)
    assert decode("vd-1", 8, sector).decoded is Decoded.MISDIRECTED
    assert decode("vd-2", 7, sector).decoded is Decoded.MISDIRECTED
    sector[100] ^= 1
    torn = decode("vd-1", 7, sector)
    assert torn.decoded is Decoded.CORRUPT
    assert decode("vd-1", 7, bytes(512)).value == INITIAL
    ops = [
        write(1, 1, 0, 1),
        read(None, 2, 3, Decoded.CORRUPT),
        read(Value(1, 1), 4, 5, Decoded.MISDIRECTED),
    ]
    assert kinds(ops) == [AnomalyKind.CORRUPT, AnomalyKind.MISDIRECTED]


def test_duplicate_write_values_make_the_history_invalid() -> None:
    assert kinds([write(1, 1, 0, 1), write(1, 1, 2, 3)]) == [AnomalyKind.DUPLICATE_WRITE]


def test_the_stale_parked_write_of_a_resumed_cvm() -> None:
    """The known anomaly's shape: w1 acknowledged (after a retry elsewhere), w2 acknowledged,
    then the stopped CVM resumes and executes its parked copy of w1."""
    ops = [
        write(1, 1, 0, 5),
        write(1, 2, 6, 7),
        read(Value(1, 2), 8, 9),
        read(Value(1, 1), 10, 11),
    ]
    assert kinds(ops) == [AnomalyKind.LOST_WRITE]


def test_history_events_pair_into_operations() -> None:
    history = History()
    write_op = history.invoke("c1", Function.WRITE, KEY, Value(1, 1))
    read_op = history.invoke("c2", Function.READ, KEY)
    lost_op = history.invoke("c1", Function.WRITE, KEY, Value(1, 2))
    history.complete(write_op, EventType.OK)
    history.complete(read_op, EventType.OK, value=Value(1, 1), decoded=Decoded.VALUE)
    history.nemesis("kill node 1")
    paired = {op.op: op for op in operations(history.events)}
    assert paired[write_op].outcome is EventType.OK and paired[write_op].completed is not None
    assert paired[read_op].value == Value(1, 1)
    assert paired[lost_op].outcome is EventType.INFO and paired[lost_op].completed is None
    assert check(paired.values()) == []


def _evidence(node: int, epoch: int, claimed: float, writes: int, last: float) -> EpochEvidence:
    return EpochEvidence("vd-1", node, epoch, claimed, writes, last)


def test_evidence_one_writer_per_epoch_in_order_is_clean() -> None:
    slots = [_evidence(1, 1, 0, 10, 4), _evidence(2, 2, 5, 3, 9), _evidence(1, 3, 10, 0, 0)]
    assert check_evidence(slots) == []


def test_evidence_two_writers_in_one_epoch() -> None:
    slots = [_evidence(1, 4, 0, 1, 1), _evidence(2, 4, 0.5, 1, 2)]
    assert [a.kind for a in check_evidence(slots)] == [AnomalyKind.SPLIT_EPOCH]


def test_evidence_write_after_a_newer_claim() -> None:
    slots = [_evidence(1, 1, 0, 5, 7.5), _evidence(2, 2, 6, 2, 8)]
    assert [a.kind for a in check_evidence(slots)] == [AnomalyKind.STALE_EPOCH_WRITE]


# -- generated valid histories -------------------------------------------------------------

_OUTCOMES = ["ok", "ok", "ok", "info-applied", "info-lost", "fail"]


@st.composite
def linearizable_histories(draw: st.DrawFn) -> list[Operation]:
    """Operations on two registers with a linearization point inside each interval (an
    info write's may be any time after its start, or never): valid by construction."""
    count = draw(st.integers(1, 40))
    planned: list[tuple[float, Operation | None, Key, Value | None, Operation]] = []
    for index in range(count):
        key = Key("vd", draw(st.integers(0, 1)))
        start = draw(st.floats(0, 50, allow_nan=False))
        length = draw(st.floats(0.01, 10, allow_nan=False))
        fraction = draw(st.floats(0.01, 0.99))
        point = start + fraction * length
        if draw(st.booleans()):
            outcome = draw(st.sampled_from(_OUTCOMES))
            end = None if outcome.startswith("info") else start + length
            if outcome == "info-applied":
                point = start + fraction * length * 5
            value = Value(1, index + 1)
            op = Operation(index, "w", Function.WRITE, key, value,
                           EventType("info" if end is None else outcome), start, end)  # fmt: skip
            applies = outcome in ("ok", "info-applied")
            planned.append((point if applies else math.inf, op, key, value, op))
        else:
            placeholder = Operation(index, "r", Function.READ, key, None, EventType.OK, start,
                                    start + length)  # fmt: skip
            planned.append((point, None, key, None, placeholder))
    state: dict[Key, Value] = {}
    result = []
    for point, write_op, key, written, op in sorted(planned, key=lambda p: p[0]):
        if write_op is not None:
            if point < math.inf:
                assert written is not None
                state[key] = written
            result.append(op)
        else:
            seen = state.get(key, INITIAL)
            result.append(Operation(op.op, op.process, op.f, key, seen, EventType.OK,
                                    op.invoked, op.completed, Decoded.VALUE))  # fmt: skip
    return result


@settings(max_examples=300, deadline=None)
@given(linearizable_histories())
def test_valid_histories_pass(ops: list[Operation]) -> None:
    assert check(ops) == []
