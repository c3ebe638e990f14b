from __future__ import annotations

import pytest

from stargate.stores.null import NullStore
from topology.vdisk import VDiskMeta


def test_reads_zeros_or_a_pattern_and_checks_ranges() -> None:
    store = NullStore(VDiskMeta("n", 1 << 20))
    store.write(0, b"x" * 4096)
    assert store.read(0, 4096) == bytes(4096)
    patterned = NullStore(VDiskMeta("p", 1 << 20), pattern=b"ab")
    assert patterned.read(512, 5) == b"ababa"
    with pytest.raises(ValueError):
        store.read((1 << 20) - 512, 1024)
