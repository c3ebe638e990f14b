"""The volume-group model: virtual targets and LUNs, attachments, the record's round trip,
and refusals of what Nutanix Volumes would not accept."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iscsicore.chap import ChapSecrets
from topology.volume_group import VolumeGroup, VolumeGroupError, VolumeGroupStore, volume_group_of

HOST = "iqn.2026-12.org.example:host1"


def group(disks: int, **options: object) -> VolumeGroup:
    return VolumeGroup("data", VolumeGroup.disk_ids("data", disks), **options)  # type: ignore[arg-type]


def test_each_disk_its_own_virtual_target_up_to_the_limit() -> None:
    targets = group(3).targets()
    assert [t.iqn for t in targets] == [f"iqn.2010-06.com.nutanix:vg-data-tgt{i}" for i in range(3)]
    assert [t.vdisk_ids for t in targets] == [("vg-data-0",), ("vg-data-1",), ("vg-data-2",)]


def test_more_disks_than_virtual_targets_share_them_as_luns() -> None:
    targets = group(5, virtual_targets=2).targets()
    assert [t.vdisk_ids for t in targets] == [
        ("vg-data-0", "vg-data-2", "vg-data-4"),
        ("vg-data-1", "vg-data-3"),
    ]


def test_one_virtual_target_is_one_target_with_every_disk_a_lun() -> None:
    (only,) = group(4, virtual_targets=1).targets()
    assert only.vdisk_ids == VolumeGroup.disk_ids("data", 4)
    assert group(4, virtual_targets=1).target(only.iqn) == only
    assert group(4, virtual_targets=1).target(only.iqn + "x") is None


@given(disks=st.integers(1, 80), virtual=st.integers(1, 32))
def test_every_disk_on_exactly_one_target(disks: int, virtual: int) -> None:
    targets = group(disks, virtual_targets=virtual).targets()
    placed = [vdisk for target in targets for vdisk in target.vdisk_ids]
    assert sorted(placed) == sorted(VolumeGroup.disk_ids("data", disks))
    assert len(targets) == min(disks, virtual)
    sizes = [len(target.vdisk_ids) for target in targets]
    assert max(sizes) - min(sizes) <= 1  # spread evenly


def test_attachments_compare_without_case_and_refuse_nonsense() -> None:
    attached = group(1).attach(HOST)
    assert attached.is_attached(HOST.upper().replace("IQN", "iqn"))
    with pytest.raises(VolumeGroupError, match="attached to data already"):
        attached.attach(HOST)
    assert not attached.detach(HOST).attachments
    with pytest.raises(VolumeGroupError, match="is not attached"):
        group(1).detach(HOST)
    with pytest.raises(VolumeGroupError, match="not an iSCSI initiator name"):
        group(1).attach("host1")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"virtual_targets": 0}, "virtual targets must be 1..32, not 0"),
        ({"virtual_targets": 33}, "virtual targets must be 1..32, not 33"),
        ({"mutual_chap": ChapSecrets("t", "secret-target")}, "mutual CHAP needs CHAP"),
        ({"attachments": (HOST, HOST)}, "attached once"),
    ],
)
def test_bad_groups_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(VolumeGroupError, match=message):
        group(2, **options)
    with pytest.raises(VolumeGroupError, match="name"):
        VolumeGroup("Data!", ("vg-x-0",))


def test_the_record_round_trips_and_is_found_by_target_name(tmp_path: Path) -> None:
    store = VolumeGroupStore(tmp_path)
    original = group(
        3,
        attachments=(HOST,),
        chap=ChapSecrets("user", "secret-12345"),
        mutual_chap=ChapSecrets("target", "secret-67890"),
        virtual_targets=2,
        preferred_node=2,
        load_balance=True,
    )
    store.save(original)
    assert store.load("data") == original
    assert store.all() == [original]
    found = store.find_target("iqn.2010-06.com.nutanix:vg-data-tgt1")
    assert found is not None and found[1].vdisk_ids == ("vg-data-1",)
    assert store.find_target("iqn.2010-06.com.nutanix:vmdisk-vm-0") is None
    store.delete("data")
    with pytest.raises(VolumeGroupError, match="no volume group 'data'"):
        store.load("data")


def test_a_vdisk_id_names_its_volume_group() -> None:
    assert volume_group_of("vg-data-3") == "data"
    assert volume_group_of("vg-my-data-12") == "my-data"
    assert volume_group_of("web-0") is None
    assert volume_group_of("vg-") is None and volume_group_of("vg-x-y") is None
