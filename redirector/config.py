"""What one node's redirector needs to know: where it listens, the cluster's stargates, the
vDisks it may redirect, and its timers. Built from DIR/cluster.json (the cluster's spec)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from redirector.policy import PlacementMode, spread_node
from topology.naming import DEFAULT_PORTAL_GROUP_TAG, target_name_for
from topology.settings import HealthChecks
from topology.spec import ClusterPaths, ClusterSpec, NodeSpec, list_vdisks, load_vms

DEFAULT_LOGIN_TIMEOUT = 15.0
# Until a stargate has answered once, failures are not reported as "down": at `cluster up`
# the redirector may start before the stargates listen, and a stargate seen down must then
# stay healthy for the whole stable window before it gets its vDisks.
DEFAULT_STARTUP_GRACE = 10.0
# How long a remote stargate lets failing-back sessions log out before it drops them.
DEFAULT_FAILBACK_LOGOUT_SECONDS = 5


def redirector_page_url(node: NodeSpec) -> str:
    """The redirector's HTTP page (faults, counters): its address, the CVMs' page port."""
    return f"http://{node.redirector_address}:{node.http_port}"


@dataclass(frozen=True)
class Timers:
    health: HealthChecks | None = None  # None: cluster.json's
    login_timeout: float = DEFAULT_LOGIN_TIMEOUT
    startup_grace: float = DEFAULT_STARTUP_GRACE
    failback_logout_seconds: int = DEFAULT_FAILBACK_LOGOUT_SECONDS


@dataclass(frozen=True)
class RedirectorConfig:
    directory: Path
    spec: ClusterSpec
    node_id: int
    timers: Timers = Timers()
    portal_group_tag: int = DEFAULT_PORTAL_GROUP_TAG
    catalog: VDiskCatalog = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "catalog", VDiskCatalog(self.directory))  # frozen dataclass

    @classmethod
    def load(
        cls, directory: Path | str, node_id: int, timers: Timers | None = None
    ) -> RedirectorConfig:
        spec = ClusterSpec.load(directory)
        spec.node(node_id)  # raises ClusterSpecError for an unknown node
        return cls(Path(directory), spec, node_id, timers or Timers())

    @property
    def node(self) -> NodeSpec:
        return self.spec.node(self.node_id)

    @property
    def paths(self) -> ClusterPaths:
        return ClusterPaths(self.directory)

    @property
    def health(self) -> HealthChecks:
        return self.timers.health or self.spec.health

    @property
    def stable_window(self) -> float:
        return self.spec.stable_window

    @property
    def placement_mode(self) -> PlacementMode:
        return PlacementMode(self.spec.placement)

    def node_key(self, node_id: int) -> str:
        """The policy's name for a node (PlacementPolicy works on strings)."""
        return str(node_id)

    def node_of(self, key: str) -> NodeSpec:
        return self.spec.node(int(key))

    def vdisk_targets(self) -> dict[str, str]:
        """Target name -> vDisk id of every vDisk of the cluster (vDisks come and go while
        the redirector runs)."""
        return self.catalog.targets()

    def home_of(self, vdisk_id: str) -> str | None:
        """The policy key of the vDisk's home CVM when it is not the local one: the vDisks
        of a load-balanced VM are spread over every CVM."""
        node_id = self.catalog.spread_homes(self.spec.node_ids).get(vdisk_id)
        return None if node_id is None else self.node_key(node_id)


@dataclass
class VDiskCatalog:
    """The cluster's vDisks, read again only when DIR/vdisks changed (its mtime): every
    login asks, and a failover is a burst of logins."""

    directory: Path
    _stamp: int | None = None
    _targets: dict[str, str] = field(default_factory=dict)
    _vms_stamp: int | None = None
    _homes: dict[str, int] = field(default_factory=dict)

    def spread_homes(self, node_ids: list[int]) -> dict[str, int]:
        """vDisk id -> home node of each vDisk of a load-balanced VM (read again when
        DIR/vms changed)."""
        try:
            stamp = ClusterPaths(self.directory).vms.stat().st_mtime_ns
        except FileNotFoundError:
            return {}
        if stamp != self._vms_stamp:
            self._homes = {
                vdisk_id: spread_node(vm.name, index, node_ids)
                for vm in load_vms(self.directory)
                if vm.load_balance
                for index, vdisk_id in enumerate(vm.vdisk_ids)
            }
            self._vms_stamp = stamp
        return self._homes

    def targets(self) -> dict[str, str]:
        try:
            stamp = ClusterPaths(self.directory).vdisks.stat().st_mtime_ns
        except FileNotFoundError:
            return {}
        if stamp != self._stamp:
            infos = list_vdisks(self.directory)
            self._targets = {
                target_name_for(info.vdisk_id): info.vdisk_id
                for info in infos
                if info.volume_group is None  # the DSIP's, through its virtual targets
            }
            self._stamp = stamp
        return self._targets
