"""What `stargate target` serves and how: one `TargetConfig`, filled from a TOML file
(``--config``), from flags, or both (flags win), and checked in one place (`check`).

The file's layout (docs/examples/target.toml is a complete one)::

    portal = "HOST:PORT"     advertise, store = "file"|"memory"|"null"|"rbd", data_dir,
                             rbd = "POOL[/IMAGE-PREFIX]", ceph_conf, rbd_take_over,
                             read_only, allow = [IQN, ...], log_level
    [[vdisk]]                id, size ("4G" or bytes; absent: an existing vDisk's size):
                             a target, this vDisk its LUN 0
    [[vdisk.lun]]            id, size: the next LUN (1, 2, ...) of the [[vdisk]] above
    [chap] [mutual_chap] [discovery_chap] [discovery_mutual_chap]    user, secret
    [http]                   portal, control_token_file
    [queue]                  depth, max_buffer_mib, session_slots, session_buffer_mib,
                             vdisk_slots, vdisk_buffer_mib
    [timers]                 login_timeout, nop_interval, nop_timeout, data_out_timeout,
                             pdu_timeout
    [connection]             control_pdu_rate, eager_send_every, busy_poll_us

Each value is converted by the same function as its flag, so both accept the same values.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from iscsicore.pdu import MAX_LUN
from iscsicore.portal import Portal, PortalError
from stargate.queue import DEFAULT_MAX_BUFFERED_BYTES
from stargate.reader_hub import DEFAULT_BUSY_POLL_SECONDS
from stargate.server import DEFAULT_QUEUE_DEPTH
from stargate.stores.rbd import RbdLocation
from stargate.target import ChapCredentials
from stargate.transport.config import (
    DEFAULT_CONTROL_PDU_RATE,
    DEFAULT_DATA_OUT_TIMEOUT,
    DEFAULT_PDU_TIMEOUT,
)
from topology.config_file import (
    ConfigDocument,
    ConfigError,
    KeyPath,
    ScalarSpec,
    TableReader,
    dotted,
    locate,
)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING")


class StoreKind(enum.Enum):
    FILE = "file"  # sparse files in data_dir
    MEMORY = "memory"
    NULL = "null"  # reads return zeros, writes are discarded
    RBD = "rbd"  # one Ceph RBD image per vDisk (stargate.stores.rbd)


@dataclass(frozen=True, slots=True)
class VDiskSpec:
    """A target: this vDisk as its LUN 0, ``extra_luns`` as LUN 1, 2, ... (LUN numbers are
    positions: no gaps, so no LUN given twice)."""

    vdisk_id: str
    size: int | None  # None: open an existing vDisk at its stored size
    extra_luns: tuple[VDiskSpec, ...] = ()

    def with_lun(self, lun: VDiskSpec) -> VDiskSpec:
        return replace(self, extra_luns=(*self.extra_luns, lun))

    @property
    def luns(self) -> tuple[VDiskSpec, ...]:
        """Every LUN's vDisk, LUN 0 first (the extra LUNs' own ``extra_luns`` are empty)."""
        return (replace(self, extra_luns=()), *self.extra_luns)


@dataclass(frozen=True, slots=True)
class TargetConfig:
    vdisks: tuple[VDiskSpec, ...] = ()
    portal: tuple[str, int] = ("127.0.0.1", 3261)
    advertise: str | None = None
    store: StoreKind = StoreKind.FILE
    data_dir: Path | None = None
    rbd: RbdLocation | None = None
    ceph_conf: Path | None = None  # None: librados's default search (/etc/ceph/ceph.conf)
    rbd_take_over: bool = False  # break another client's lock on an image (blocklisting it)
    read_only: bool = False
    chap: ChapCredentials | None = None
    mutual_chap: ChapCredentials | None = None
    discovery_chap: ChapCredentials | None = None
    discovery_mutual_chap: ChapCredentials | None = None
    allow: tuple[str, ...] = ()  # initiator IQNs; empty: any initiator
    http: tuple[str, int] | None = None
    control_token_file: Path | None = None
    queue_depth: int = DEFAULT_QUEUE_DEPTH
    max_buffer_mib: int = DEFAULT_MAX_BUFFERED_BYTES >> 20
    session_slots: int | None = None  # None: the fair share (stargate.queue.ShareLimits)
    session_buffer_mib: int | None = None
    vdisk_slots: int | None = None
    vdisk_buffer_mib: int | None = None
    login_timeout: float = 15.0
    nop_interval: float = 5.0
    nop_timeout: float = 10.0
    data_out_timeout: float = DEFAULT_DATA_OUT_TIMEOUT
    pdu_timeout: float = DEFAULT_PDU_TIMEOUT
    control_pdu_rate: float = DEFAULT_CONTROL_PDU_RATE
    eager_send_every: int = 0
    busy_poll_us: float = DEFAULT_BUSY_POLL_SECONDS * 1e6
    log_level: str = "INFO"

    @property
    def in_memory(self) -> bool:
        return self.store is not StoreKind.FILE


DEFAULTS = TargetConfig()
FIELD_NAMES = tuple(f.name for f in fields(TargetConfig))

# Where each field lives in the file; the others are top-level keys of their own name.
FILE_KEYS: dict[str, KeyPath] = {
    "vdisks": ("vdisk",),
    "http": ("http", "portal"),
    "control_token_file": ("http", "control_token_file"),
    "queue_depth": ("queue", "depth"),
    "max_buffer_mib": ("queue", "max_buffer_mib"),
    "session_slots": ("queue", "session_slots"),
    "session_buffer_mib": ("queue", "session_buffer_mib"),
    "vdisk_slots": ("queue", "vdisk_slots"),
    "vdisk_buffer_mib": ("queue", "vdisk_buffer_mib"),
    "login_timeout": ("timers", "login_timeout"),
    "nop_interval": ("timers", "nop_interval"),
    "nop_timeout": ("timers", "nop_timeout"),
    "data_out_timeout": ("timers", "data_out_timeout"),
    "pdu_timeout": ("timers", "pdu_timeout"),
    "control_pdu_rate": ("connection", "control_pdu_rate"),
    "eager_send_every": ("connection", "eager_send_every"),
    "busy_poll_us": ("connection", "busy_poll_us"),
}
TABLES = ("http", "queue", "timers", "connection")
# Flags whose name is not the field's.
FLAGS = {"vdisks": "--vdisk", "store": "--memory/--null/--rbd"}


def file_key(name: str) -> KeyPath:
    return FILE_KEYS.get(name, (name,))


def flag_name(name: str) -> str:
    return FLAGS.get(name, "--" + name.replace("_", "-"))


# ---------------------------------------------------------------------------------------
# Values: each takes a flag's text or the file's value, raises ValueError with the reason


def parse_portal(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 in brackets), port 0 for any free one."""
    try:
        portal = Portal.parse(text, default_port=None, any_port=True)
    except PortalError as error:
        raise ValueError(str(error)) from None
    if portal.tpgt is not None:
        raise ValueError(f"portal {text!r} is not HOST:PORT")
    return portal.host, portal.port


def parse_vdisk(text: str) -> VDiskSpec:
    """``ID:SIZE``, or ``ID`` for an existing vDisk."""
    vdisk_id, sep, size_text = text.partition(":")
    return vdisk_spec(vdisk_id, size_text if sep and size_text else None, text)


def vdisk_spec(vdisk_id: str, size: str | int | None, shown: str | None = None) -> VDiskSpec:
    from stargate.stores.capacity import check_size_bound
    from topology.vdisk import parse_size

    if not vdisk_id or "/" in vdisk_id or vdisk_id.startswith("."):
        raise ValueError(f"bad vDisk id in {shown or vdisk_id!r} (expected ID:SIZE)")
    if size is None:
        return VDiskSpec(vdisk_id, None)
    try:
        byte_size = parse_size(size)
        check_size_bound(byte_size)
    except ValueError as error:
        raise ValueError(f"vDisk {vdisk_id}: {error}") from None
    if byte_size % 512:
        raise ValueError(f"size of {vdisk_id} must be a multiple of 512 bytes")
    return VDiskSpec(vdisk_id, byte_size)


def parse_credentials(text: str) -> ChapCredentials:
    user, sep, secret = text.partition(":")
    return credentials(user if sep else "", secret)


def credentials(user: str, secret: str) -> ChapCredentials:
    if not user or not secret:
        raise ValueError("CHAP credentials must be USER:SECRET")
    return ChapCredentials(user, secret)


def _number(value: str | float) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None


def _integer(value: str | int) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None


def positive_int(value: str | int) -> int:
    number = _integer(value)
    if number < 1:
        raise ValueError(f"{number} must be at least 1")
    return number


def non_negative_int(value: str | int) -> int:
    number = _integer(value)
    if number < 0:
        raise ValueError(f"{number} cannot be negative")
    return number


def positive_float(value: str | float) -> float:
    number = _number(value)
    if not number > 0:  # nan too
        raise ValueError(f"{number} must be positive")
    return number


def non_negative_float(value: str | float) -> float:
    number = _number(value)
    if not 0 <= number <= 1_000_000:
        raise ValueError(f"{number} must be between 0 and 1000000")
    return number


def log_level(value: str) -> str:
    if value not in LOG_LEVELS:
        raise ValueError(f"{value!r} is not one of {', '.join(LOG_LEVELS)}")
    return value


def store_kind(value: str) -> StoreKind:
    try:
        return StoreKind(value)
    except ValueError:
        kinds = ", ".join(kind.value for kind in StoreKind)
        raise ValueError(f"{value!r} is not one of {kinds}") from None


# The scalar fields and how to read and convert them (the same converter as the flag's).
SCALARS: dict[str, ScalarSpec] = {
    "portal": (TableReader.string, parse_portal),
    "advertise": (TableReader.string, str),
    "store": (TableReader.string, store_kind),
    "rbd": (TableReader.string, RbdLocation.parse),
    "rbd_take_over": (TableReader.boolean, bool),
    "read_only": (TableReader.boolean, bool),
    "http": (TableReader.string, parse_portal),
    "queue_depth": (TableReader.integer, positive_int),
    "max_buffer_mib": (TableReader.integer, positive_int),
    "session_slots": (TableReader.integer, positive_int),
    "session_buffer_mib": (TableReader.integer, positive_int),
    "vdisk_slots": (TableReader.integer, positive_int),
    "vdisk_buffer_mib": (TableReader.integer, positive_int),
    "login_timeout": (TableReader.number, positive_float),
    "nop_interval": (TableReader.number, positive_float),
    "nop_timeout": (TableReader.number, positive_float),
    "data_out_timeout": (TableReader.number, positive_float),
    "pdu_timeout": (TableReader.number, positive_float),
    "control_pdu_rate": (TableReader.number, non_negative_float),
    "eager_send_every": (TableReader.integer, non_negative_int),
    "busy_poll_us": (TableReader.number, non_negative_float),
    "log_level": (TableReader.string, log_level),
}
CREDENTIALS = ("chap", "mutual_chap", "discovery_chap", "discovery_mutual_chap")


# ---------------------------------------------------------------------------------------
# The file


def read_file(document: ConfigDocument) -> dict[str, Any]:
    """The fields ``document`` sets (TargetConfig's names); unknown keys are errors."""
    values: dict[str, Any] = {}
    root = document.root()
    tables = {name: root.subtable(name) for name in TABLES}

    def reader_of(name: str) -> tuple[TableReader | None, str]:
        key = file_key(name)
        return (root if len(key) == 1 else tables[str(key[0])]), str(key[-1])

    for name, (getter, converter) in SCALARS.items():
        reader, key = reader_of(name)
        if reader is not None and (value := getter(reader, key)) is not None:
            values[name] = reader.convert(key, value, converter)
    for name in ("data_dir", "ceph_conf", "control_token_file"):
        reader, key = reader_of(name)
        path = reader.string(key) if reader is not None else None
        if path is not None:
            values[name] = document.directory / Path(path).expanduser()
    allow = root.strings("allow")
    if allow is not None:
        values["allow"] = tuple(allow)
    for name in CREDENTIALS:
        table = root.subtable(name)
        if table is not None:
            user, secret = (
                table.required("user", table.string),
                table.required("secret", table.string),
            )
            values[name] = table.convert("user", (user, secret), lambda pair: credentials(*pair))
            table.finish()
    vdisks = []
    for table in root.subtables("vdisk"):
        spec = _read_vdisk(table)
        for lun_table in table.subtables("lun"):
            spec = spec.with_lun(_read_vdisk(lun_table))
            lun_table.finish()
        vdisks.append(spec)
        table.finish()
    if vdisks:
        values["vdisks"] = tuple(vdisks)
    for table in tables.values():
        if table is not None:
            table.finish()
    root.finish()
    return values


def _read_vdisk(table: TableReader) -> VDiskSpec:
    vdisk_id = table.required("id", table.string)
    size = table.typed("size", (str, int), 'a size ("4G") or a byte count')
    return table.convert("size", (vdisk_id, size), lambda pair: vdisk_spec(*pair))


# ---------------------------------------------------------------------------------------
# The checks across fields, the same whichever source each field came from


@dataclass(frozen=True, slots=True)
class Problem:
    """``template`` names ``names`` as {0}, {1}...: as flags or as the file's keys;
    ``detail`` follows it as is; ``entry``: which vDisk of the list (its line in the file)."""

    names: tuple[str, ...]
    template: str
    detail: str = ""
    entry: int | None = None


def check(config: TargetConfig) -> Problem | None:
    """What makes ``config`` unusable, whatever source each field came from; the vDisks'
    sizes are checked against their store (before any file is created)."""
    if not config.vdisks:
        return Problem(("vdisks",), "{0}: at least one vDisk is required")
    if config.mutual_chap is not None and config.chap is None:
        return Problem(("mutual_chap", "chap"), "{0} needs {1} (the initiator authenticates first)")
    if config.discovery_mutual_chap is not None and config.discovery_chap is None:
        return Problem(("discovery_mutual_chap", "discovery_chap"), "{0} needs {1}")
    if (config.store is StoreKind.RBD) != (config.rbd is not None):
        return Problem(("rbd",), "{0} (POOL[/IMAGE-PREFIX]) goes with the rbd store, and only it")
    if not config.in_memory and config.data_dir is None:
        return Problem(
            ("data_dir", "store"), "{0} is required unless the vDisks are in memory or null ({1})"
        )
    seen: set[str] = set()
    for index, target in enumerate(config.vdisks):
        if len(target.luns) > MAX_LUN + 1:
            detail = f"target {target.vdisk_id} has more than {MAX_LUN + 1} LUNs"
            return Problem(("vdisks",), "{0}: ", detail, index)
        for number, spec in enumerate(target.luns):
            shown = f"vDisk {spec.vdisk_id}"
            if number:
                shown += f" (LUN {number} of {target.vdisk_id})"
            if spec.vdisk_id in seen:
                return Problem(("vdisks",), "{0}: ", f"{shown} given twice", index)
            seen.add(spec.vdisk_id)
            reason = _vdisk_problem(config, spec)
            if reason is not None:
                return Problem(("vdisks",), "{0}: ", f"{shown}{reason}", index)
    return None


def _vdisk_problem(config: TargetConfig, spec: VDiskSpec) -> str | None:
    """What follows "vDisk ID" when its size is missing for a new vDisk or too large."""
    from stargate.stores.capacity import (
        CapacityError,
        check_file_capacity,
        check_memory_capacity,
        check_size_bound,
    )

    if config.store is StoreKind.RBD:
        # Whether the image exists is the cluster's to say, when it is opened.
        try:
            if spec.size is not None:
                check_size_bound(spec.size)
        except CapacityError as error:
            return f": {error}"
        return None
    data_dir = config.data_dir
    exists = data_dir is not None and (data_dir / f"{spec.vdisk_id}.json").exists()
    if spec.size is None and (config.in_memory or not exists):
        return " does not exist: give its size, ID:SIZE"
    if spec.size is None or exists:
        return None  # an existing vDisk keeps its stored size
    try:
        if config.store is StoreKind.NULL:
            check_size_bound(spec.size)
        elif config.store is StoreKind.MEMORY:
            check_memory_capacity(spec.size)
        elif data_dir is not None:
            check_file_capacity(data_dir, spec.size)
    except CapacityError as error:
        return f": {error}"
    return None


# ---------------------------------------------------------------------------------------
# Both sources together


def target_config(document: ConfigDocument | None, flags: dict[str, Any]) -> TargetConfig:
    """The defaults, overridden by the file's values, overridden by the flags given
    (``flags``: field name -> value, only those given); raises ConfigError."""
    from_file = read_file(document) if document is not None else {}
    config = replace(DEFAULTS, **(from_file | flags))
    problem = check(config)
    if problem is None:
        return config

    def shown(name: str) -> str:
        return (
            dotted(file_key(name))
            if document is not None and name not in flags
            else flag_name(name)
        )

    text = problem.template.format(*map(shown, problem.names)) + problem.detail
    first = problem.names[0]
    if document is None or first in flags:
        raise ConfigError(text)
    entry = () if problem.entry is None else (problem.entry,)
    line = locate(document.text, (*file_key(first), *entry))
    raise ConfigError(f"{document.path}{f':{line}' if line else ''}: {text}")
