"""The verify block format: every block proves its LBA, generation and integrity."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from initiator.verify import Mismatch, VerifyReport, inspect_block, make_block, split_region


@given(
    block_size=st.sampled_from([512, 4096]),
    lba=st.integers(0, 2**48),
    generation=st.integers(1, 2**40),
    run_id=st.integers(0, 2**63 - 1),
)
def test_block_round_trips(block_size: int, lba: int, generation: int, run_id: int) -> None:
    block = make_block(block_size, lba, generation, run_id)
    assert len(block) == block_size
    check = inspect_block(block)
    assert check.ok_crc
    assert (check.lba, check.generation, check.run_id) == (lba, generation, run_id)


@given(position=st.integers(0, 511), flip=st.integers(1, 255))
def test_any_corruption_is_detected(position: int, flip: int) -> None:
    block = bytearray(make_block(512, 9, 3, 77))
    block[position] ^= flip
    assert not inspect_block(block).ok_crc


def test_zeroed_block_is_not_a_verify_block() -> None:
    assert not inspect_block(bytes(512)).ok_crc


@given(st.integers(1, 1 << 20), st.integers(1, 8))
def test_split_region_gives_disjoint_whole_chunk_slices(blocks: int, parts: int) -> None:
    slices = split_region(blocks, parts)
    assert len(slices) == parts
    for (first, size), (next_first, _) in itertools.pairwise(slices):
        assert first + size <= next_first  # disjoint, in order
    assert all(size >= 8 and size % 8 == 0 for _, size in slices)
    if blocks >= 8 * parts:  # room for a chunk each: the slices stay inside the region
        assert slices[-1][0] + slices[-1][1] <= blocks


def test_reports_of_a_disks_sessions_add_up() -> None:
    first = VerifyReport(seconds=2.0, writes=3, blocks_verified=10, longest_pause_s=0.5)
    second = VerifyReport(seconds=3.0, writes=4, mismatch_count=1, errors=2, last_error="x")
    second.mismatches.append(Mismatch(7, 2, "generation 1"))
    first.add(second)
    assert (first.writes, first.blocks_verified, first.mismatch_count, first.errors) == (
        7, 10, 1, 2,
    )  # fmt: skip
    assert (first.seconds, first.longest_pause_s, first.last_error) == (3.0, 0.5, "x")
    assert [str(m) for m in first.mismatches] == ["LBA 7: expected generation 2, generation 1"]
    assert not first.ok
