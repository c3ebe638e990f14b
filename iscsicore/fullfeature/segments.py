"""Splitting a buffer into data PDUs (RFC 7143 sections 4.2.4.1, 11.7, 11.8): the target's
Data-In and the initiator's Data-Out alike.

Each PDU carries at most the receiver's MaxRecvDataSegmentLength; none crosses a burst
boundary (MaxBurstLength for Data-In; a Data-Out sequence is one burst, as long as the R2T
or the unsolicited data asks); the last PDU of each burst has the F bit. DataSN counts the
PDUs from ``first_data_sn``: for Data-In across the whole command, for Data-Out from 0 in
each sequence.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple


class Segment(NamedTuple):
    data_sn: int
    offset: int  # BufferOffset
    length: int
    final: bool  # the F bit


def segments(
    start: int, end: int, max_segment: int, burst: int, *, first_data_sn: int = 0
) -> Iterator[Segment]:
    """The PDUs for the bytes ``start .. end`` of a buffer, bursts counted from ``start``."""
    if max_segment <= 0 or burst <= 0 or not 0 <= start <= end:
        raise ValueError(f"cannot split {start}..{end} by {max_segment} in bursts of {burst}")
    data_sn = first_data_sn
    offset = start
    while offset < end:
        burst_left = burst - (offset - start) % burst
        length = min(max_segment, end - offset, burst_left)
        yield Segment(data_sn, offset, length, length == burst_left or offset + length == end)
        offset += length
        data_sn += 1
