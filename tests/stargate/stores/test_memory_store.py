"""MemoryStore: thin allocation, punch, extents, resize."""

from __future__ import annotations

import pytest

from stargate.stores import Extent, MemoryStore
from stargate.stores.memory import CHUNK_SIZE
from topology.vdisk import VDiskMeta


def _store(size: int = 4 * CHUNK_SIZE) -> MemoryStore:
    return MemoryStore(VDiskMeta("mem", size))


def test_four_gib_costs_nothing_until_written() -> None:
    store = _store(4 << 30)
    assert store.allocated_bytes == 0
    assert store.read((4 << 30) - 512, 512) == bytes(512)
    store.write(3 << 30, b"x" * 4096)
    assert store.allocated_bytes == CHUNK_SIZE
    assert store.read(3 << 30, 4096) == b"x" * 4096


def test_write_across_chunks() -> None:
    store = _store()
    data = bytes(range(256)) * 1024  # 256 KiB spanning all chunks from an odd offset
    store.write(1000, data[: 3 * CHUNK_SIZE])
    assert store.read(1000, 3 * CHUNK_SIZE) == data[: 3 * CHUNK_SIZE]
    assert store.read(0, 1000) == bytes(1000)


def test_punch_frees_whole_chunks_and_zeroes_partial_ones() -> None:
    store = _store()
    store.write(0, b"\x01" * (4 * CHUNK_SIZE))
    store.punch_hole(512, 2 * CHUNK_SIZE)
    assert store.read(0, 512) == b"\x01" * 512
    assert store.read(512, 2 * CHUNK_SIZE) == bytes(2 * CHUNK_SIZE)
    assert store.allocated_bytes == 3 * CHUNK_SIZE  # chunk 1 freed, 0 and 2 partial
    store.punch_hole(0, 512)
    assert store.allocated_bytes == 2 * CHUNK_SIZE  # chunk 0 became all zero: dropped


def test_allocated_extents_are_coalesced_and_clipped() -> None:
    store = _store()
    store.write(CHUNK_SIZE, b"a")
    store.write(2 * CHUNK_SIZE, b"b")
    assert store.allocated_extents(512, 4 * CHUNK_SIZE - 512) == [
        Extent(512, CHUNK_SIZE - 512, False),
        Extent(CHUNK_SIZE, 2 * CHUNK_SIZE, True),
        Extent(3 * CHUNK_SIZE, CHUNK_SIZE, False),
    ]


def test_out_of_range_is_refused() -> None:
    store = _store()
    with pytest.raises(ValueError):
        store.read(4 * CHUNK_SIZE - 1, 2)
    with pytest.raises(ValueError):
        store.write(-1, b"x")


def test_shrink_then_grow_reads_zeros() -> None:
    store = _store()
    store.write(0, b"\x07" * (4 * CHUNK_SIZE))
    store.resize(CHUNK_SIZE + 512)
    store.resize(4 * CHUNK_SIZE)
    assert store.read(CHUNK_SIZE, 512) == b"\x07" * 512
    assert store.read(CHUNK_SIZE + 512, 3 * CHUNK_SIZE - 512) == bytes(3 * CHUNK_SIZE - 512)
