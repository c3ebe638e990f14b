"""FileStore: a vDisk as a sparse file DIR/<id>.img, metadata in DIR/<id>.json."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import threading
from pathlib import Path

from stargate.stores.base import Extent, check_range, coalesce
from topology.vdisk import VDiskMeta

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_ZERO_CHUNK = bytes(1 << 20)


def _load_fallocate() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fallocate = libc.fallocate
    except (OSError, AttributeError):
        return None
    fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong)
    fallocate.restype = ctypes.c_int
    return fallocate


_fallocate = _load_fallocate()


class FileStore:
    """Block storage in a sparse file: os.pread/os.pwrite on one descriptor.

    ``sync`` (fdatasync) is meant to run in a worker thread while the event loop keeps
    reading and writing through the same descriptor; the kernel serialises those safely.
    Only close() must not race a sync, so the two share a lock.
    """

    def __init__(self, path: Path, meta: VDiskMeta, fd: int) -> None:
        self.path = path
        self.meta = meta
        self._fd = fd
        self._size = meta.size
        self._close_lock = threading.Lock()
        self._punch_supported = _fallocate is not None

    @classmethod
    def open_or_create(cls, data_dir: Path | str, meta: VDiskMeta) -> FileStore:
        """Open DIR/<id>.img, creating it (sparse, via truncate) and its JSON if absent.

        An existing vDisk keeps its stored metadata: ``meta`` only seeds a new one.
        """
        directory = Path(data_dir)
        directory.mkdir(parents=True, exist_ok=True)
        meta_path = directory / f"{meta.vdisk_id}.json"
        data_path = directory / f"{meta.vdisk_id}.img"
        if meta_path.exists():
            meta = VDiskMeta.load(meta_path)
        fd = os.open(data_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size != meta.size:
                os.ftruncate(fd, meta.size)
            if not meta_path.exists():
                meta.save(meta_path)
        except BaseException:
            os.close(fd)
            raise
        return cls(data_path, meta, fd)

    @property
    def size(self) -> int:
        return self._size

    @property
    def block_size(self) -> int:
        return self.meta.block_size

    def read(self, offset: int, length: int) -> bytes:
        check_range(self._size, offset, length)
        data = os.pread(self._fd, length, offset)
        if len(data) == length:
            return data
        # Short read: keep reading, and a hole past EOF (after a shrink race) reads as zeros.
        parts = [data]
        got = len(data)
        while got < length:
            more = os.pread(self._fd, length - got, offset + got)
            if not more:
                parts.append(bytes(length - got))
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        check_range(self._size, offset, len(view))
        while view:
            written = os.pwrite(self._fd, view, offset)
            view = view[written:]
            offset += written

    def sync(self) -> None:
        with self._close_lock:
            if self._fd >= 0:
                os.fdatasync(self._fd)

    def punch_hole(self, offset: int, length: int) -> None:
        """Deallocate a range; it reads back as zeros (LBPRZ) either way."""
        check_range(self._size, offset, length)
        if length == 0:
            return
        if self._punch_supported and _fallocate is not None:
            mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
            if _fallocate(self._fd, mode, offset, length) == 0:
                return
            err = ctypes.get_errno()
            if err not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise OSError(err, os.strerror(err), str(self.path))
            self._punch_supported = False
        self._write_zeros(offset, length)

    def _write_zeros(self, offset: int, length: int) -> None:
        end = offset + length
        while offset < end:
            chunk = min(len(_ZERO_CHUNK), end - offset)
            self.write(offset, memoryview(_ZERO_CHUNK)[:chunk])
            offset += chunk

    def allocated_extents(self, offset: int, length: int) -> list[Extent]:
        """Mapped and unmapped ranges from SEEK_DATA/SEEK_HOLE, at block granularity:
        a block with any data in it counts as mapped."""
        check_range(self._size, offset, length)
        end = offset + length
        block = self.block_size
        extents: list[Extent] = []
        position = offset
        while position < end:
            try:
                data_start = os.lseek(self._fd, position, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # nothing but hole up to EOF
                    extents.append(Extent(position, end - position, False))
                    break
                if exc.errno == errno.EINVAL:  # no SEEK_DATA support: report all mapped
                    extents.append(Extent(position, end - position, True))
                    break
                raise
            data_start = max(position, data_start - data_start % block)
            if data_start >= end:
                extents.append(Extent(position, end - position, False))
                break
            if data_start > position:
                extents.append(Extent(position, data_start - position, False))
            hole_start = os.lseek(self._fd, data_start, os.SEEK_HOLE)
            hole_start = min(end, -(-hole_start // block) * block)
            extents.append(Extent(data_start, hole_start - data_start, True))
            position = hole_start
        return coalesce(extents)

    def resize(self, size: int) -> None:
        if size <= 0 or size % self.block_size:
            raise ValueError(f"size {size} must be a positive multiple of {self.block_size}")
        os.ftruncate(self._fd, size)
        self._size = size
        self.meta.size = size
        self.meta.save(self.path.with_suffix(".json"))

    def close(self) -> None:
        with self._close_lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> FileStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
