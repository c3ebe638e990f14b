"""RbdStore against a real Ceph (1 mon, 1 memstore OSD): data, metadata, and the fence."""

from __future__ import annotations

import errno
import uuid

import pytest

from stargate.stores.base import Extent
from stargate.stores.rbd import LockHeldError, RbdLocation, RbdStore
from tests.peers.ceph import POOL, CephCluster
from topology.vdisk import VDiskMeta

pytestmark = pytest.mark.ceph

MIB = 1 << 20


def fresh_location() -> RbdLocation:
    return RbdLocation(POOL, f"t{uuid.uuid4().hex[:8]}-")


def test_location_parse() -> None:
    assert RbdLocation.parse("pool") == RbdLocation("pool", "")
    assert RbdLocation.parse("pool/vm1-") == RbdLocation("pool", "vm1-")
    assert RbdLocation("pool", "vm1-").image_name("disk0") == "vm1-disk0"
    for bad in ("", "/x", "a/b/c", "rbd:pool"):
        with pytest.raises(ValueError, match="POOL or POOL/IMAGE-PREFIX"):
            RbdLocation.parse(bad)


def test_round_trip_metadata_discard_extents_resize(ceph_cluster: CephCluster) -> None:
    location = fresh_location()
    meta = VDiskMeta("disk0", 16 * MIB, block_size=4096, serial="SER0")
    with RbdStore.open_or_create(ceph_cluster.conf_path, location, meta) as store:
        assert store.read(0, 8192) == bytes(8192)  # thin: a new image reads zeros
        assert store.allocated_extents(0, 16 * MIB) == [Extent(0, 16 * MIB, False)]
        payload = bytes(range(256)) * 64  # 16 KiB
        store.write(5 * MIB, payload)
        store.write(12 * MIB + 4096, memoryview(payload)[:4096])
        store.sync()
        assert store.read(5 * MIB, len(payload)) == payload
        # librbd maps at object granularity (4 MiB objects, each from its start to its end
        # of data): conservative, never a hole where data is. Untouched objects are holes.
        extents = store.allocated_extents(0, 16 * MIB)
        assert extents[0] == Extent(0, 4 * MIB, False)
        assert extents[-1].mapped is False and extents[-1].offset >= 12 * MIB + 8192
        for written in (5 * MIB, 5 * MIB + 12288, 12 * MIB + 4096):
            assert any(e.mapped and e.offset <= written < e.offset + e.length for e in extents)
        assert sum(e.length for e in extents) == 16 * MIB
        store.punch_hole(5 * MIB + 4096, 4096)  # partial: must still read back zeros
        assert store.read(5 * MIB, 12288) == payload[:4096] + bytes(4096) + payload[8192:12288]
        with pytest.raises(ValueError, match="outside"):
            store.read(16 * MIB - 4096, 8192)
        store.resize(32 * MIB)
        assert store.size == 32 * MIB
    # Reopened: the stored metadata wins over the seed, the data is there.
    seed = VDiskMeta("disk0", 4 * MIB)
    with RbdStore.open_or_create(ceph_cluster.conf_path, location, seed) as store:
        assert (store.size, store.block_size, store.meta.serial) == (32 * MIB, 4096, "SER0")
        assert store.read(12 * MIB + 4096, 4096) == payload[:4096]


def test_missing_image_without_create(ceph_cluster: CephCluster) -> None:
    with pytest.raises(OSError, match="does not exist") as missing:
        RbdStore.open_or_create(
            ceph_cluster.conf_path, fresh_location(), VDiskMeta("absent", MIB), create=False
        )
    assert missing.value.errno == errno.ENOENT


def test_take_over_blocklists_the_old_owner(ceph_cluster: CephCluster) -> None:
    location = fresh_location()
    meta = VDiskMeta("fenced", 8 * MIB)
    first = RbdStore.open_or_create(ceph_cluster.conf_path, location, meta)
    try:
        first.write(0, b"A" * 4096)
        with pytest.raises(LockHeldError, match="locked by"):
            RbdStore.open_or_create(ceph_cluster.conf_path, location, meta)
        first.write(4096, b"A" * 4096)  # a refused contender changes nothing
        with RbdStore.open_or_create(
            ceph_cluster.conf_path, location, meta, take_over=True
        ) as second:
            second.write(0, b"B" * 4096)
            with pytest.raises(OSError) as refused:
                first.write(0, b"X" * 4096)  # the old owner, still running, writes late
            assert refused.value.errno == errno.ESHUTDOWN
            with pytest.raises(OSError):
                first.read(0, 4096)  # its handle stays dead
            assert second.read(0, 8192) == b"B" * 4096 + b"A" * 4096
            blocklisted = ceph_cluster.blocklist()
            assert blocklisted, "the take-over blocklisted nobody"
    finally:
        first.close()
