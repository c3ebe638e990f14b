"""The verify block format: every block proves its LBA, generation and integrity."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from initiator.verify import inspect_block, make_block


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
