"""`stargate target`: one stargate serving vDisks, outside any cluster.

``register(subparsers)`` adds the subcommand to the `stargate` console script, whose entry
point (`cluster.cli`) sits on the top floor and gathers every floor's subcommands; a handler
maps the parsed arguments to an exit code and raises `CliError` for a bad argument.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import trio

from faults.forensics import Forensics
from faults.injector import FaultInjector
from faults.model import login_not_ready_fault
from stargate import config
from stargate.config import (
    DEFAULTS,
    StoreKind,
    TargetConfig,
    VDiskSpec,
    parse_credentials,
    parse_portal,
    parse_vdisk,
)
from stargate.hooks import ServerHooks
from stargate.login_phase import LoginPolicy
from stargate.queue import ShareLimits
from stargate.server import ServerConfig, StargateServer
from stargate.stores.base import BlockStore
from stargate.stores.rbd import RbdLocation
from stargate.target import ExtraLun, PortalGroup, TargetRegistry, VDiskTarget
from stargate.transport.config import DEFAULT_CONTROL_PDU_BURST, ConnectionTimers
from topology.config_file import ConfigDocument, ConfigError

if TYPE_CHECKING:
    from stargate.scsi.lu import LogicalUnit

log = logging.getLogger("stargate")


Handler = Callable[[argparse.Namespace], int]
T = TypeVar("T")


class CliError(Exception):
    """A bad argument or environment problem, reported as one line, exit status 2."""


# ---------------------------------------------------------------------------------------
# `stargate target`


def _flag_type(converter: Callable[[str], T]) -> Callable[[str], T]:
    """A config converter as an argparse type: its ValueError becomes a usage error."""

    def convert(text: str) -> T:
        try:
            return converter(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = converter.__name__
    return convert


class JoinLastTarget(argparse.Action):
    """``--lun``: the vDisk joins the target of the last ``--vdisk`` as its next LUN."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        targets: list[VDiskSpec] | None = getattr(namespace, self.dest, None)
        assert isinstance(values, VDiskSpec)
        if not targets:
            parser.error(f"{option_string} {values.vdisk_id}: no --vdisk before it to join")
        targets[-1] = targets[-1].with_lun(values)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "target",
        help="serve vDisks as iSCSI targets (a target per --vdisk, more LUNs by --lun)",
        description="Serve vDisks as iSCSI targets iqn.2010-06.com.nutanix:vmdisk-<ID>. "
        "Everything can come from a TOML file (--config, see docs/examples/target.toml); "
        "flags given with --config override the file's values (--vdisk and --allow "
        "replace its lists).",
    )
    portal = _flag_type(parse_portal)
    positive_int, positive_float = (
        _flag_type(config.positive_int),
        _flag_type(config.positive_float),
    )
    non_negative_float = _flag_type(config.non_negative_float)
    parser.add_argument(
        "--config", type=Path, metavar="FILE.toml", help="read the configuration from FILE"
    )
    parser.add_argument("--portal", type=portal, metavar="HOST:PORT", help="default 127.0.0.1:3261")
    parser.add_argument("--advertise", metavar="HOST:PORT", help="address SendTargets reports")
    parser.add_argument("--data-dir", type=Path, metavar="DIR", help="where vDisk files live")
    parser.add_argument(
        "--vdisk",
        dest="vdisks",
        type=_flag_type(parse_vdisk),
        action="append",
        metavar="ID:SIZE",
        help="a vDisk to serve as a target of its own (its LUN 0), created with SIZE "
        "(512M, 4G) unless it exists; repeatable",
    )
    parser.add_argument(
        "--lun",
        dest="vdisks",
        type=_flag_type(parse_vdisk),
        action=JoinLastTarget,
        metavar="ID:SIZE",
        help="a vDisk to serve as the next LUN (1, 2, ...) of the target of the --vdisk "
        "before it; repeatable",
    )
    parser.add_argument(
        "--memory",
        dest="store",
        action="store_const",
        const=StoreKind.MEMORY,
        help="keep vDisks in memory only",
    )
    parser.add_argument(
        "--null",
        dest="store",
        action="store_const",
        const=StoreKind.NULL,
        help="null vDisks: reads return zeros, writes discarded",
    )
    parser.add_argument(
        "--rbd",
        type=_flag_type(RbdLocation.parse),
        metavar="POOL[/IMAGE-PREFIX]",
        help="keep each vDisk in a Ceph RBD image, PREFIX+ID in POOL, created if absent, "
        "held under its exclusive lock",
    )
    parser.add_argument(
        "--ceph-conf",
        type=Path,
        metavar="FILE",
        help="the Ceph cluster's ceph.conf (with --rbd; default: librados's search)",
    )
    parser.add_argument(
        "--rbd-take-over",
        action=argparse.BooleanOptionalAction,
        help="break another client's lock on an image, blocklisting it (its writes then "
        "fail in Ceph); default: refuse to start",
    )
    parser.add_argument(
        "--read-only",
        action=argparse.BooleanOptionalAction,
        help="serve the vDisks write-protected",
    )
    parser.add_argument(
        "--http",
        type=portal,
        metavar="HOST:PORT",
        help="serve statistics and the fault control endpoints (stargate fault --url)",
    )
    parser.add_argument(
        "--control-token-file",
        type=Path,
        metavar="FILE",
        help="the token --http's POST/DELETE requests must carry (created if missing; "
        "default: DATA_DIR/control.token, or a new private file printed at start)",
    )
    parser.add_argument(
        "--queue-depth", type=positive_int, metavar="N", help=f"default {DEFAULTS.queue_depth}"
    )
    isolation = parser.add_argument_group(
        "isolation between sessions",
        "What one session, and one vDisk with all its sessions, may hold of the shared "
        "queue; beyond it its commands wait (a quarter of the waiting room at most) or get "
        "TASK SET FULL, while the rest stays for the others.",
    )
    isolation.add_argument(
        "--max-buffer-mib",
        type=positive_int,
        metavar="MIB",
        help=f"Data-Out buffers of all commands together (default {DEFAULTS.max_buffer_mib})",
    )
    for owner, who in (("session", "session"), ("vdisk", "vDisk (all its sessions)")):
        isolation.add_argument(
            f"--{owner}-slots",
            type=positive_int,
            metavar="N",
            help=f"queue slots one {who} may hold (default: 3/4 of --queue-depth)",
        )
        isolation.add_argument(
            f"--{owner}-buffer-mib",
            type=positive_int,
            metavar="MIB",
            help=f"Data-Out buffers one {who} may hold (default: 1/4 of --max-buffer-mib)",
        )
    isolation.add_argument(
        "--data-out-timeout",
        type=positive_float,
        metavar="S",
        help="a command holding a slot gets this long for the Data-Out it asked for; "
        f"else its connection is dropped (default {DEFAULTS.data_out_timeout:g})",
    )
    isolation.add_argument(
        "--pdu-timeout",
        type=positive_float,
        metavar="S",
        help="a PDU begun must be complete this long after; else its connection is dropped "
        f"(default {DEFAULTS.pdu_timeout:g})",
    )
    isolation.add_argument(
        "--control-pdu-rate",
        type=non_negative_float,
        metavar="N",
        help="NOP-Outs, Text Requests and SNACKs a connection may send per second (burst "
        f"{DEFAULT_CONTROL_PDU_BURST}); past it the connection is read more slowly "
        f"(0: unlimited; default {DEFAULTS.control_pdu_rate:g})",
    )
    credentials = _flag_type(parse_credentials)
    parser.add_argument("--chap", type=credentials, metavar="USER:SECRET")
    parser.add_argument("--mutual-chap", type=credentials, metavar="USER:SECRET")
    parser.add_argument(
        "--discovery-chap",
        type=credentials,
        metavar="USER:SECRET",
        help="discovery (SendTargets) sessions must authenticate with these (default: open)",
    )
    parser.add_argument(
        "--discovery-mutual-chap",
        type=credentials,
        metavar="USER:SECRET",
        help="what the target proves itself with in discovery sessions that ask",
    )
    parser.add_argument(
        "--allow", action="append", metavar="INITIATOR_IQN", help="initiator ACL; repeatable"
    )
    for timer in ("login_timeout", "nop_interval", "nop_timeout"):
        parser.add_argument(
            f"--{timer.replace('_', '-')}",
            type=positive_float,
            metavar="S",
            help=f"default {getattr(DEFAULTS, timer):g}",
        )
    parser.add_argument(
        "--eager-send-every",
        type=_flag_type(config.non_negative_int),
        metavar="N",
        help="also send responses after every N PDUs of a wake-up (0: once per wake-up)",
    )
    parser.add_argument(
        "--busy-poll-us",
        type=non_negative_float,
        metavar="US",
        help="after serving, poll the connections this long for the next command before "
        f"sleeping (low queue depth latency; 0: off; default {DEFAULTS.busy_poll_us:g})",
    )
    add_not_ready_flags(parser)
    parser.add_argument("--log-level", choices=config.LOG_LEVELS, help="default INFO")
    parser.set_defaults(handler=run_target)


# Flags that arm a fault at start-up (read by `arm_not_ready`), not settings of the target.
STARTUP_FAULT_FLAGS = frozenset({"not_ready", "not_ready_status"})


def add_not_ready_flags(parser: argparse.ArgumentParser) -> None:
    """--not-ready S [--not-ready-status STATUS]: as a target just restarted whose portal
    listens before it is configured, refuse every login for S seconds (spdk #1676)."""
    parser.add_argument(
        "--not-ready",
        type=_flag_type(config.positive_float),
        metavar="S",
        help="refuse every login (discovery too) for S seconds after start, as a target "
        "whose portal listens before it is configured (the login_not_ready fault)",
    )
    parser.add_argument(
        "--not-ready-status",
        default="0x0301",
        metavar="STATUS",
        help="the login status of those refusals: 0x0301 service unavailable (the "
        "default), 0x0302 out of resources, or any 0x02xx/0x03xx",
    )


def not_ready_argv(seconds: float, status: str | int = "0x0301") -> tuple[str, ...]:
    """The flags that start a target (or CVM) not ready for ``seconds``; ValueError for a
    status that is not a refusal or a window that is not positive."""
    if not seconds > 0:
        raise ValueError(f"the not-ready window must be positive seconds, not {seconds!r}")
    login_not_ready_fault(seconds, status)
    return ("--not-ready", str(seconds), "--not-ready-status", str(status))


def arm_not_ready(args: argparse.Namespace, faults: FaultInjector) -> None:
    """Arm --not-ready's login_not_ready fault before the portal listens."""
    if args.not_ready is None:
        return
    try:
        faults.add(login_not_ready_fault(args.not_ready, args.not_ready_status))
    except ValueError as error:
        raise CliError(f"--not-ready-status {args.not_ready_status}: {error}") from None


def target_config(args: argparse.Namespace) -> TargetConfig:
    """The configuration ``args`` describe: --config's file, overridden by the flags given."""
    flags = {name: getattr(args, name) for name in config.FIELD_NAMES}
    flags = {name: value for name, value in flags.items() if value is not None}
    if "rbd" in flags:
        flags.setdefault("store", StoreKind.RBD)
    for name in ("vdisks", "allow"):  # appended to lists by argparse
        if name in flags:
            flags[name] = tuple(flags[name])
    try:
        document = ConfigDocument.load(args.config) if args.config is not None else None
        return config.target_config(document, flags)
    except ConfigError as error:
        raise CliError(str(error)) from None


def _open_targets(cfg: TargetConfig) -> tuple[list[VDiskTarget], list[BlockStore]]:
    targets: list[VDiskTarget] = []
    stores: list[BlockStore] = []
    try:
        for spec in cfg.vdisks:
            units = []
            for lun_spec in spec.luns:
                unit, store = _open_logical_unit(cfg, lun_spec, len(spec.luns))
                stores.append(store)
                units.append(unit)
                if unit.block_size != units[0].block_size:  # the target has one block size
                    raise CliError(
                        f"vDisk {lun_spec.vdisk_id} has {unit.block_size}-byte blocks, "
                        f"LUN 0 of its target {units[0].block_size}-byte ones"
                    )
            first, *others = units
            targets.append(
                VDiskTarget(
                    spec.vdisk_id,
                    first,
                    block_size=first.block_size,
                    allowed_initiators=frozenset(cfg.allow) if cfg.allow else None,
                    chap=cfg.chap,
                    mutual_chap=cfg.mutual_chap,
                    extra_luns=tuple(
                        ExtraLun(extra.vdisk_id, unit)
                        for extra, unit in zip(spec.extra_luns, others, strict=True)
                    ),
                )
            )
    except CliError:
        for store in stores:
            store.close()
        raise
    return targets, stores


def _open_logical_unit(
    cfg: TargetConfig, spec: VDiskSpec, target_luns: int
) -> tuple[LogicalUnit, BlockStore]:
    """One vDisk as a LUN of a target of ``target_luns`` LUNs."""
    from stargate.scsi.lu import LogicalUnit
    from stargate.scsi.reserve import vdisk_reservations
    from stargate.stores.file import FileStore
    from stargate.stores.memory import MemoryStore
    from stargate.stores.null import NullStore
    from stargate.stores.rbd import RbdStore, RbdUnavailableError
    from topology.vdisk import VDiskMeta

    created: list[Path] = []
    if cfg.data_dir is not None and not cfg.in_memory:
        created = [
            path
            for path in (cfg.data_dir / f"{spec.vdisk_id}{ext}" for ext in (".img", ".json"))
            if not path.exists()
        ]
    try:
        meta = VDiskMeta(spec.vdisk_id, spec.size or 512)
        store: NullStore | MemoryStore | FileStore | RbdStore
        if cfg.store is StoreKind.RBD:
            assert cfg.rbd is not None  # config.check
            store = RbdStore.open_or_create(
                cfg.ceph_conf,
                cfg.rbd,
                meta,
                take_over=cfg.rbd_take_over,
                create=spec.size is not None,
            )
        elif cfg.store is StoreKind.NULL:
            store = NullStore(meta)
        elif cfg.store is StoreKind.MEMORY:
            store = MemoryStore(meta)
        else:
            assert cfg.data_dir is not None  # config.check
            store = FileStore.open_or_create(cfg.data_dir, meta)
    except (OSError, ValueError, OverflowError, RbdUnavailableError) as error:
        for path in created:  # leave nothing half-made behind
            path.unlink(missing_ok=True)
        raise CliError(f"cannot open vDisk {spec.vdisk_id}: {error}") from None
    # SPC-4 persistent reservations (DIR/<id>.pr.json) and SPC-2 RESERVE, wired to the
    # unit attention queues they raise conditions in: each LUN's own.
    reservations, unit_attentions = vdisk_reservations(
        None if cfg.in_memory else cfg.data_dir, spec.vdisk_id
    )
    unit = LogicalUnit(
        store,
        store.meta,  # an existing vDisk's, as stored
        reservations=reservations,
        unit_attentions=unit_attentions,
        read_only=cfg.read_only,
        target_luns=target_luns,
    )
    return unit, store


def share_limits(cfg: TargetConfig, owner: str) -> ShareLimits:
    """What one session or one vDisk may hold: as configured, the fair share for the rest."""
    fair = ShareLimits.fair(cfg.queue_depth, cfg.queue_depth, cfg.max_buffer_mib << 20)
    slots = getattr(cfg, f"{owner}_slots")
    buffer_mib = getattr(cfg, f"{owner}_buffer_mib")
    return ShareLimits(
        slots=fair.slots if slots is None else slots,
        buffered_bytes=fair.buffered_bytes if buffer_mib is None else buffer_mib << 20,
        waiting=fair.waiting,
    )


def run_target(args: argparse.Namespace) -> int:
    cfg = target_config(args)
    logging.basicConfig(
        level=cfg.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    targets, stores = _open_targets(cfg)
    host, port = cfg.portal
    registry = TargetRegistry(PortalGroup())
    for target in targets:
        registry.add(target)
    server_config = ServerConfig(
        host=host,
        port=port,
        advertised_address=cfg.advertise,
        queue_depth=cfg.queue_depth,
        max_buffered_bytes=cfg.max_buffer_mib << 20,
        session_limits=share_limits(cfg, "session"),
        vdisk_limits=share_limits(cfg, "vdisk"),
        login_timeout=cfg.login_timeout,
        timers=ConnectionTimers(
            nop_interval=cfg.nop_interval,
            nop_timeout=cfg.nop_timeout,
            data_out_timeout=cfg.data_out_timeout,
            pdu_timeout=cfg.pdu_timeout,
            control_pdu_rate=cfg.control_pdu_rate,
        ),
        eager_send_every=cfg.eager_send_every,
        busy_poll_us=cfg.busy_poll_us,
    )
    login_policy = partial(
        LoginPolicy,
        discovery_chap=cfg.discovery_chap,
        discovery_mutual_chap=cfg.discovery_mutual_chap,
    )
    # With the HTTP page: its forensics record the sessions and the faults fired.
    forensics = Forensics("target") if cfg.http is not None else None
    faults = FaultInjector(listeners=[forensics.fault_fired] if forensics is not None else [])
    arm_not_ready(args, faults)
    hooks = ServerHooks(login_policy=login_policy, observer=forensics, faults=faults)
    server = StargateServer(registry, server_config, hooks)
    control = _control_token(cfg) if cfg.http is not None else None
    listen_error: OSError | None = None
    try:
        trio.run(_serve_until_signalled, server, cfg.http, control, forensics)
    except* OSError as group:  # from inside trio's nursery: wrapped in a group
        listen_error = _first_os_error(group)
    finally:
        for store in stores:
            with contextlib.suppress(OSError):
                store.sync()
            with contextlib.suppress(OSError):
                store.close()
        if control is not None and control.temporary:
            with contextlib.suppress(OSError):  # the token made for this run goes with it
                control.path.unlink()
                control.path.parent.rmdir()
    if listen_error is not None:
        raise CliError(f"cannot listen on {host}:{port}: {listen_error.strerror or listen_error}")
    return 0


@dataclass(frozen=True, slots=True)
class ControlToken:
    token: str
    path: Path
    temporary: bool  # made for this run in a private directory: removed at exit


def _control_token(cfg: TargetConfig) -> ControlToken:
    """The HTTP page's control token and its file: control_token_file, else
    DATA_DIR/control.token, else a new file in a private temporary directory."""
    import tempfile

    from control.control_token import TOKEN_FILE, ControlTokenError, ensure_token

    path = cfg.control_token_file
    temporary = path is None and cfg.data_dir is None
    if path is None:
        if cfg.data_dir is not None:
            path = cfg.data_dir / TOKEN_FILE
        else:
            path = Path(tempfile.mkdtemp(prefix="stargate-control-")) / TOKEN_FILE
    try:
        return ControlToken(ensure_token(path), path.absolute(), temporary)
    except ControlTokenError as error:
        raise CliError(str(error)) from None


def _first_os_error(group: BaseExceptionGroup[OSError]) -> OSError:
    first = group.exceptions[0]
    return first if isinstance(first, OSError) else _first_os_error(first)


async def _serve_until_signalled(
    server: StargateServer,
    http_portal: tuple[str, int] | None = None,
    control: ControlToken | None = None,
    forensics: Forensics | None = None,
) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve)
            if http_portal is not None:
                from control.http import serve_http
                from stargate.control_page import TargetPage

                assert control is not None and forensics is not None
                nursery.start_soon(forensics.sample_io, server)
                page = TargetPage(server, control.token, control.path, forensics)
                http_port = await nursery.start(serve_http, page.handle, *http_portal)
                print(f"stargate: HTTP on {http_portal[0]}:{http_port}", flush=True)
                print(f"stargate: control token in {control.path}", flush=True)
            names = ", ".join(
                target.name + (f" ({len(target.luns)} LUNs)" if target.extra_luns else "")
                for target in server.registry
            )
            log.info("serving %s on port %s", names, port)
            print(f"stargate: listening on {server.config.host}:{port}", flush=True)
            async for signum in signals:
                log.info("signal %s: shutting down", signal.Signals(signum).name)
                await server.shutdown()
                nursery.cancel_scope.cancel()
                break
