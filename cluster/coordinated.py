"""`cluster up --coordinator zk://HOST:PORT/PATH`: the choice recorded beside cluster.json
(DIR/coordinator, read by every stargate and redirector the cluster starts), and the
cluster's description (spec, VMs, vDisks) published as znodes under PATH."""

from __future__ import annotations

from pathlib import Path

import trio

from topology.coordination import (
    CoordinationError,
    CoordinatorUrl,
    CoordinatorUrlError,
    open_coordinator,
)
from topology.spec import ClusterPaths, ClusterSpec, list_vdisks, load_vms
from topology.vdisk import VDiskMeta


class CoordinatorChoiceError(ValueError):
    """A coordinator that cannot be used for this cluster (another is recorded, or it does
    not answer)."""


def choose_coordinator(paths: ClusterPaths, given: str | None) -> CoordinatorUrl:
    """The coordinator `cluster up` runs with: the one given, which must be the one the
    directory recorded if it recorded one, else the recorded one (default: the directory)."""
    stored = CoordinatorUrl.parse(paths.coordinator())
    if given is None:
        return stored
    try:
        wanted = CoordinatorUrl.parse(given)
    except CoordinatorUrlError as error:
        raise CoordinatorChoiceError(str(error)) from None
    if paths.spec_file.exists() and wanted != stored:
        raise CoordinatorChoiceError(
            f"{paths.root} runs with coordinator {stored}, not {wanted}: use another --dir"
        )
    return wanted


def record_coordinator(paths: ClusterPaths, url: CoordinatorUrl) -> None:
    if url.is_directory:
        paths.coordinator_file.unlink(missing_ok=True)
    else:
        paths.coordinator_file.write_text(f"{url}\n")


def publish(paths: ClusterPaths, url: CoordinatorUrl) -> None:
    """Write the spec, VMs and vDisks' metadata into the coordinator; a coordinator that
    does not answer is a CoordinatorChoiceError naming it."""
    if url.is_directory:
        return  # they are the directory's own files

    async def write_all() -> None:
        async with open_coordinator(url, paths.root) as coordinator:
            await coordinator.save_spec(ClusterSpec.load(paths.root))
            for vm in load_vms(paths.root):
                await coordinator.save_vm(vm)
            for info in list_vdisks(paths.root):
                await coordinator.save_vdisk(VDiskMeta.load(paths.vdisk_meta_file(info.vdisk_id)))

    try:
        trio.run(write_all)
    except CoordinationError as error:
        raise CoordinatorChoiceError(f"coordinator {url}: {error}") from None


def coordinator_of(directory: Path) -> str:
    return str(CoordinatorUrl.parse(ClusterPaths(directory).coordinator()))
