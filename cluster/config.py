"""A cluster as a TOML file: what `stargate cluster up --config FILE` builds and what
`stargate cluster save --dir DIR` writes (docs/examples/cluster.toml is a complete one)::

    nodes = 3                  base_address, stable_window, placement, release_timeout,
                               advertise = ["[cvm:|redirector:]NODE=ADDR[:PORT]", ...],
                               redirectors = true|false, failback = "kill"|"logout",
                               dsip = "ADDR[:PORT]" (the Data Services IP),
                               dsip_advertise = "ADDR[:PORT]" (the DSIP as initiators
                               reach it),
                               coordinator = "dir"|"zk://HOST:PORT/PATH"
    [health]                   nop_interval, nop_timeout, misses, connect_timeout
    [[vm]]                     name, node, disks, size ("1G" or bytes), sessions_per_disk,
                               load_balance
    [[volume_group]]           name, disks, size, attach = [IQN, ...], chap and mutual_chap
                               ("USER:SECRET"), virtual_targets, preferred_node,
                               load_balance, stable_window

`ClusterConfig` is what both the file and `cluster up`'s flags fill (flags win; on an
existing directory, what neither gives is cluster.json's); `ClusterSpec` (cluster.json)
stays the rule book for the nodes' settings. A saved file holds the shape of the cluster,
not its data: `up --config` makes new, empty vDisks of the same sizes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, cast

import tomli_w

from iscsicore.chap import ChapSecrets
from topology.config_file import ConfigDocument, ScalarSpec, TableReader
from topology.coordination import CoordinatorUrl
from topology.settings import (
    DEFAULT_FAILBACK,
    DEFAULT_HEALTH,
    HEALTH_KNOBS,
    FailbackMode,
    HealthChecks,
)
from topology.spec import (
    DEFAULT_BASE_ADDRESS,
    DEFAULT_STABLE_WINDOW,
    MAX_RELEASE_TIMEOUT,
    MAX_SESSIONS_PER_DISK,
    PLACEMENTS,
    VM_NAME_RE,
    Advertisement,
    ClusterPaths,
    ClusterSpec,
    ClusterSpecError,
    Placement,
    list_vdisks,
    load_vms,
    node_addresses,
    normal_dsip,
    valid_release_timeout,
)
from topology.vdisk import parse_size
from topology.volume_group import (
    DEFAULT_VG_STABLE_WINDOW,
    DEFAULT_VIRTUAL_TARGETS,
    VolumeGroup,
    VolumeGroupError,
    VolumeGroupStore,
    check_initiator_name,
)

DEFAULT_VM_SIZE = 1 << 30  # as `stargate vm create`'s --size
Role = Literal["cvm", "redirector"]
_SIZE_UNITS = (("P", 50), ("T", 40), ("G", 30), ("M", 20), ("K", 10))


@dataclass(frozen=True, slots=True)
class VmConfig:
    """A VM as `stargate vm create NAME --node N --disks D --size S` makes it."""

    name: str
    node: int
    disks: int = 1
    size: int = DEFAULT_VM_SIZE  # bytes, each vDisk
    sessions_per_disk: int = 1
    load_balance: bool = False  # its vDisks spread over every CVM

    def to_toml(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "name": self.name,
            "node": self.node,
            "disks": self.disks,
            "size": _size(self.size),
        }
        if self.sessions_per_disk != 1:
            document["sessions_per_disk"] = self.sessions_per_disk
        if self.load_balance:
            document["load_balance"] = True
        return document


@dataclass(frozen=True, slots=True)
class VolumeGroupConfig:
    """A volume group as `stargate vg create` makes it."""

    name: str
    disks: int
    size: int  # bytes, each disk
    attach: tuple[str, ...] = ()
    chap: ChapSecrets | None = None
    mutual_chap: ChapSecrets | None = None
    virtual_targets: int = DEFAULT_VIRTUAL_TARGETS
    preferred_node: int | None = None
    load_balance: bool = False
    stable_window: float = DEFAULT_VG_STABLE_WINDOW

    def to_toml(self) -> dict[str, Any]:
        document: dict[str, Any] = {"name": self.name, "disks": self.disks}
        document["size"] = _size(self.size)
        if self.attach:
            document["attach"] = list(self.attach)
        for key, secrets in (("chap", self.chap), ("mutual_chap", self.mutual_chap)):
            if secrets is not None:
                document[key] = f"{secrets.username}:{secrets.secret.decode()}"
        if self.virtual_targets != DEFAULT_VIRTUAL_TARGETS:
            document["virtual_targets"] = self.virtual_targets
        if self.preferred_node is not None:
            document["preferred_node"] = self.preferred_node
        if self.load_balance:
            document["load_balance"] = True
        if self.stable_window != DEFAULT_VG_STABLE_WINDOW:
            document["stable_window"] = self.stable_window
        return document

    @classmethod
    def from_group(cls, group: VolumeGroup, size: int) -> VolumeGroupConfig:
        return cls(
            group.name,
            len(group.vdisk_ids),
            size,
            group.attachments,
            group.chap,
            group.mutual_chap,
            group.virtual_targets,
            group.preferred_node,
            group.load_balance,
            group.stable_window,
        )


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    nodes: int
    base_address: str = DEFAULT_BASE_ADDRESS
    stable_window: float = DEFAULT_STABLE_WINDOW
    placement: Placement = "round-robin"
    release_timeout: float | None = None  # None: the CVMs' default
    advertise: tuple[Advertisement, ...] = ()
    redirectors: bool = True
    failback: FailbackMode = DEFAULT_FAILBACK
    health: HealthChecks = DEFAULT_HEALTH
    dsip: str | None = None  # None: base address + 3, port 3260
    dsip_advertise: str | None = None  # None: the DSIP itself
    coordinator: str | None = None  # None: the directory's recorded one, else "dir"
    vms: tuple[VmConfig, ...] = ()
    volume_groups: tuple[VolumeGroupConfig, ...] = ()

    def spec(self) -> ClusterSpec:
        """cluster.json for this configuration (raises ClusterSpecError)."""
        spec = ClusterSpec.build(
            self.nodes,
            stable_window=self.stable_window,
            placement=self.placement,
            base_address=self.base_address,
            advertise=list(self.advertise),
            release_timeout=self.release_timeout,
            failback=self.failback,
            health=self.health,
        )
        return replace(spec, dsip=self.dsip, dsip_advertise=self.dsip_advertise)

    @classmethod
    def from_spec(cls, spec: ClusterSpec) -> ClusterConfig:
        """The settings of cluster.json (no VMs); its advertised addresses as --advertise."""
        advertise = []
        for node in spec.nodes:
            for role, bound, port, shown, shown_port in (
                ("cvm", node.cvm_address, node.cvm_port,
                 node.cvm_advertised_address, node.cvm_advertised_port),
                ("redirector", node.redirector_address, node.redirector_port,
                 node.redirector_advertised_address, node.redirector_advertised_port),
            ):  # fmt: skip
                if (shown, shown_port) != (bound, port):
                    ad_port = None if shown_port == port else shown_port
                    advertise.append(Advertisement(cast(Role, role), node.node_id, shown, ad_port))
        return cls(
            nodes=len(spec.nodes),
            base_address=spec.base_address,
            stable_window=spec.stable_window,
            placement=spec.placement,
            release_timeout=spec.release_timeout,
            advertise=tuple(advertise),
            failback=spec.failback,
            health=spec.health,
            dsip=spec.dsip,
            dsip_advertise=spec.dsip_advertise,
        )

    def to_toml(self) -> str:
        document: dict[str, Any] = {
            "nodes": self.nodes,
            "base_address": self.base_address,
            "stable_window": self.stable_window,
            "placement": self.placement,
        }
        if self.release_timeout is not None:
            document["release_timeout"] = self.release_timeout
        if self.advertise:
            document["advertise"] = [advertisement_text(ad) for ad in self.advertise]
        document["redirectors"] = self.redirectors
        document["failback"] = self.failback.value
        if self.dsip is not None:
            document["dsip"] = self.dsip
        if self.dsip_advertise is not None:
            document["dsip_advertise"] = self.dsip_advertise
        if self.coordinator is not None:
            document["coordinator"] = self.coordinator
        document["health"] = self.health.to_json()
        # One [[vm]] table each, as people write them (tomli_w would inline short ones).
        vms = "".join(f"\n[[vm]]\n{tomli_w.dumps(vm.to_toml())}" for vm in self.vms)
        groups = "".join(
            f"\n[[volume_group]]\n{tomli_w.dumps(group.to_toml())}" for group in self.volume_groups
        )
        return tomli_w.dumps(document) + vms + groups


def advertisement_text(ad: Advertisement) -> str:
    host = f"[{ad.address}]" if ":" in ad.address else ad.address
    return f"{ad.role}:{ad.node_id}={host}{'' if ad.port is None else f':{ad.port}'}"


def _size(size: int) -> str | int:
    """The shortest exact form: "4G", "512M", else the byte count."""
    for unit, shift in _SIZE_UNITS:
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return size


# ---------------------------------------------------------------------------------------
# The file


def read_file(document: ConfigDocument) -> dict[str, Any]:
    """The ClusterConfig fields ``document`` sets; unknown keys are errors."""
    root = document.root()
    values: dict[str, Any] = {}
    for name, (getter, converter) in SCALARS.items():
        if (value := getter(root, name)) is not None:
            values[name] = root.convert(name, value, converter)
    health = root.subtable("health")
    if health is not None:
        values["health"] = _read_health(health)
    vms = tuple(_read_vm(table) for table in root.subtables("vm"))
    if vms:
        values["vms"] = vms
    groups = tuple(_read_volume_group(table) for table in root.subtables("volume_group"))
    if groups:
        values["volume_groups"] = groups
    root.finish()
    return values


def _read_health(table: TableReader) -> HealthChecks:
    """[health]: each knob given replaces the default (SettingsError names the knob)."""
    knobs: dict[str, Any] = {}
    for name in HEALTH_KNOBS:
        value = table.integer(name) if name == "misses" else table.number(name)
        if value is not None:
            knobs[name] = table.convert(name, value, functools.partial(_knob, name))
    table.finish()
    return replace(DEFAULT_HEALTH, **knobs)


def _knob(name: str, value: Any) -> Any:
    replace(DEFAULT_HEALTH, **{name: value})  # validates; raises SettingsError
    return value


def _read_vm(table: TableReader) -> VmConfig:
    name = table.convert("name", table.required("name", table.string), _vm_name)
    node = table.required("node", table.integer)
    disks = table.integer("disks")
    size = table.typed("size", (str, int), 'a size ("1G") or a byte count')
    sessions = table.integer("sessions_per_disk")
    load_balance = table.typed("load_balance", (bool,), "true or false")
    table.finish()
    return VmConfig(
        name,
        node,
        1 if disks is None else table.convert("disks", disks, _at_least_one),
        DEFAULT_VM_SIZE if size is None else table.convert("size", size, parse_size),
        1 if sessions is None else table.convert("sessions_per_disk", sessions, _sessions),
        bool(load_balance),
    )


def _read_volume_group(table: TableReader) -> VolumeGroupConfig:
    name = table.convert("name", table.required("name", table.string), _vm_name)
    disks = table.convert("disks", table.required("disks", table.integer), _at_least_one)
    size = table.required("size", lambda key: table.typed(key, (str, int), "a size or bytes"))
    attach = table.strings("attach") or []
    chap = table.string("chap")
    mutual_chap = table.string("mutual_chap")
    virtual_targets = table.integer("virtual_targets")
    preferred_node = table.integer("preferred_node")
    load_balance = table.boolean("load_balance")
    stable_window = table.number("stable_window")
    table.finish()
    config = VolumeGroupConfig(
        name,
        disks,
        table.convert("size", size, parse_size),
        tuple(table.convert("attach", text, _initiator) for text in attach),
        None if chap is None else table.convert("chap", chap, _chap),
        None if mutual_chap is None else table.convert("mutual_chap", mutual_chap, _chap),
        DEFAULT_VIRTUAL_TARGETS if virtual_targets is None else virtual_targets,
        preferred_node,
        bool(load_balance),
        DEFAULT_VG_STABLE_WINDOW if stable_window is None else float(stable_window),
    )
    try:  # the rules of a group (virtual targets' range, mutual CHAP needs CHAP, ...)
        VolumeGroup(
            name, VolumeGroup.disk_ids(name, disks), config.attach, config.virtual_targets,
            config.chap, config.mutual_chap, stable_window=config.stable_window,
        )  # fmt: skip
    except VolumeGroupError as error:
        raise table.error("name", str(error)) from None
    return config


def _initiator(text: str) -> str:
    check_initiator_name(text)  # its VolumeGroupError is a ValueError
    return text


def _chap(text: str) -> ChapSecrets:
    return ChapSecrets.parse(text)


def _sessions(value: int) -> int:
    if not 1 <= value <= MAX_SESSIONS_PER_DISK:
        raise ValueError(f"must be 1..{MAX_SESSIONS_PER_DISK}, not {value}")
    return value


def _at_least_one(value: int) -> int:
    if value < 1:
        raise ValueError(f"must be at least 1, not {value}")
    return value


def _base_address(value: str) -> str:
    try:
        node_addresses(value, 1)
    except (ClusterSpecError, ValueError) as error:
        raise ValueError(str(error)) from None
    return value


def _stable_window(value: float) -> float:
    if value < 0:
        raise ValueError("the stable window cannot be negative")
    return value


def _placement(value: str) -> Placement:
    if value not in PLACEMENTS:
        raise ValueError(f"{value!r} is not one of {', '.join(PLACEMENTS)}")
    return cast(Placement, value)


def _release_timeout(value: float) -> float:
    if not valid_release_timeout(value):
        raise ValueError(f"must be in (0, {MAX_RELEASE_TIMEOUT:g}] seconds")
    return value


def _coordinator(text: str) -> str:
    return str(CoordinatorUrl.parse(text))  # its CoordinatorUrlError is a ValueError


def _advert(text: str) -> Advertisement:
    return Advertisement.parse(text)  # its ClusterSpecError is a ValueError


def _adverts(texts: list[str]) -> tuple[Advertisement, ...]:
    return tuple(_advert(text) for text in texts)


# The top-level keys and how to read and convert them, in reading order (as the target's
# stargate.config.SCALARS).
SCALARS: dict[str, ScalarSpec] = {
    "nodes": (TableReader.integer, _at_least_one),
    "base_address": (TableReader.string, _base_address),
    "stable_window": (TableReader.number, _stable_window),
    "placement": (TableReader.string, _placement),
    "release_timeout": (TableReader.number, _release_timeout),
    "advertise": (TableReader.strings, _adverts),
    "redirectors": (TableReader.boolean, bool),
    "failback": (TableReader.string, FailbackMode.parse),
    "dsip": (TableReader.string, normal_dsip),  # its ClusterSpecError is a ValueError
    "dsip_advertise": (TableReader.string, normal_dsip),
    "coordinator": (TableReader.string, _coordinator),
}


def _vm_name(value: str) -> str:
    if not VM_NAME_RE.match(value):
        raise ValueError(
            f"{value!r}: use lowercase letters, digits, '-' and '.' (it goes into IQNs)"
        )
    return value


def cluster_config(
    document: ConfigDocument | None, flags: dict[str, Any], stored: ClusterSpec | None
) -> ClusterConfig:
    """cluster.json's settings (when the directory has one), overridden by the file's,
    overridden by the flags given. Raises ConfigError (the file), ClusterSpecError."""
    from_file = read_file(document) if document is not None else {}
    # Health knobs given as flags override one by one (a dict), the file's [health] whole.
    knobs: dict[str, Any] = flags.get("health") or {}
    values = from_file | {name: value for name, value in flags.items() if name != "health"}
    base = ClusterConfig.from_spec(stored) if stored is not None else None
    if "nodes" not in values and base is None:
        raise ClusterSpecError("how many nodes? give --nodes N, or nodes = N in the --config file")
    config = replace(base, **values) if base is not None else ClusterConfig(**values)
    if knobs:  # SettingsError (a ValueError) for a knob out of range
        config = replace(config, health=replace(config.health, **knobs))
    if config.vms:
        assert document is not None  # VMs come from the file only
        names: set[str] = set()
        for index, vm in enumerate(config.vms):
            if not 1 <= vm.node <= config.nodes:
                message = f"no node {vm.node} (nodes: 1..{config.nodes})"
                raise document.error(("vm", index, "node"), message)
            if vm.name in names:
                raise document.error(("vm", index, "name"), f"VM {vm.name} given twice")
            names.add(vm.name)
    if config.volume_groups:
        assert document is not None  # volume groups come from the file only
        group_names: set[str] = set()
        for index, group in enumerate(config.volume_groups):
            node = group.preferred_node
            if node is not None and not 1 <= node <= config.nodes:
                message = f"no node {node} (nodes: 1..{config.nodes})"
                raise document.error(("volume_group", index, "preferred_node"), message)
            if group.name in group_names:
                message = f"volume group {group.name} given twice"
                raise document.error(("volume_group", index, "name"), message)
            group_names.add(group.name)
    return config


# ---------------------------------------------------------------------------------------
# Saving


def saved_config(directory: Path, *, redirectors: bool) -> tuple[ClusterConfig, list[str]]:
    """The configuration that recreates the cluster in ``directory`` and notes about what
    it leaves out (vDisks of no VM). Raises ClusterSpecError when `cluster up --config`
    could not recreate it."""
    spec = ClusterSpec.load(directory)
    config = replace(ClusterConfig.from_spec(spec), redirectors=redirectors)
    recorded = CoordinatorUrl.parse(ClusterPaths(directory).coordinator())
    if not recorded.is_directory:
        config = replace(config, coordinator=str(recorded))
    if config.spec() != spec:
        raise ClusterSpecError(
            f"{ClusterPaths(directory).spec_file} has settings `cluster up` cannot make "
            "(ports, or addresses not from its base address): it cannot be saved as TOML"
        )
    sizes = {info.vdisk_id: info.size for info in list_vdisks(directory)}
    vms = []
    for record in load_vms(directory):
        expected = [f"{record.name}-{index}" for index in range(len(record.vdisk_ids))]
        disk_sizes = {sizes.get(vdisk_id) for vdisk_id in record.vdisk_ids}
        if record.vdisk_ids != expected or len(disk_sizes) != 1 or None in disk_sizes:
            raise ClusterSpecError(
                f"VM {record.name}: its vDisks are not those `vm create` makes "
                f"({', '.join(record.vdisk_ids)}): it cannot be saved as TOML"
            )
        size = disk_sizes.pop()
        assert size is not None
        vms.append(
            VmConfig(
                record.name,
                record.home_node,
                len(record.vdisk_ids),
                size,
                record.sessions_per_disk,
                record.load_balance,
            )
        )
    groups = []
    for group in VolumeGroupStore(directory).all():
        disk_sizes = {sizes.get(vdisk_id) for vdisk_id in group.vdisk_ids}
        if len(disk_sizes) != 1 or None in disk_sizes:
            raise ClusterSpecError(f"volume group {group.name}: disks missing or of mixed sizes")
        groups.append(VolumeGroupConfig.from_group(group, disk_sizes.pop() or 0))
    in_vms = {vdisk_id for record in load_vms(directory) for vdisk_id in record.vdisk_ids}
    in_groups = {vdisk for g in groups for vdisk in VolumeGroup.disk_ids(g.name, g.disks)}
    notes = [
        f"vDisk {vdisk_id} belongs to no VM: not saved"
        for vdisk_id in sorted(set(sizes) - in_vms - in_groups)
    ]
    return replace(config, vms=tuple(vms), volume_groups=tuple(groups)), notes
