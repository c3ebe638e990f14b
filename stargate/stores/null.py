"""NullStore: reads return zeros (or a repeating pattern), writes are discarded.

For benchmarking the transport alone (`stargate target --null`): no copy into a medium, no
allocation, no flush. Reads of one size share one preallocated buffer.
"""

from __future__ import annotations

from stargate.stores.base import Extent, check_range
from topology.vdisk import VDiskMeta


class NullStore:
    def __init__(self, meta: VDiskMeta, pattern: bytes = b"") -> None:
        self.meta = meta
        self._size = meta.size
        self._pattern = pattern
        self._reads: dict[int, bytes] = {}  # by length: the bytes a read of it returns

    @property
    def size(self) -> int:
        return self._size

    @property
    def block_size(self) -> int:
        return self.meta.block_size

    @property
    def allocated_bytes(self) -> int:
        return 0

    def read(self, offset: int, length: int) -> bytes:
        check_range(self._size, offset, length)
        data = self._reads.get(length)
        if data is None:
            if self._pattern:
                repeats = length // len(self._pattern) + 1
                data = (self._pattern * repeats)[:length]
            else:
                data = bytes(length)
            if len(self._reads) < 64:  # a handful of I/O sizes in any benchmark
                self._reads[length] = data
        return data

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        check_range(self._size, offset, len(memoryview(data).cast("B")))

    def sync(self) -> None:
        """Nothing is kept, so nothing to flush."""

    def punch_hole(self, offset: int, length: int) -> None:
        check_range(self._size, offset, length)

    def allocated_extents(self, offset: int, length: int) -> list[Extent]:
        check_range(self._size, offset, length)
        return [Extent(offset, length, True)]

    def resize(self, size: int) -> None:
        if size <= 0 or size % self.block_size:
            raise ValueError(f"size {size} must be a positive multiple of {self.block_size}")
        self._size = size
        self.meta.size = size

    def close(self) -> None:
        self._reads.clear()
