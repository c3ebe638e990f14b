"""Volume groups made, changed and removed in a cluster directory: their disks are new
vDisks in the shared store, their records DIR/volume-groups/NAME.json."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from cluster.config import VolumeGroupConfig
from cluster.provision import create_vdisks
from iscsicore.chap import ChapSecrets
from topology.spec import ClusterPaths, ClusterSpec
from topology.vdisk import VDiskMeta, parse_size
from topology.volume_group import VolumeGroup, VolumeGroupError, VolumeGroupStore


def create_volume_group(
    directory: Path,
    name: str,
    *,
    disks: int,
    size: int | str,
    attachments: tuple[str, ...] = (),
    chap: ChapSecrets | None = None,
    mutual_chap: ChapSecrets | None = None,
    virtual_targets: int | None = None,
    preferred_node: int | None = None,
    load_balance: bool = False,
    stable_window: float | None = None,
) -> VolumeGroup:
    """Validate everything, then make the disks and write the record."""
    spec = ClusterSpec.load(directory)
    if preferred_node is not None:
        spec.node(preferred_node)  # validates the node
    if disks < 1:
        raise VolumeGroupError("a volume group has at least one disk")
    group = VolumeGroup(
        name,
        VolumeGroup.disk_ids(name, disks),
        attachments=attachments,
        chap=chap,
        mutual_chap=mutual_chap,
        preferred_node=preferred_node,
        load_balance=load_balance,
    )
    if virtual_targets is not None:
        group = replace(group, virtual_targets=virtual_targets)
    if stable_window is not None:
        group = replace(group, stable_window=stable_window)
    store = VolumeGroupStore(Path(directory))
    if store.exists(name):
        raise VolumeGroupError(f"volume group {name!r} exists already")
    paths = ClusterPaths(Path(directory))
    create_vdisks(paths, list(group.vdisk_ids), parse_size(size))
    store.save(group)
    return group


def change_attachment(directory: Path, name: str, initiator: str, *, attach: bool) -> VolumeGroup:
    store = VolumeGroupStore(Path(directory))
    group = store.load(name)
    group = group.attach(initiator) if attach else group.detach(initiator)
    store.save(group)
    return group


def delete_volume_group(directory: Path, name: str, *, force: bool = False) -> VolumeGroup:
    """Remove the record and the group's disks (their data is gone); refused while an
    initiator is attached, unless ``force``."""
    store = VolumeGroupStore(Path(directory))
    group = store.load(name)
    if group.attachments and not force:
        raise VolumeGroupError(
            f"{name} is attached to {', '.join(group.attachments)}: detach them first (or --force)"
        )
    store.delete(name)  # first: no login finds the group while its disks go
    paths = ClusterPaths(Path(directory))
    for vdisk_id in group.vdisk_ids:
        for path in (
            paths.vdisks / f"{vdisk_id}.img",
            paths.vdisk_meta_file(vdisk_id),
            paths.vdisks / f"{vdisk_id}.pr.json",
            paths.ownership_file(vdisk_id),
        ):
            path.unlink(missing_ok=True)
    return group


def provision_volume_groups(directory: Path, groups: tuple[VolumeGroupConfig, ...]) -> None:
    """Create the configured volume groups that do not exist yet; those that do must match
    (their attachments may have changed: the file's are taken)."""
    store = VolumeGroupStore(Path(directory))
    for wanted in groups:
        if not store.exists(wanted.name):
            create_volume_group(
                directory,
                wanted.name,
                disks=wanted.disks,
                size=wanted.size,
                attachments=wanted.attach,
                chap=wanted.chap,
                mutual_chap=wanted.mutual_chap,
                virtual_targets=wanted.virtual_targets,
                preferred_node=wanted.preferred_node,
                load_balance=wanted.load_balance,
                stable_window=wanted.stable_window,
            )
            continue
        existing = store.load(wanted.name)
        sizes = {
            VDiskMeta.load(ClusterPaths(directory).vdisk_meta_file(vdisk)).size
            for vdisk in existing.vdisk_ids
        }
        if VolumeGroupConfig.from_group(existing, sizes.pop()) != wanted:
            raise VolumeGroupError(
                f"volume group {wanted.name} exists in {directory} with other settings"
            )
