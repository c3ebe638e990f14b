"""MemoryStore: a thin-provisioned in-memory vDisk (chunks allocated on first write)."""

from __future__ import annotations

import threading

from stargate.stores.base import Extent, check_range, coalesce
from topology.vdisk import VDiskMeta

CHUNK_SIZE = 64 * 1024
_ZERO_CHUNK = bytes(CHUNK_SIZE)


class MemoryStore:
    """A dict of 64 KiB chunks: a 4 GiB vDisk costs nothing until it is written.

    A chunk that a punch leaves all-zero is dropped, so UNMAP really frees memory.
    """

    def __init__(self, meta: VDiskMeta) -> None:
        self.meta = meta
        self._size = meta.size
        self._chunks: dict[int, bytearray] = {}
        self._lock = threading.Lock()  # sync()/close() may come from a worker thread

    @property
    def size(self) -> int:
        return self._size

    @property
    def block_size(self) -> int:
        return self.meta.block_size

    @property
    def allocated_bytes(self) -> int:
        return len(self._chunks) * CHUNK_SIZE

    def _spans(self, offset: int, length: int) -> list[tuple[int, int, int]]:
        """(chunk index, start within chunk, length) pieces covering a byte range."""
        spans = []
        end = offset + length
        while offset < end:
            index, start = divmod(offset, CHUNK_SIZE)
            piece = min(CHUNK_SIZE - start, end - offset)
            spans.append((index, start, piece))
            offset += piece
        return spans

    def read(self, offset: int, length: int) -> bytes:
        check_range(self._size, offset, length)
        index, start = divmod(offset, CHUNK_SIZE)
        if start + length <= CHUNK_SIZE:  # the common case: inside one chunk
            chunk = self._chunks.get(index)
            return bytes(length) if chunk is None else bytes(chunk[start : start + length])
        out = bytearray(length)
        position = 0
        for index, start, piece in self._spans(offset, length):
            chunk = self._chunks.get(index)
            if chunk is not None:
                out[position : position + piece] = chunk[start : start + piece]
            position += piece
        return bytes(out)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        check_range(self._size, offset, len(view))
        index, start = divmod(offset, CHUNK_SIZE)
        if start + len(view) <= CHUNK_SIZE:  # the common case: inside one chunk
            chunk = self._chunks.get(index)
            if chunk is None:
                chunk = self._chunks[index] = bytearray(CHUNK_SIZE)
            chunk[start : start + len(view)] = view
            return
        position = 0
        for index, start, piece in self._spans(offset, len(view)):
            chunk = self._chunks.get(index)
            if chunk is None:
                chunk = self._chunks[index] = bytearray(CHUNK_SIZE)
            chunk[start : start + piece] = view[position : position + piece]
            position += piece

    def sync(self) -> None:
        """Nothing to flush: memory is the medium."""

    def punch_hole(self, offset: int, length: int) -> None:
        check_range(self._size, offset, length)
        for index, start, piece in self._spans(offset, length):
            chunk = self._chunks.get(index)
            if chunk is None:
                continue
            if piece == CHUNK_SIZE:
                del self._chunks[index]
                continue
            chunk[start : start + piece] = _ZERO_CHUNK[:piece]
            if chunk == _ZERO_CHUNK:
                del self._chunks[index]

    def allocated_extents(self, offset: int, length: int) -> list[Extent]:
        check_range(self._size, offset, length)
        extents = [
            Extent(index * CHUNK_SIZE + start, piece, index in self._chunks)
            for index, start, piece in self._spans(offset, length)
        ]
        return coalesce(extents)

    def resize(self, size: int) -> None:
        if size <= 0 or size % self.block_size:
            raise ValueError(f"size {size} must be a positive multiple of {self.block_size}")
        if size < self._size:
            # Drop whole chunks past the end and zero the tail of the last partial one so a
            # later grow reads zeros there.
            last_index, tail = divmod(size, CHUNK_SIZE)
            for index in [i for i in self._chunks if i * CHUNK_SIZE >= size]:
                del self._chunks[index]
            if tail and last_index in self._chunks:
                self._chunks[last_index][tail:] = _ZERO_CHUNK[tail:]
        self._size = size
        self.meta.size = size

    def close(self) -> None:
        with self._lock:
            self._chunks.clear()
