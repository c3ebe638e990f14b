"""Data PDUs of the full feature phase: one segmentation (iscsicore.fullfeature.segments)
and one sequence checker (iscsicore.fullfeature.sequence), used for Data-In and Data-Out.
Segmenting then checking round-trips; every reordering, gap, duplicate and overrun is
refused."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from iscsicore.fullfeature.segments import Segment, segments
from iscsicore.fullfeature.sequence import DataSequence, SequenceFault
from iscsicore.pdu import RESERVED_TAG

starts = st.integers(0, 1 << 20)
lengths = st.integers(1, 1 << 20)
# RFC 7143 12.12 and 13.13: MaxRecvDataSegmentLength and MaxBurstLength are at least 512.
max_segments = st.integers(512, 1 << 17)
bursts = st.integers(512, 1 << 18)
# A few dozen PDUs at most, for the tests that reorder them.
short_lengths = st.integers(1, 1 << 14)
small_segments = st.integers(256, 4096)


def _plan(start: int, length: int, max_segment: int, burst: int) -> list[Segment]:
    return list(segments(start, start + length, max_segment, burst))


def _bursts(plan: list[Segment]) -> list[list[Segment]]:
    """The PDUs grouped by burst: each group ends with the F bit."""
    groups: list[list[Segment]] = [[]]
    for segment in plan:
        groups[-1].append(segment)
        if segment.final and segment is not plan[-1]:
            groups.append([])
    return groups


def _feed(sequence: DataSequence, plan: list[Segment]) -> SequenceFault | None:
    for segment in plan:
        fault = sequence.accept(*segment)
        if fault is not None:
            return fault
    return None


@given(starts, lengths, max_segments, bursts)
def test_segments_cover_the_buffer_within_segment_and_burst(
    start: int, length: int, max_segment: int, burst: int
) -> None:
    plan = _plan(start, length, max_segment, burst)
    assert [s.data_sn for s in plan] == list(range(len(plan)))
    offset = start
    for segment in plan:
        assert segment.offset == offset
        assert 0 < segment.length <= max_segment
        # Never across a burst boundary; F exactly on the last PDU of each burst.
        first_burst = (segment.offset - start) // burst
        last_burst = (segment.offset + segment.length - 1 - start) // burst
        assert first_burst == last_burst
        ends_burst = (segment.offset + segment.length - start) % burst == 0
        assert segment.final == (ends_burst or segment is plan[-1])
        offset += segment.length
    assert offset == start + length


@given(starts, lengths, max_segments, bursts)
def test_data_in_round_trip(start: int, length: int, max_segment: int, burst: int) -> None:
    # Data-In: one DataSN sequence for the whole command, F closing each burst.
    plan = _plan(start, length, max_segment, burst)
    sequence = DataSequence(RESERVED_TAG, start, start + length, final_at_end=False)
    assert _feed(sequence, plan) is None
    assert sequence.next_offset == start + length
    assert sequence.next_data_sn == len(plan)


@given(starts, lengths, max_segments, bursts)
def test_data_out_round_trip(start: int, length: int, max_segment: int, burst: int) -> None:
    # Data-Out: each burst is a sequence of its own (one R2T), DataSN from 0, F at its end.
    offset = start
    for group in _bursts(_plan(start, length, max_segment, burst)):
        end = group[-1].offset + group[-1].length
        renumbered = [s._replace(data_sn=n) for n, s in enumerate(group)]
        sequence = DataSequence(1, offset, end)
        assert _feed(sequence, renumbered) is None
        assert sequence.next_offset == end
        offset = end
    assert offset == start + length


@given(starts, lengths, max_segments)
def test_one_burst_sets_f_only_on_the_last_pdu(start: int, length: int, max_segment: int) -> None:
    # The initiator's Data-Out for one R2T (or its unsolicited data): burst = the length.
    plan = _plan(start, length, max_segment, length)
    assert [s.final for s in plan] == [False] * (len(plan) - 1) + [True]
    assert _feed(DataSequence(7, start, start + length), plan) is None


@pytest.mark.parametrize("final_at_end", [True, False])
@given(data=st.data(), start=starts, length=short_lengths, max_segment=small_segments)
def test_any_reordering_is_refused(
    final_at_end: bool, data: st.DataObject, start: int, length: int, max_segment: int
) -> None:
    plan = _plan(start, length, max_segment, length)
    assume(len(plan) > 1)
    order = data.draw(st.permutations(plan))
    assume(order != plan)
    sequence = DataSequence(RESERVED_TAG, start, start + length, final_at_end=final_at_end)
    assert _feed(sequence, order) in (SequenceFault.DATA_SN, SequenceFault.OFFSET)


@pytest.mark.parametrize("final_at_end", [True, False])
@given(data=st.data(), start=starts, length=short_lengths, max_segment=small_segments)
def test_a_gap_or_a_duplicate_is_refused(
    final_at_end: bool, data: st.DataObject, start: int, length: int, max_segment: int
) -> None:
    plan = _plan(start, length, max_segment, length)
    assume(len(plan) > 1)
    index = data.draw(st.integers(0, len(plan) - 2))
    with_gap = plan[:index] + plan[index + 1 :]
    with_duplicate = plan[: index + 1] + plan[index:]
    for received in (with_gap, with_duplicate):
        sequence = DataSequence(RESERVED_TAG, start, start + length, final_at_end=final_at_end)
        assert _feed(sequence, received) is SequenceFault.DATA_SN


@given(data=st.data(), start=starts, length=short_lengths, max_segment=small_segments)
def test_a_shifted_offset_is_refused(
    data: st.DataObject, start: int, length: int, max_segment: int
) -> None:
    plan = _plan(start, length, max_segment, length)
    index = data.draw(st.integers(0, len(plan) - 1))
    shift = data.draw(st.integers(-start, 1 << 20).filter(lambda n: n != 0))
    tampered = list(plan)
    shifted = tampered[index] = plan[index]._replace(offset=plan[index].offset + shift)
    fits = shifted.offset + shifted.length <= start + length
    expected = SequenceFault.OFFSET if fits else SequenceFault.OVERRUN
    assert _feed(DataSequence(1, start, start + length), tampered) is expected


@pytest.mark.parametrize("final_at_end", [True, False])
@given(data=st.data(), start=starts, length=short_lengths, max_segment=small_segments)
def test_an_overrun_is_refused(
    final_at_end: bool, data: st.DataObject, start: int, length: int, max_segment: int
) -> None:
    plan = _plan(start, length, max_segment, length)
    extra = data.draw(st.integers(1, 1 << 16))
    last = plan[-1]
    overrun = [*plan[:-1], last._replace(length=last.length + extra)]
    sequence = DataSequence(1, start, start + length, final_at_end=final_at_end)
    assert _feed(sequence, overrun) is SequenceFault.OVERRUN
    # One more PDU after a complete sequence overruns it too.
    complete = DataSequence(1, start, start + length, final_at_end=final_at_end)
    after = Segment(len(plan), start + length, extra, True)
    assert _feed(complete, [*plan, after]) is SequenceFault.OVERRUN


@given(data=st.data(), start=starts, length=short_lengths, max_segment=small_segments)
def test_data_out_f_bit_before_the_end_is_refused_data_in_not(
    data: st.DataObject, start: int, length: int, max_segment: int
) -> None:
    plan = _plan(start, length, max_segment, length)
    assume(len(plan) > 1)
    index = data.draw(st.integers(0, len(plan) - 2))
    early = list(plan)
    early[index] = plan[index]._replace(final=True)
    assert _feed(DataSequence(1, start, start + length), early) is SequenceFault.EARLY_FINAL
    # In Data-In, F closes a burst and a status may end the data short: not checked.
    data_in = DataSequence(RESERVED_TAG, start, start + length, final_at_end=False)
    assert _feed(data_in, early) is None


def test_a_refused_pdu_leaves_the_sequence_where_it_was() -> None:
    sequence = DataSequence(1, 0, 8192)
    assert sequence.accept(0, 0, 4096, False) is None
    assert sequence.accept(2, 4096, 4096, True) is SequenceFault.DATA_SN
    assert sequence.accept(1, 4096, 8192, True) is SequenceFault.OVERRUN
    assert (sequence.next_data_sn, sequence.next_offset) == (1, 4096)
    assert sequence.accept(1, 4096, 4096, True) is None


def test_rfc_example_data_in_bursts() -> None:
    # 20 KiB read, MaxRecvDataSegmentLength 8 KiB, MaxBurstLength 12 KiB: the second PDU
    # stops at the burst boundary and carries F; DataSN runs on across bursts.
    assert list(segments(0, 20480, 8192, 12288)) == [
        Segment(0, 0, 8192, False),
        Segment(1, 8192, 4096, True),
        Segment(2, 12288, 8192, True),
    ]


@pytest.mark.parametrize(
    ("start", "end", "max_segment", "burst"), [(0, 10, 0, 10), (0, 10, 10, 0), (5, 4, 1, 1)]
)
def test_impossible_splits_raise(start: int, end: int, max_segment: int, burst: int) -> None:
    with pytest.raises(ValueError, match="cannot split"):
        list(segments(start, end, max_segment, burst))


def test_nothing_to_send_is_no_pdu() -> None:
    assert list(segments(4096, 4096, 512, 512)) == []
