"""Whether a new vDisk of a given size can be held where it is to be created.

Checked before anything is created, so that a size too large for the store is a message
naming the problem and leaves no empty DIR/<id>.img or .json behind. vDisks are thin
(sparse files, chunked memory), so the bound is what the store could ever hold: the size of
the filesystem and its largest file, or the machine's memory, not the space free now.
"""

from __future__ import annotations

import os
from pathlib import Path

# READ CAPACITY (16) could report more, but no lab disk is larger; far larger sizes are
# typing mistakes (and overflow lseek/ftruncate's off_t).
MAX_VDISK_SIZE = 1 << 50  # 1 PiB


class CapacityError(ValueError):
    """The size cannot be held by the store; the message says why."""


def human(size: int) -> str:
    for unit, shift in (("PiB", 50), ("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift:
            return f"{size / (1 << shift):.4g} {unit}"
    return f"{size} bytes"


def check_size_bound(size: int) -> None:
    if size > MAX_VDISK_SIZE:
        raise CapacityError(f"size {human(size)} is larger than the {human(MAX_VDISK_SIZE)} limit")


def _existing_ancestor(directory: Path) -> Path:
    path = directory.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_file_capacity(directory: Path, size: int) -> None:
    """Raise CapacityError when a sparse file of ``size`` bytes cannot exist in ``directory``
    (created later if missing): larger than the filesystem or than its largest file."""
    check_size_bound(size)
    where = _existing_ancestor(Path(directory))
    try:
        stats = os.statvfs(where)
        file_size_bits = os.pathconf(where, "PC_FILESIZEBITS")
    except (OSError, ValueError) as error:
        raise CapacityError(f"cannot inspect the filesystem of {where}: {error}") from None
    total = stats.f_blocks * stats.f_frsize
    if total and size > total:
        raise CapacityError(
            f"size {human(size)} does not fit the filesystem of {where} ({human(total)} in all)"
        )
    if 0 < file_size_bits < 64 and size >= 1 << (file_size_bits - 1):
        raise CapacityError(
            f"size {human(size)} exceeds the largest file the filesystem of {where} holds"
        )


def check_memory_capacity(size: int) -> None:
    """Raise CapacityError when an in-memory vDisk of ``size`` could never be filled."""
    check_size_bound(size)
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return
    if memory > 0 and size > memory:
        raise CapacityError(
            f"size {human(size)} is more than this machine's memory ({human(memory)})"
        )
