"""vDisk metadata: a small JSON document beside the data file, saved atomically."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

_SIZE_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
# iSCSI names allow lowercase letters, digits, '-', '.' and ':' (RFC 3720 3.2.6.2); the
# target name "iqn.2010-06.com.nutanix:vmdisk-<id>" must stay within 223 bytes.
MAX_VDISK_ID_LENGTH = 192
_VDISK_ID_RE = re.compile(rf"[a-z0-9][a-z0-9.-]{{0,{MAX_VDISK_ID_LENGTH - 1}}}")
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGTP]?)(I?B)?\s*$", re.IGNORECASE)

# IEEE company id placed in the NAA designator: an emulator has no registered OUI, so this
# fixed placeholder only has to be stable, the vendor-specific part carries the identity.
NAA_COMPANY_ID = 0x6E7574  # "nut"


def parse_size(text: str | int) -> int:
    """Parse "512M", "4G", "1T", "4GiB" or a plain byte count into bytes (binary units)."""
    if isinstance(text, int):
        if text <= 0:
            raise ValueError(f"size must be positive, got {text}")
        return text
    match = _SIZE_RE.match(text)
    if match is None:
        raise ValueError(
            f"cannot parse size {text!r}: expected a number with an optional unit "
            "K, M, G, T or P (e.g. 512M, 4G, 1T) or a byte count"
        )
    number, unit, _suffix = match.groups()
    size = int(number) * _SIZE_UNITS[unit.upper()]
    if size <= 0:
        raise ValueError(f"size {text!r} must be positive")
    return size


def naa_from_id(vdisk_id: str) -> bytes:
    """A stable 16-byte NAA type 6 (IEEE Registered Extended) identifier for a vDisk id.

    NAA 6: 4-bit NAA, 24-bit IEEE company id, 36-bit vendor specific id, 64-bit extension;
    the vendor fields come from a hash of the id so the same vDisk always reports the same
    identifier (multipath and udev key on it).
    """
    digest = hashlib.sha256(vdisk_id.encode()).digest()
    vendor = int.from_bytes(digest[:5], "big") & ((1 << 36) - 1)
    extension = int.from_bytes(digest[5:13], "big")
    value = (0x6 << 124) | (NAA_COMPANY_ID << 100) | (vendor << 64) | extension
    return value.to_bytes(16, "big")


@dataclass(slots=True)
class VDiskMeta:
    vdisk_id: str
    size: int
    block_size: int = 512
    serial: str = ""
    created: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if not _VDISK_ID_RE.fullmatch(self.vdisk_id):
            raise ValueError(
                f"invalid vDisk id {self.vdisk_id!r}: use 1-{MAX_VDISK_ID_LENGTH} lowercase "
                "letters, digits, '-' or '.', starting with a letter or digit (it becomes "
                "part of an iSCSI name and of file names)"
            )
        if self.block_size not in (512, 1024, 2048, 4096):
            raise ValueError(f"block size {self.block_size} is not 512, 1024, 2048 or 4096")
        if self.size <= 0 or self.size % self.block_size:
            raise ValueError(
                f"size {self.size} must be a positive multiple of block size {self.block_size}"
            )
        if not self.serial:
            self.serial = self.vdisk_id

    @property
    def naa(self) -> bytes:
        return naa_from_id(self.vdisk_id)

    @property
    def block_count(self) -> int:
        return self.size // self.block_size

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> VDiskMeta:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("vDisk metadata must be a JSON object")
        return cls(
            vdisk_id=str(raw["vdisk_id"]),
            size=int(raw["size"]),
            block_size=int(raw.get("block_size", 512)),
            serial=str(raw.get("serial", "")),
            created=float(raw.get("created", time.time())),
        )

    def save(self, path: Path) -> None:
        atomic_write(path, self.to_json().encode())

    @classmethod
    def load(cls, path: Path) -> VDiskMeta:
        return cls.from_json(path.read_text())


def atomic_write(path: Path, payload: bytes) -> None:
    """Write to a temporary sibling, fsync it, rename over ``path``, fsync the directory:
    a crash leaves either the old or the new document, never a torn one."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
