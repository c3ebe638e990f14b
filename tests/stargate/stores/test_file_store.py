"""FileStore on a real sparse file, plus VDiskMeta and size parsing."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from stargate.stores import FileStore
from topology.vdisk import VDiskMeta, naa_from_id, parse_size

MIB = 1 << 20


@pytest.fixture
def store(tmp_path: Path):
    with FileStore.open_or_create(tmp_path, VDiskMeta("vd-a", 16 * MIB)) as opened:
        yield opened


def test_create_is_sparse_and_persists_meta(tmp_path: Path) -> None:
    with FileStore.open_or_create(tmp_path, VDiskMeta("vd-b", 64 * MIB)) as store:
        assert store.size == 64 * MIB
    data = tmp_path / "vd-b.img"
    assert data.stat().st_size == 64 * MIB
    assert data.stat().st_blocks * 512 < MIB
    meta = json.loads((tmp_path / "vd-b.json").read_text())
    assert meta["vdisk_id"] == "vd-b" and meta["size"] == 64 * MIB
    # Reopening keeps the stored metadata, whatever size the caller proposes.
    with FileStore.open_or_create(tmp_path, VDiskMeta("vd-b", 8 * MIB)) as again:
        assert again.size == 64 * MIB


def test_read_write_round_trip(store: FileStore) -> None:
    payload = os.urandom(3 * 4096)
    store.write(8192, memoryview(payload))
    assert store.read(8192, len(payload)) == payload
    assert store.read(0, 8192) == bytes(8192)
    with pytest.raises(ValueError):
        store.write(16 * MIB - 512, bytes(1024))


def test_punch_hole_reads_zeros_and_shows_in_extents(store: FileStore) -> None:
    store.write(0, b"\xaa" * (4 * MIB))
    store.punch_hole(MIB, 2 * MIB)
    assert store.read(MIB, 2 * MIB) == bytes(2 * MIB)
    assert store.read(0, 512) == b"\xaa" * 512
    extents = store.allocated_extents(0, 16 * MIB)
    mapped = [(e.offset, e.length) for e in extents if e.mapped]
    if len(mapped) == 1:  # filesystem without hole support: fell back to writing zeros
        pytest.skip("no SEEK_HOLE / punch support on this filesystem")
    assert mapped == [(0, MIB), (3 * MIB, MIB)]
    assert extents[-1].offset + extents[-1].length == 16 * MIB
    assert sum(e.length for e in extents) == 16 * MIB


def test_extents_of_untouched_file_are_one_hole(store: FileStore) -> None:
    extents = store.allocated_extents(4096, 8 * MIB)
    assert [(e.offset, e.length, e.mapped) for e in extents] in (
        [(4096, 8 * MIB, False)],
        [(4096, 8 * MIB, True)],  # no SEEK_DATA support: everything reported mapped
    )


def test_sync_from_a_thread_while_writing(store: FileStore) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []

    def flusher() -> None:
        try:
            for _ in range(20):
                store.sync()
                if stop.is_set():
                    break
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)

    thread = threading.Thread(target=flusher)
    thread.start()
    for index in range(200):
        store.write((index % 64) * 4096, bytes([index % 256]) * 4096)
    stop.set()
    thread.join(timeout=30)
    assert not thread.is_alive() and not errors
    assert store.read(63 * 4096, 4096) == bytes([191]) * 4096


def test_resize_grows_file_and_meta(tmp_path: Path) -> None:
    with FileStore.open_or_create(tmp_path, VDiskMeta("vd-c", MIB)) as store:
        store.resize(4 * MIB)
        assert store.size == 4 * MIB
        assert store.read(3 * MIB, 512) == bytes(512)
    assert VDiskMeta.load(tmp_path / "vd-c.json").size == 4 * MIB


def test_meta_round_trip_and_validation(tmp_path: Path) -> None:
    meta = VDiskMeta("vd-d", 4096, block_size=4096, serial="SER1")
    meta.save(tmp_path / "m.json")
    assert VDiskMeta.load(tmp_path / "m.json") == meta
    assert not list(tmp_path.glob(".*.tmp"))
    assert VDiskMeta("x", 512).serial == "x"
    for bad in (
        {"vdisk_id": "a/b", "size": 512},
        {"vdisk_id": ".hidden", "size": 512},
        {"vdisk_id": "Upper", "size": 512},
        {"vdisk_id": "x" * 193, "size": 512},
        {"vdisk_id": "a", "size": 100},
        {"vdisk_id": "a", "size": 512, "block_size": 520},
    ):
        with pytest.raises(ValueError):
            VDiskMeta(**bad)  # type: ignore[arg-type]


def test_naa_is_stable_and_type_6() -> None:
    assert naa_from_id("vd1") == naa_from_id("vd1") != naa_from_id("vd2")
    assert naa_from_id("vd1")[0] >> 4 == 6 and len(naa_from_id("vd1")) == 16


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512M", 512 * MIB),
        ("4G", 4 << 30),
        ("1T", 1 << 40),
        ("4GiB", 4 << 30),
        ("1024", 1024),
        (" 2k ", 2048),
        (4096, 4096),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "4X", "-1", "0", "1.5G", "G"])
def test_parse_size_errors_name_the_input(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_punch_falls_back_to_writing_zeros(store: FileStore) -> None:
    store.write(0, b"\xee" * 8192)
    store._punch_supported = False  # as after EOPNOTSUPP from fallocate
    store.punch_hole(512, 4096)
    assert store.read(0, 8192) == b"\xee" * 512 + bytes(4096) + b"\xee" * 3584


def test_short_writes_are_completed(store: FileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    real_pwrite = os.pwrite

    def dribble(fd: int, data: memoryview, offset: int) -> int:
        return real_pwrite(fd, data[:100], offset)  # never more than 100 bytes at a time

    monkeypatch.setattr(os, "pwrite", dribble)
    payload = os.urandom(4096)
    store.write(4096, payload)
    monkeypatch.undo()
    assert store.read(4096, 4096) == payload
