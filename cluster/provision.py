"""Provisioning: a VM's vDisks created as sparse files in the cluster's shared store
directory, and its record written beside them; a configuration's VMs made so."""

from __future__ import annotations

from pathlib import Path

from cluster.config import VmConfig
from cluster.fabric import create_store, fabric_of
from stargate.stores.capacity import check_file_capacity
from topology.spec import (
    MAX_SESSIONS_PER_DISK,
    VM_NAME_RE,
    ClusterPaths,
    ClusterSpec,
    ClusterSpecError,
    VDiskInfo,
    VmRecord,
    list_vdisks,
    load_vms,
)
from topology.vdisk import VDiskMeta, parse_size
from topology.volume_group import VG_VDISK_PREFIX


def create_vm(
    directory: Path | str,
    name: str,
    *,
    home_node: int,
    disks: int,
    size: int | str,
    sessions_per_disk: int = 1,
    load_balance: bool = False,
) -> tuple[VmRecord, list[VDiskInfo]]:
    """Create VM ``name`` with ``disks`` new vDisks ``<name>-<k>`` (sparse files) on node
    ``home_node``, opening ``sessions_per_disk`` sessions to each, its vDisks spread over
    every CVM if ``load_balance``; refuses an existing VM
    name or vDisk id, and a size the store directory's filesystem cannot hold."""
    spec = ClusterSpec.load(directory)
    spec.node(home_node)  # validates the node
    if not VM_NAME_RE.match(name):
        raise ClusterSpecError(
            f"VM name {name!r}: use lowercase letters, digits, '-' and '.' (it goes into IQNs)"
        )
    if disks < 1:
        raise ClusterSpecError("a VM has at least one disk")
    if not 1 <= sessions_per_disk <= MAX_SESSIONS_PER_DISK:
        raise ClusterSpecError(
            f"sessions per disk must be 1..{MAX_SESSIONS_PER_DISK}, not {sessions_per_disk}"
        )
    if name.startswith(VG_VDISK_PREFIX):
        raise ClusterSpecError(f"VM name {name!r}: names starting {VG_VDISK_PREFIX!r} are kept "
                               "for volume groups' disks")  # fmt: skip
    paths = ClusterPaths(Path(directory))
    if paths.vm_file(name).exists():
        raise ClusterSpecError(f"VM {name!r} exists already")
    vdisk_ids = [f"{name}-{index}" for index in range(disks)]
    metas = create_vdisks(paths, vdisk_ids, parse_size(size))
    infos = [VDiskInfo(m.vdisk_id, m.size, m.block_size, name, home_node) for m in metas]
    record = VmRecord(name, home_node, vdisk_ids, sessions_per_disk, load_balance)
    record.save(paths)
    return record, infos


def create_vdisks(paths: ClusterPaths, vdisk_ids: list[str], byte_size: int) -> list[VDiskMeta]:
    """New vDisks of ``byte_size`` bytes on the cluster's fabric (sparse files in the shared
    store directory, or RBD images); refuses an existing id, and a size the filesystem
    cannot hold, before any file is made."""
    fabric = fabric_of(paths)
    if fabric.rbd is None:
        check_file_capacity(paths.vdisks, byte_size)  # a CapacityError is a ValueError
    for vdisk_id in vdisk_ids:
        if paths.vdisk_meta_file(vdisk_id).exists():
            raise ClusterSpecError(f"vDisk {vdisk_id!r} exists already")
    metas = []
    for vdisk_id in vdisk_ids:
        meta = VDiskMeta(vdisk_id=vdisk_id, size=byte_size)
        create_store(paths, fabric, meta)
        metas.append(meta)
    return metas


def provision_vms(directory: Path, vms: tuple[VmConfig, ...]) -> None:
    """Create the configured VMs that do not exist yet; those that do must match."""
    existing = {record.name: record for record in load_vms(directory)}
    sizes = {info.vdisk_id: info.size for info in list_vdisks(directory)}
    for vm in vms:
        record = existing.get(vm.name)
        if record is None:
            create_vm(
                directory,
                vm.name,
                home_node=vm.node,
                disks=vm.disks,
                size=vm.size,
                sessions_per_disk=vm.sessions_per_disk,
                load_balance=vm.load_balance,
            )
        elif _shape(record) != (vm.node, vm.disks, vm.sessions_per_disk, vm.load_balance) or any(
            sizes.get(vdisk_id) != vm.size for vdisk_id in record.vdisk_ids
        ):
            raise ClusterSpecError(
                f"VM {vm.name} exists in {directory} with another node, disk count, size, "
                "sessions per disk or load balancing"
            )


def _shape(record: VmRecord) -> tuple[int, int, int, bool]:
    return record.home_node, len(record.vdisk_ids), record.sessions_per_disk, record.load_balance
