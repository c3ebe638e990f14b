"""`cluster up --fabric rbd:POOL[/PREFIX] [--ceph-conf FILE]`: where the vDisks' bytes live.

The default fabric is the cluster directory (sparse files every CVM opens). On Ceph RBD each
vDisk is one image (created with the vDisk; its metadata stays in the directory too), and
ownership is fenced below the data as well as by the coordinator: a CVM opens the image
without its lock, and only once it has won the vDisk's ownership record takes the image's
exclusive lock, breaking the previous owner's (which blocklists that CVM's Ceph client: its
late writes then fail in Ceph itself). The choice is recorded beside cluster.json
(DIR/fabric.json) and a directory started with one fabric is never restarted with another.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from stargate.stores.file import FileStore
from stargate.stores.rbd import RbdLocation, RbdStore, RbdUnavailableError
from topology.spec import ClusterPaths
from topology.vdisk import VDiskMeta

FABRIC_FILE = "fabric.json"
VDiskStore = FileStore | RbdStore
DIRECTORY = "dir"


class FabricError(ValueError):
    """A fabric that cannot be used for this cluster."""


@dataclass(frozen=True, slots=True)
class Fabric:
    rbd: RbdLocation | None = None  # None: sparse files in the cluster directory
    ceph_conf: Path | None = None

    @classmethod
    def parse(cls, text: str, ceph_conf: Path | None = None) -> Fabric:
        if text == DIRECTORY:
            if ceph_conf is not None:
                raise FabricError("--ceph-conf goes with --fabric rbd:POOL only")
            return cls()
        if not text.startswith("rbd:"):
            raise FabricError(f"--fabric {text!r} is not dir or rbd:POOL[/IMAGE-PREFIX]")
        try:
            location = RbdLocation.parse(text.removeprefix("rbd:"))
        except ValueError as error:
            raise FabricError(f"--fabric {text!r}: {error}") from None
        return cls(location, ceph_conf.resolve() if ceph_conf is not None else None)

    def __str__(self) -> str:
        return DIRECTORY if self.rbd is None else f"rbd:{self.rbd}"

    def to_json(self) -> str:
        conf = None if self.ceph_conf is None else str(self.ceph_conf)
        return json.dumps({"fabric": str(self), "ceph_conf": conf})


def fabric_of(paths: ClusterPaths) -> Fabric:
    try:
        raw = json.loads((paths.root / FABRIC_FILE).read_text())
    except FileNotFoundError:
        return Fabric()
    conf = raw.get("ceph_conf")
    return Fabric.parse(str(raw["fabric"]), Path(conf) if conf else None)


def choose_fabric(paths: ClusterPaths, given: Fabric | None) -> Fabric:
    """The fabric `cluster up` runs with: the recorded one, or the one given for a new
    cluster directory (vDisks already made elsewhere cannot move)."""
    recorded = fabric_of(paths)
    if given is None or given == recorded:
        return recorded
    if (paths.root / FABRIC_FILE).exists() or any(paths.vdisks.glob("*.json")):
        raise FabricError(f"{paths.root} keeps its vDisks on {recorded}, not {given}")
    return given


def record_fabric(paths: ClusterPaths, fabric: Fabric) -> None:
    if fabric.rbd is None:
        (paths.root / FABRIC_FILE).unlink(missing_ok=True)
    else:
        (paths.root / FABRIC_FILE).write_text(fabric.to_json() + "\n")


def create_store(paths: ClusterPaths, fabric: Fabric, meta: VDiskMeta) -> None:
    """Make a new vDisk's storage: its sparse file, or its RBD image (unlocked: the CVM
    that comes to serve it takes the lock)."""
    if fabric.rbd is None:
        FileStore.open_or_create(paths.vdisks, meta).close()
        return
    try:
        RbdStore.open_or_create(fabric.ceph_conf, fabric.rbd, meta, lock=False).close()
    except RbdUnavailableError as error:
        raise FabricError(str(error)) from None
    paths.vdisks.mkdir(parents=True, exist_ok=True)
    meta.save(paths.vdisk_meta_file(meta.vdisk_id))


def open_store(paths: ClusterPaths, fabric: Fabric, meta: VDiskMeta) -> VDiskStore:
    """Open a vDisk's storage for a CVM; an RBD image without its lock (see `fence`)."""
    if fabric.rbd is None:
        return FileStore.open_or_create(paths.vdisks, meta)
    try:
        return RbdStore.open_or_create(fabric.ceph_conf, fabric.rbd, meta, create=False, lock=False)
    except RbdUnavailableError as error:
        raise OSError(str(error)) from None


async def fence(stores: list[VDiskStore]) -> None:
    """Once the vDisk's ownership is won: take each RBD image's exclusive lock, breaking
    (and blocklisting) the previous owner's; in a worker thread, the break takes ~0.5-1 s."""
    for store in stores:
        if isinstance(store, RbdStore):
            await trio.to_thread.run_sync(partial(store.acquire_lock, take_over=True))
