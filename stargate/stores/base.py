"""The BlockStore protocol: what a logical unit needs from the bytes behind a vDisk."""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable


class Extent(NamedTuple):
    """A byte range of the store and whether it is mapped (holds data) or a hole."""

    offset: int
    length: int
    mapped: bool


@runtime_checkable
class BlockStore(Protocol):
    """Byte-addressed storage of one vDisk.

    Offsets and lengths are in bytes; the logical unit only issues block-aligned requests.
    ``read`` of a hole or beyond written data returns zeros (thin provisioning: LBPRZ).
    ``sync`` may run in a worker thread while the event loop keeps calling read/write.
    """

    @property
    def size(self) -> int: ...

    @property
    def block_size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes: ...

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None: ...

    def sync(self) -> None: ...

    def punch_hole(self, offset: int, length: int) -> None: ...

    def allocated_extents(self, offset: int, length: int) -> list[Extent]: ...

    def resize(self, size: int) -> None: ...

    def close(self) -> None: ...


def check_range(store_size: int, offset: int, length: int) -> None:
    """Reject a byte range that is negative or runs past the end of the store."""
    if offset < 0 or length < 0 or offset + length > store_size:
        raise ValueError(f"range {offset}+{length} outside store of {store_size} bytes")


def coalesce(extents: list[Extent]) -> list[Extent]:
    """Merge adjacent extents with the same mapping state."""
    merged: list[Extent] = []
    for extent in extents:
        if extent.length == 0:
            continue
        if (
            merged
            and merged[-1].mapped == extent.mapped
            and (merged[-1].offset + merged[-1].length == extent.offset)
        ):
            last = merged[-1]
            merged[-1] = Extent(last.offset, last.length + extent.length, last.mapped)
        else:
            merged.append(extent)
    return merged
