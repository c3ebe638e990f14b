"""RbdStore: a vDisk as one Ceph RBD image, through librbd, fenced by the image's lock.

The owner holds the image's exclusive lock (``lock_acquire``); while it does, another
client's write fails at once in Ceph (EROFS). A take-over breaks that lock, which blocklists
the old owner's client in the OSD map: its next write fails in Ceph itself (ESHUTDOWN,
errno 108), so a frozen or partitioned old owner can never write after a take-over.

Acknowledged means durable: librbd's cache is off, so a write returns once the OSDs have it.
Every librbd call is synchronous and bounded by ``rados_osd_op_timeout`` (and the connection
by ``client_mount_timeout``): a stalled cluster fails a command after that long instead of
hanging the event loop forever. Errors from librbd become ``OSError`` with librbd's errno, so
the logical unit answers CHECK CONDITION (MEDIUM ERROR), never GOOD.

The bindings are Debian's python3-rados and python3-rbd (./run makes them importable); they
are imported only when an RBD store is opened.
"""

from __future__ import annotations

import contextlib
import errno
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from stargate.stores.base import Extent, check_range, coalesce
from topology.vdisk import VDiskMeta

META_KEY = "stargate.vdisk"  # the image's metadata entry holding the VDiskMeta JSON
DEFAULT_OP_TIMEOUT = 10.0
_T = TypeVar("_T")


class RbdUnavailableError(RuntimeError):
    """The Ceph bindings are not importable, or the cluster cannot be reached."""


class LockHeldError(OSError):
    """Another client holds the image's exclusive lock (and no take-over was asked for)."""


@dataclass(frozen=True, slots=True)
class RbdLocation:
    """Where vDisks live: ``POOL[/PREFIX]``; vDisk V is image PREFIX + V in POOL."""

    pool: str
    prefix: str = ""

    @classmethod
    def parse(cls, text: str) -> RbdLocation:
        pool, _, prefix = text.partition("/")
        if not pool or "/" in prefix or ":" in text:
            raise ValueError(f"{text!r} is not POOL or POOL/IMAGE-PREFIX")
        return cls(pool, prefix)

    def image_name(self, vdisk_id: str) -> str:
        return self.prefix + vdisk_id

    def __str__(self) -> str:
        return self.pool + (f"/{self.prefix}" if self.prefix else "")


def _modules() -> tuple[Any, Any]:
    try:
        import rados
        import rbd
    except ImportError as exc:
        raise RbdUnavailableError(
            "Ceph's Python bindings are not importable (install python3-rados and "
            "python3-rbd; ./run links them into the venv)"
        ) from exc
    return rados, rbd


def _as_os_error(exc: Exception, what: str) -> OSError:
    code = getattr(exc, "errno", None) or errno.EIO
    return OSError(abs(int(code)), f"{what}: {exc}")


@contextlib.contextmanager
def _librbd_errors(what: str) -> Iterator[None]:
    """librbd's exceptions are not OSError: give them the errno they carry."""
    rados, rbd = _modules()
    try:
        yield
    except (rbd.Error, rados.Error) as exc:
        raise _as_os_error(exc, what) from exc


class CephConnection:
    """One librados client (one identity the cluster can blocklist) and one pool's I/O
    context. Each owner of a vDisk needs its own connection: a take-over blocklists the
    whole client, so stores sharing it would be fenced together."""

    def __init__(
        self, conf_file: Path | None, pool: str, *, op_timeout: float = DEFAULT_OP_TIMEOUT
    ) -> None:
        rados, _ = _modules()
        options = {
            "rbd_cache": "false",  # a write is acknowledged only once the OSDs hold it
            "rados_osd_op_timeout": f"{op_timeout:g}",
            "rados_mon_op_timeout": f"{op_timeout:g}",
            "client_mount_timeout": f"{op_timeout:g}",
            "rbd_skip_partial_discard": "false",  # a partial discard must read back zeros
            "rbd_blocklist_on_break_lock": "true",
            "log_to_stderr": "false",
        }
        self.pool = pool
        try:
            self._cluster = rados.Rados(
                conffile=str(conf_file) if conf_file is not None else "", conf=options
            )
            self._cluster.connect(timeout=max(1, round(op_timeout)))
        except rados.Error as exc:
            raise RbdUnavailableError(f"cannot connect to Ceph ({conf_file}): {exc}") from exc
        try:
            self.ioctx = self._cluster.open_ioctx(pool)
        except rados.Error as exc:
            self._cluster.shutdown()
            raise RbdUnavailableError(f"cannot open pool {pool!r}: {exc}") from exc

    def close(self) -> None:
        self.ioctx.close()
        self._cluster.shutdown()


class RbdStore:
    """Block storage in one RBD image, its ``VDiskMeta`` in the image's metadata.

    Owns its connection (see CephConnection: one fencing identity per owner) and closes it.
    """

    def __init__(
        self, connection: CephConnection, image: Any, meta: VDiskMeta, image_name: str
    ) -> None:
        self.connection = connection
        self.image_name = image_name
        self.meta = meta
        self._image = image
        self._size = meta.size
        self._lock = threading.Lock()  # sync() may come from a worker thread; close must wait
        self._closed = False

    @classmethod
    def open_or_create(
        cls,
        conf_file: Path | None,
        location: RbdLocation,
        meta: VDiskMeta,
        *,
        take_over: bool = False,
        create: bool = True,
        lock: bool = True,
        op_timeout: float = DEFAULT_OP_TIMEOUT,
    ) -> RbdStore:
        """Open (creating it if absent and ``create``) the vDisk's image and, if ``lock``,
        take its exclusive lock (see `acquire_lock`; without it, writes fail while another
        client holds the lock).

        An existing image keeps its stored metadata: ``meta`` only seeds a new one.
        """
        _, rbd = _modules()
        connection = CephConnection(conf_file, location.pool, op_timeout=op_timeout)
        name = location.image_name(meta.vdisk_id)
        try:
            with _librbd_errors(f"opening RBD image {location.pool}/{name}"):
                if create:
                    with contextlib.suppress(rbd.ImageExists):
                        rbd.RBD().create(connection.ioctx, name, meta.size, old_format=False)
                try:
                    image = rbd.Image(connection.ioctx, name)
                except rbd.ImageNotFound:
                    raise OSError(
                        errno.ENOENT, f"RBD image {location.pool}/{name} does not exist"
                    ) from None
            try:
                meta = cls._load_or_store_meta(image, meta)
            except BaseException:
                image.close()
                raise
        except BaseException:
            connection.close()
            raise
        store = cls(connection, image, meta, name)
        if lock:
            try:
                store.acquire_lock(take_over=take_over)
            except BaseException:
                store.close()
                raise
        return store

    @staticmethod
    def _load_or_store_meta(image: Any, meta: VDiskMeta) -> VDiskMeta:
        with _librbd_errors("reading the vDisk's metadata"):
            stored = dict(image.metadata_list()).get(META_KEY)
            if stored is not None:
                meta = VDiskMeta.from_json(stored)
            else:
                image.metadata_set(META_KEY, meta.to_json())
            if image.size() != meta.size:
                image.resize(meta.size)
        return meta

    def acquire_lock(self, *, take_over: bool) -> None:
        """Take the image's exclusive lock. When another client holds it: ``take_over``
        breaks it, blocklisting that client (about 0.5-1 s), otherwise LockHeldError."""
        _, rbd = _modules()
        image, name = self._image, self.image_name
        with _librbd_errors(f"locking RBD image {name}"):
            if image.is_exclusive_lock_owner():
                return
            # Owners first: lock_acquire against a dead holder waits out its watch (~30 s).
            owners = self._lock_owners()
            if owners and not take_over:
                shown = ", ".join(owner["owner"] for owner in owners)
                raise LockHeldError(errno.EBUSY, f"RBD image {name} is locked by {shown}")
            for owner in owners:
                image.lock_break(owner["mode"], owner["owner"])
            image.lock_acquire(rbd.RBD_LOCK_MODE_EXCLUSIVE)

    def _lock_owners(self) -> list[dict[str, Any]]:
        _, rbd = _modules()
        try:
            return list(self._image.lock_get_owners())
        except rbd.ImageNotFound:  # no lock at all
            return []

    @property
    def size(self) -> int:
        return self._size

    @property
    def block_size(self) -> int:
        return self.meta.block_size

    def _call(self, what: str, call: Callable[[], _T]) -> _T:
        if self._closed:
            raise OSError(errno.EBADF, f"{what}: the RBD store is closed")
        with _librbd_errors(what):
            return call()

    def read(self, offset: int, length: int) -> bytes:
        check_range(self._size, offset, length)
        if length == 0:
            return b""
        data: bytes = self._call("RBD read", lambda: self._image.read(offset, length))
        return data if len(data) == length else data + bytes(length - len(data))

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        payload = bytes(data)
        check_range(self._size, offset, len(payload))
        if not payload:
            return
        written = self._call("RBD write", lambda: self._image.write(payload, offset))
        if written != len(payload):
            raise OSError(errno.EIO, f"RBD write of {len(payload)} bytes wrote {written}")

    def sync(self) -> None:
        with self._lock:
            if not self._closed:
                self._call("RBD flush", self._image.flush)

    def punch_hole(self, offset: int, length: int) -> None:
        """Discard a range; with partial discards not skipped it reads back as zeros."""
        check_range(self._size, offset, length)
        if length:
            self._call("RBD discard", lambda: self._image.discard(offset, length))

    def allocated_extents(self, offset: int, length: int) -> list[Extent]:
        """Mapped and unmapped ranges from librbd's diff against the empty image, at block
        granularity: a block with any data in it counts as mapped."""
        check_range(self._size, offset, length)
        block = self.block_size
        end = offset + length
        mapped: list[tuple[int, int]] = []

        def note(start: int, size: int, exists: bool) -> None:
            if exists:
                mapped.append((start, size))

        self._call(
            "RBD diff",
            lambda: self._image.diff_iterate(offset, length, None, note, whole_object=False),
        )
        extents: list[Extent] = []
        position = offset
        for start, size in sorted(mapped):
            first = max(position, start - start % block)
            last = min(end, -(-(start + size) // block) * block)
            if last <= position:
                continue
            if first > position:
                extents.append(Extent(position, first - position, False))
            extents.append(Extent(first, last - first, True))
            position = last
        if position < end:
            extents.append(Extent(position, end - position, False))
        return coalesce(extents)

    def resize(self, size: int) -> None:
        if size <= 0 or size % self.block_size:
            raise ValueError(f"size {size} must be a positive multiple of {self.block_size}")
        self._call("RBD resize", lambda: self._image.resize(size))
        self._size = size
        self.meta.size = size
        self._call("RBD metadata", lambda: self._image.metadata_set(META_KEY, self.meta.to_json()))

    def close(self) -> None:
        """Release the lock (closing the image does) and the connection."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(Exception):  # a blocklisted client cannot close cleanly
            self._image.close()
        self.connection.close()

    def __enter__(self) -> RbdStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
