"""The cluster's shape on disk: DIR/cluster.json, the directory layout, VMs and vDisks.

One machine stands in for N nodes. Node ``i`` (1-based) has a redirector at
``base + i*256 + 1`` and a CVM (stargate) at ``base + i*256 + 2``, both on port 3261, and the
stargate's HTTP page on port 2009 of the CVM's address. Every address an initiator is given
can be replaced by an advertised one (NAT, a QEMU guest): the redirector's TargetAddress and
the discovery answers use the advertised addresses, the processes bind the others.

Everything here is plain files, read by the stargates, the redirectors and the CLI alike.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from iscsicore.portal import Portal
from topology.naming import target_name_for
from topology.settings import (
    DEFAULT_FAILBACK,
    DEFAULT_HEALTH,
    FailbackMode,
    HealthChecks,
    SettingsError,
)
from topology.vdisk import VDiskMeta, atomic_write
from topology.volume_group import volume_group_of

DEFAULT_BASE_ADDRESS = "127.77.0.0"
DEFAULT_ISCSI_PORT = 3261
DEFAULT_HTTP_PORT = 2009
DEFAULT_DSIP_PORT = 3260  # the Data Services IP is a standard iSCSI portal
DSIP_OFFSET = 3  # by default the DSIP is the cluster's base address + 3 (no node uses it)
DEFAULT_STABLE_WINDOW = 300.0
MAX_RELEASE_TIMEOUT = 600.0  # seconds; a release timeout is in (0, this]
MAX_SESSIONS_PER_DISK = 8
SPEC_FILE = "cluster.json"

Placement = Literal["round-robin", "random"]
PLACEMENTS: tuple[Placement, ...] = ("round-robin", "random")

# A VM name becomes part of its vDisks' ids and so of IQNs: lowercase, digits, '-' and '.'.
VM_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")


class ClusterSpecError(ValueError):
    """cluster.json missing or invalid, or a request that contradicts it."""


@dataclass(frozen=True)
class ClusterPaths:
    """The layout of a cluster directory (see DESIGN.md, "The cluster")."""

    root: Path

    @property
    def spec_file(self) -> Path:
        return self.root / SPEC_FILE

    @property
    def vdisks(self) -> Path:
        return self.root / "vdisks"

    @property
    def vms(self) -> Path:
        return self.root / "vms"

    @property
    def ownership(self) -> Path:
        return self.root / "ownership"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def make_dirs(self) -> None:
        for directory in (self.root, self.vdisks, self.vms, self.ownership, self.run, self.logs):
            directory.mkdir(parents=True, exist_ok=True)

    def vm_file(self, name: str) -> Path:
        return self.vms / f"{name}.json"

    def vdisk_meta_file(self, vdisk_id: str) -> Path:
        return self.vdisks / f"{vdisk_id}.json"

    def ownership_file(self, vdisk_id: str) -> Path:
        return self.ownership / vdisk_id

    @property
    def coordinator_file(self) -> Path:
        """The --coordinator `cluster up` was given (absent: the directory itself)."""
        return self.root / "coordinator"

    def coordinator(self) -> str:
        try:
            return self.coordinator_file.read_text().strip() or "dir"
        except FileNotFoundError:
            return "dir"

    @property
    def evidence(self) -> Path:
        return self.root / "evidence"

    def pid_file(self, process: str) -> Path:
        return self.run / f"{process}.pid"

    def log_file(self, process: str) -> Path:
        return self.logs / f"{process}.log"


def stargate_process_name(node_id: int) -> str:
    return f"stargate-{node_id}"


def redirector_process_name(node_id: int) -> str:
    return f"redirector-{node_id}"


@dataclass(frozen=True, kw_only=True)
class NodeSpec:
    """One node: its CVM (stargate) and its redirector, bound and advertised addresses.

    The advertised addresses default to the bound ones; ``*_advertised_port`` likewise.
    """

    node_id: int
    cvm_address: str
    cvm_port: int = DEFAULT_ISCSI_PORT
    cvm_advertised_address: str = ""
    cvm_advertised_port: int = 0
    redirector_address: str
    redirector_port: int = DEFAULT_ISCSI_PORT
    redirector_advertised_address: str = ""
    redirector_advertised_port: int = 0
    http_port: int = DEFAULT_HTTP_PORT

    def __post_init__(self) -> None:
        # Frozen: fill the advertised defaults through object.__setattr__.
        if not self.cvm_advertised_address:
            object.__setattr__(self, "cvm_advertised_address", self.cvm_address)
        if not self.cvm_advertised_port:
            object.__setattr__(self, "cvm_advertised_port", self.cvm_port)
        if not self.redirector_advertised_address:
            object.__setattr__(self, "redirector_advertised_address", self.redirector_address)
        if not self.redirector_advertised_port:
            object.__setattr__(self, "redirector_advertised_port", self.redirector_port)

    @property
    def stargate_name(self) -> str:
        return stargate_process_name(self.node_id)

    @property
    def redirector_name(self) -> str:
        return redirector_process_name(self.node_id)

    @property
    def cvm_portal(self) -> str:
        """Where an initiator reaches this CVM: the TargetAddress of a redirect."""
        return Portal(self.cvm_advertised_address, self.cvm_advertised_port).host_port

    @property
    def redirector_portal(self) -> str:
        """Where an initiator reaches this node's redirector (discovery answers use it)."""
        return Portal(self.redirector_advertised_address, self.redirector_advertised_port).host_port

    @property
    def http_url(self) -> str:
        """The stargate's stats/control page, as the cluster's own processes reach it."""
        return f"http://{Portal(self.cvm_address, self.http_port).host_port}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> NodeSpec:
        known = {name for name in cls.__dataclass_fields__}
        unknown = set(raw) - known
        if unknown:
            raise ClusterSpecError(f"unknown node fields {sorted(unknown)}")
        return cls(**raw)


def node_addresses(base_address: str, node_id: int) -> tuple[str, str]:
    """(redirector, cvm) addresses of node ``node_id`` for a cluster based at ``base_address``."""
    base = ipaddress.IPv4Address(base_address)
    node_base = int(base) + (node_id << 8)
    if not ipaddress.IPv4Address(node_base + 2).is_loopback:
        raise ClusterSpecError(f"node {node_id} of base {base_address} leaves 127.0.0.0/8")
    return str(ipaddress.IPv4Address(node_base + 1)), str(ipaddress.IPv4Address(node_base + 2))


@dataclass(frozen=True)
class Advertisement:
    """One ``--advertise``: ``N=ADDR[:PORT]`` (CVM N), ``cvm:N=...`` or ``redirector:N=...``."""

    role: Literal["cvm", "redirector"]
    node_id: int
    address: str
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> Advertisement:
        target, sep, value = text.partition("=")
        if not sep or not value:
            raise ClusterSpecError(f"--advertise {text!r}: expected [cvm:|redirector:]NODE=ADDR")
        role_text, _, node_text = target.rpartition(":")
        role = role_text or "cvm"
        if role not in ("cvm", "redirector") or not node_text.isdigit():
            raise ClusterSpecError(f"--advertise {text!r}: expected [cvm:|redirector:]NODE=ADDR")
        address, port = _split_host_port(value)
        return cls(cast(Literal["cvm", "redirector"], role), int(node_text), address, port)


def _split_host_port(value: str) -> tuple[str, int | None]:
    if value.startswith("["):  # [v6]:port or [v6]
        host, _, rest = value[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    if value.count(":") == 1:
        host, port_text = value.split(":")
        return host, int(port_text)
    return value, None


def normal_dsip(text: str) -> str:
    """``ADDR[:PORT]`` as ``ADDR:PORT`` (port 3260 by default); ClusterSpecError if it is
    not an IP address and a port."""
    try:
        portal = Portal.parse(text, default_port=DEFAULT_DSIP_PORT, what="DSIP")
        ipaddress.ip_address(portal.host)
    except ValueError as error:
        raise ClusterSpecError(f"DSIP {text!r}: {error}") from None
    if portal.tpgt is not None:
        raise ClusterSpecError(f"DSIP {text!r}: ADDR[:PORT], without a portal group tag")
    return portal.host_port


def valid_release_timeout(seconds: float) -> bool:
    return 0 < seconds <= MAX_RELEASE_TIMEOUT


@dataclass(frozen=True)
class ClusterSpec:
    nodes: list[NodeSpec]
    stable_window: float = DEFAULT_STABLE_WINDOW
    placement: Placement = "round-robin"
    base_address: str = DEFAULT_BASE_ADDRESS
    # How long a vDisk's owner may take to release it before another stargate takes it
    # over (the CVMs' `--release-timeout` wins); None: the CVM's default (5 s).
    release_timeout: float | None = None
    failback: FailbackMode = DEFAULT_FAILBACK
    health: HealthChecks = DEFAULT_HEALTH
    # The Data Services IP, ADDR:PORT, where external initiators discover and log in to
    # volume groups; None: the default, base address + 3, port 3260.
    dsip: str | None = None
    # The DSIP as initiators reach it (NAT, a QEMU guest): what discovery at the DSIP names as
    # every target's address; None: the DSIP itself.
    dsip_advertise: str | None = None

    def __post_init__(self) -> None:
        if not self.nodes:
            raise ClusterSpecError("a cluster has at least one node")
        ids = [node.node_id for node in self.nodes]
        if len(set(ids)) != len(ids):
            raise ClusterSpecError(f"node ids must be unique: {ids}")
        if self.placement not in PLACEMENTS:
            raise ClusterSpecError(f"placement must be one of {PLACEMENTS}")
        if self.stable_window < 0:
            raise ClusterSpecError("the stable window cannot be negative")
        if self.release_timeout is not None and not valid_release_timeout(self.release_timeout):
            raise ClusterSpecError(
                f"the release timeout must be in (0, {MAX_RELEASE_TIMEOUT:g}] seconds"
            )
        if self.dsip is not None and self.dsip != normal_dsip(self.dsip):
            raise ClusterSpecError(f"dsip {self.dsip!r}: write it as ADDR:PORT")
        if self.dsip_advertise is not None and self.dsip_advertise != normal_dsip(
            self.dsip_advertise
        ):
            raise ClusterSpecError(f"dsip_advertise {self.dsip_advertise!r}: write it as ADDR:PORT")

    # -- lookup -------------------------------------------------------------------------

    def node(self, node_id: int) -> NodeSpec:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise ClusterSpecError(f"no node {node_id} (nodes: {self.node_ids})")

    @property
    def node_ids(self) -> list[int]:
        return [node.node_id for node in self.nodes]

    @property
    def dsip_portal(self) -> str:
        """The Data Services IP as ADDR:PORT."""
        if self.dsip is not None:
            return self.dsip
        base = ipaddress.IPv4Address(self.base_address)
        return f"{ipaddress.IPv4Address(int(base) + DSIP_OFFSET)}:{DEFAULT_DSIP_PORT}"

    @property
    def dsip_advertised_portal(self) -> str:
        """The DSIP as initiators reach it, ADDR:PORT (the bound one unless advertised)."""
        return self.dsip_advertise or self.dsip_portal

    # -- files --------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: Path | str,
        nodes: int,
        *,
        stable_window: float = DEFAULT_STABLE_WINDOW,
        placement: Placement = "round-robin",
        base_address: str = DEFAULT_BASE_ADDRESS,
        advertise: list[Advertisement] | None = None,
        cvm_port: int = DEFAULT_ISCSI_PORT,
        redirector_port: int = DEFAULT_ISCSI_PORT,
        http_port: int = DEFAULT_HTTP_PORT,
        release_timeout: float | None = None,
        failback: FailbackMode = DEFAULT_FAILBACK,
        health: HealthChecks = DEFAULT_HEALTH,
    ) -> ClusterSpec:
        """Lay out ``directory`` and write cluster.json for ``nodes`` nodes (ids 1..nodes)."""
        spec = cls.build(
            nodes,
            stable_window=stable_window,
            placement=placement,
            base_address=base_address,
            advertise=advertise,
            cvm_port=cvm_port,
            redirector_port=redirector_port,
            http_port=http_port,
            release_timeout=release_timeout,
            failback=failback,
            health=health,
        )
        spec.save(directory)
        return spec

    @classmethod
    def build(
        cls,
        nodes: int,
        *,
        stable_window: float = DEFAULT_STABLE_WINDOW,
        placement: Placement = "round-robin",
        base_address: str = DEFAULT_BASE_ADDRESS,
        advertise: list[Advertisement] | None = None,
        cvm_port: int = DEFAULT_ISCSI_PORT,
        redirector_port: int = DEFAULT_ISCSI_PORT,
        http_port: int = DEFAULT_HTTP_PORT,
        release_timeout: float | None = None,
        failback: FailbackMode = DEFAULT_FAILBACK,
        health: HealthChecks = DEFAULT_HEALTH,
    ) -> ClusterSpec:
        """The spec of ``nodes`` nodes (ids 1..nodes), without writing it anywhere."""
        if nodes < 1:
            raise ClusterSpecError("a cluster has at least one node")
        overrides = {(ad.role, ad.node_id): ad for ad in advertise or []}
        for role, node_id in overrides:
            if not 1 <= node_id <= nodes:
                raise ClusterSpecError(f"--advertise names {role} {node_id}: no such node")
        node_specs = []
        for node_id in range(1, nodes + 1):
            redirector_address, cvm_address = node_addresses(base_address, node_id)
            cvm_ad = overrides.get(("cvm", node_id))
            redirector_ad = overrides.get(("redirector", node_id))
            node_specs.append(
                NodeSpec(
                    node_id=node_id,
                    cvm_address=cvm_address,
                    cvm_port=cvm_port,
                    cvm_advertised_address=cvm_ad.address if cvm_ad else "",
                    cvm_advertised_port=(cvm_ad.port or 0) if cvm_ad else 0,
                    redirector_address=redirector_address,
                    redirector_port=redirector_port,
                    redirector_advertised_address=redirector_ad.address if redirector_ad else "",
                    redirector_advertised_port=(redirector_ad.port or 0) if redirector_ad else 0,
                    http_port=http_port,
                )
            )
        return cls(
            node_specs, stable_window, placement, base_address, release_timeout, failback, health
        )

    def save(self, directory: Path | str) -> None:
        paths = ClusterPaths(Path(directory))
        paths.make_dirs()
        atomic_write(paths.spec_file, (json.dumps(self.to_json(), indent=2) + "\n").encode())

    @classmethod
    def load(cls, directory: Path | str) -> ClusterSpec:
        path = ClusterPaths(Path(directory)).spec_file
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ClusterSpecError(f"{path} does not exist: run `stargate cluster up`") from None
        except json.JSONDecodeError as error:
            raise ClusterSpecError(f"{path}: {error}") from None
        return cls.from_json(raw)

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "nodes": [node.to_json() for node in self.nodes],
            "stable_window": self.stable_window,
            "placement": self.placement,
            "base_address": self.base_address,
            "failback": self.failback.value,
            "health": self.health.to_json(),
        }
        if self.release_timeout is not None:
            document["release_timeout"] = self.release_timeout
        if self.dsip is not None:
            document["dsip"] = self.dsip
        if self.dsip_advertise is not None:
            document["dsip_advertise"] = self.dsip_advertise
        return document

    @classmethod
    def from_json(cls, raw: Any) -> ClusterSpec:
        if not isinstance(raw, dict) or not isinstance(raw.get("nodes"), list):
            raise ClusterSpecError("cluster.json must be an object with a 'nodes' list")
        return cls(
            nodes=[NodeSpec.from_json(node) for node in raw["nodes"]],
            stable_window=float(raw.get("stable_window", DEFAULT_STABLE_WINDOW)),
            placement=raw.get("placement", "round-robin"),
            base_address=str(raw.get("base_address", DEFAULT_BASE_ADDRESS)),
            release_timeout=_optional_seconds(raw.get("release_timeout")),
            failback=_failback(raw.get("failback", DEFAULT_FAILBACK.value)),
            health=_health(raw.get("health", {})),
            dsip=None if raw.get("dsip") is None else str(raw["dsip"]),
            dsip_advertise=(
                None if raw.get("dsip_advertise") is None else str(raw["dsip_advertise"])
            ),
        )


def _failback(value: Any) -> FailbackMode:
    try:
        return FailbackMode.parse(str(value))
    except SettingsError as error:
        raise ClusterSpecError(str(error)) from None


def _health(value: Any) -> HealthChecks:
    try:
        return HealthChecks.from_json(value)
    except (SettingsError, TypeError) as error:
        raise ClusterSpecError(f"health: {error}") from None


def _optional_seconds(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ClusterSpecError(f"release_timeout must be a number of seconds, not {value!r}")
    return float(value)


# -- VMs and vDisks ----------------------------------------------------------------------


@dataclass
class VmRecord:
    """DIR/vms/<name>.json: a VM, the node it runs on, its vDisks (in disk order), how
    many sessions it opens per vDisk (AHV Turbo: 2 for a VM with 2 or more vCPUs), and
    whether its vDisks are spread over every CVM (a load-balanced attachment) instead of
    served by the local one."""

    name: str
    home_node: int
    vdisk_ids: list[str] = field(default_factory=list)
    sessions_per_disk: int = 1
    load_balance: bool = False

    def save(self, paths: ClusterPaths) -> None:
        atomic_write(paths.vm_file(self.name), (json.dumps(asdict(self), indent=2) + "\n").encode())

    @classmethod
    def load(cls, path: Path) -> VmRecord:
        raw = json.loads(path.read_text())
        return cls(
            str(raw["name"]),
            int(raw["home_node"]),
            [str(v) for v in raw["vdisk_ids"]],
            int(raw.get("sessions_per_disk", 1)),
            bool(raw.get("load_balance", False)),
        )


@dataclass(frozen=True)
class VDiskInfo:
    """One vDisk as the cluster knows it (its store's metadata and the VM owning it)."""

    vdisk_id: str
    size: int
    block_size: int
    vm: str | None
    home_node: int | None

    @property
    def iqn(self) -> str:
        return target_name_for(self.vdisk_id)

    @property
    def volume_group(self) -> str | None:
        """The volume group the vDisk is a disk of (its target is the group's, never a
        vmdisk target of its own), or None."""
        return volume_group_of(self.vdisk_id)

    def to_json(self, spec: ClusterSpec | None = None) -> dict[str, Any]:
        document: dict[str, Any] = {
            "id": self.vdisk_id,
            "iqn": self.iqn,
            "size": self.size,
            "block_size": self.block_size,
            "vm": self.vm,
            "home_node": self.home_node,
        }
        if self.volume_group is not None:
            document["volume_group"] = self.volume_group
            document["iqn"] = None  # reached only through the group's virtual target
        if spec is not None and self.home_node is not None:
            document["portal"] = spec.node(self.home_node).redirector_portal
        return document


def load_vms(directory: Path | str) -> list[VmRecord]:
    paths = ClusterPaths(Path(directory))
    if not paths.vms.is_dir():
        return []
    return [VmRecord.load(path) for path in sorted(paths.vms.glob("*.json"))]


def list_vdisks(directory: Path | str) -> list[VDiskInfo]:
    """Every vDisk under DIR/vdisks (sorted by id), with its VM and home node if any."""
    paths = ClusterPaths(Path(directory))
    owner_vm = {vdisk: vm for vm in load_vms(directory) for vdisk in vm.vdisk_ids}
    infos = []
    if not paths.vdisks.is_dir():
        return []
    for meta_path in sorted(paths.vdisks.glob("*.json")):
        if meta_path.name.endswith(".pr.json") or meta_path.name.startswith("."):
            continue
        meta = VDiskMeta.load(meta_path)
        vm = owner_vm.get(meta.vdisk_id)
        infos.append(
            VDiskInfo(
                meta.vdisk_id,
                meta.size,
                meta.block_size,
                vm.name if vm else None,
                vm.home_node if vm else None,
            )
        )
    return infos
