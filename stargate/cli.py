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
from pathlib import Path
from typing import Any

import trio

from iscsicore.portal import Portal, PortalError
from stargate.queue import DEFAULT_MAX_BUFFERED_BYTES, ShareLimits
from stargate.reader_hub import DEFAULT_BUSY_POLL_SECONDS
from stargate.server import DEFAULT_QUEUE_DEPTH, ServerConfig, StargateServer
from stargate.target import ChapCredentials, PortalGroup, TargetRegistry, VDiskTarget
from stargate.transport.config import (
    DEFAULT_CONTROL_PDU_BURST,
    DEFAULT_CONTROL_PDU_RATE,
    DEFAULT_DATA_OUT_TIMEOUT,
    DEFAULT_PDU_TIMEOUT,
    ConnectionTimers,
)

log = logging.getLogger("stargate")


Handler = Callable[[argparse.Namespace], int]


class CliError(Exception):
    """A bad argument or environment problem, reported as one line, exit status 2."""


# ---------------------------------------------------------------------------------------
# Argument types


@dataclass(frozen=True, slots=True)
class VDiskSpec:
    vdisk_id: str
    size: int | None  # None: open an existing vDisk at its stored size


def parse_portal(text: str) -> tuple[str, int]:
    """``--portal``/``--http``: ``HOST:PORT`` (IPv6 in brackets), port 0 for any free one."""
    try:
        portal = Portal.parse(text, default_port=None, any_port=True)
    except PortalError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if portal.tpgt is not None:
        raise argparse.ArgumentTypeError(f"portal {text!r} is not HOST:PORT")
    return portal.host, portal.port


def parse_vdisk(text: str) -> VDiskSpec:
    from stargate.stores.capacity import check_size_bound
    from topology.vdisk import parse_size

    vdisk_id, sep, size_text = text.partition(":")
    if not vdisk_id or "/" in vdisk_id or vdisk_id.startswith("."):
        raise argparse.ArgumentTypeError(f"bad vDisk id in {text!r} (expected ID:SIZE)")
    if not sep or not size_text:
        return VDiskSpec(vdisk_id, None)
    try:
        size = parse_size(size_text)
        check_size_bound(size)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"vDisk {vdisk_id}: {error}") from None
    if size % 512:
        raise argparse.ArgumentTypeError(f"size of {vdisk_id} must be a multiple of 512 bytes")
    return VDiskSpec(vdisk_id, size)


def parse_credentials(text: str) -> ChapCredentials:
    user, sep, secret = text.partition(":")
    if not sep or not user or not secret:
        raise argparse.ArgumentTypeError("CHAP credentials must be USER:SECRET")
    return ChapCredentials(user, secret)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _non_negative_float(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"{value} must be between 0 and 1000000")
    return value


def _positive_float(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be positive")
    return value


# ---------------------------------------------------------------------------------------
# `stargate target`


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "target",
        help="serve vDisks as iSCSI targets (one target per vDisk, LUN 0)",
        description="Serve vDisks as iSCSI targets iqn.2010-06.com.nutanix:vmdisk-<ID>.",
    )
    parser.add_argument(
        "--portal", type=parse_portal, default=("127.0.0.1", 3261), metavar="HOST:PORT"
    )
    parser.add_argument("--advertise", metavar="HOST:PORT", help="address SendTargets reports")
    parser.add_argument("--data-dir", type=Path, metavar="DIR", help="where vDisk files live")
    parser.add_argument(
        "--vdisk",
        type=parse_vdisk,
        action="append",
        required=True,
        metavar="ID:SIZE",
        help="a vDisk to serve, created with SIZE (512M, 4G) unless it exists; repeatable",
    )
    parser.add_argument("--memory", action="store_true", help="keep vDisks in memory only")
    parser.add_argument("--read-only", action="store_true", help="serve the vDisks write-protected")
    parser.add_argument(
        "--null", action="store_true", help="null vDisks: reads return zeros, writes discarded"
    )
    parser.add_argument(
        "--http",
        type=parse_portal,
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
    parser.add_argument("--queue-depth", type=_positive_int, default=DEFAULT_QUEUE_DEPTH)
    isolation = parser.add_argument_group(
        "isolation between sessions",
        "What one session, and one vDisk with all its sessions, may hold of the shared "
        "queue; beyond it its commands wait (a quarter of the waiting room at most) or get "
        "TASK SET FULL, while the rest stays for the others.",
    )
    isolation.add_argument(
        "--max-buffer-mib",
        type=_positive_int,
        default=DEFAULT_MAX_BUFFERED_BYTES >> 20,
        metavar="MIB",
        help="Data-Out buffers of all commands together (default %(default)s)",
    )
    for owner, who in (("session", "session"), ("vdisk", "vDisk (all its sessions)")):
        isolation.add_argument(
            f"--{owner}-slots",
            type=_positive_int,
            metavar="N",
            help=f"queue slots one {who} may hold (default: 3/4 of --queue-depth)",
        )
        isolation.add_argument(
            f"--{owner}-buffer-mib",
            type=_positive_int,
            metavar="MIB",
            help=f"Data-Out buffers one {who} may hold (default: 1/4 of --max-buffer-mib)",
        )
    isolation.add_argument(
        "--data-out-timeout",
        type=_positive_float,
        default=DEFAULT_DATA_OUT_TIMEOUT,
        metavar="S",
        help="a command holding a slot gets this long for the Data-Out it asked for; "
        "else its connection is dropped (default %(default)g)",
    )
    isolation.add_argument(
        "--pdu-timeout",
        type=_positive_float,
        default=DEFAULT_PDU_TIMEOUT,
        metavar="S",
        help="a PDU begun must be complete this long after; else its connection is dropped "
        "(default %(default)g)",
    )
    isolation.add_argument(
        "--control-pdu-rate",
        type=_non_negative_float,
        default=DEFAULT_CONTROL_PDU_RATE,
        metavar="N",
        help="NOP-Outs, Text Requests and SNACKs a connection may send per second (burst "
        f"{DEFAULT_CONTROL_PDU_BURST}); past it the connection is read more slowly "
        "(0: unlimited; default %(default)g)",
    )
    parser.add_argument("--chap", type=parse_credentials, metavar="USER:SECRET")
    parser.add_argument("--mutual-chap", type=parse_credentials, metavar="USER:SECRET")
    parser.add_argument(
        "--discovery-chap",
        type=parse_credentials,
        metavar="USER:SECRET",
        help="discovery (SendTargets) sessions must authenticate with these (default: open)",
    )
    parser.add_argument(
        "--discovery-mutual-chap",
        type=parse_credentials,
        metavar="USER:SECRET",
        help="what the target proves itself with in discovery sessions that ask",
    )
    parser.add_argument(
        "--allow", action="append", metavar="INITIATOR_IQN", help="initiator ACL; repeatable"
    )
    parser.add_argument("--login-timeout", type=_positive_float, default=15.0)
    parser.add_argument("--nop-interval", type=_positive_float, default=5.0)
    parser.add_argument("--nop-timeout", type=_positive_float, default=10.0)
    parser.add_argument(
        "--eager-send-every",
        type=int,
        default=0,
        metavar="N",
        help="also send responses after every N PDUs of a wake-up (0: once per wake-up)",
    )
    parser.add_argument(
        "--busy-poll-us",
        type=_non_negative_float,
        default=DEFAULT_BUSY_POLL_SECONDS * 1e6,
        metavar="US",
        help="after serving, poll the connections this long for the next command before "
        "sleeping (low queue depth latency; 0: off; default %(default)g)",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    parser.set_defaults(handler=run_target)


def _open_targets(args: argparse.Namespace) -> tuple[list[VDiskTarget], list[Any]]:
    from stargate.scsi.lu import LogicalUnit
    from stargate.scsi.reserve import vdisk_reservations
    from stargate.stores.file import FileStore
    from stargate.stores.memory import MemoryStore
    from stargate.stores.null import NullStore
    from topology.vdisk import VDiskMeta

    if args.mutual_chap is not None and args.chap is None:
        raise CliError("--mutual-chap needs --chap (the initiator authenticates first)")
    if args.discovery_mutual_chap is not None and args.discovery_chap is None:
        raise CliError("--discovery-mutual-chap needs --discovery-chap")
    in_memory = args.memory or args.null
    if not in_memory and args.data_dir is None:
        raise CliError("--data-dir is required unless --memory is given")
    _check_vdisks(args, in_memory)  # all of them before any file is created
    targets: list[VDiskTarget] = []
    stores: list[Any] = []
    for spec in args.vdisk:
        created: list[Path] = []
        if not in_memory:
            created = [
                path
                for path in (args.data_dir / f"{spec.vdisk_id}{ext}" for ext in (".img", ".json"))
                if not path.exists()
            ]
        try:
            meta = VDiskMeta(spec.vdisk_id, spec.size or 512)
            store: Any
            if args.null:
                store = NullStore(meta)
            elif args.memory:
                store = MemoryStore(meta)
            else:
                store = FileStore.open_or_create(args.data_dir, meta)
        except (OSError, ValueError, OverflowError) as error:
            for path in created:  # leave nothing half-made behind
                path.unlink(missing_ok=True)
            raise CliError(f"cannot open vDisk {spec.vdisk_id}: {error}") from None
        stores.append(store)
        # SPC-4 persistent reservations (DIR/<id>.pr.json) and SPC-2 RESERVE, wired to the
        # unit attention queues they raise conditions in.
        reservations, unit_attentions = vdisk_reservations(
            None if in_memory else args.data_dir, spec.vdisk_id
        )
        lu = LogicalUnit(
            store,
            getattr(store, "meta", meta),
            reservations=reservations,
            unit_attentions=unit_attentions,
            read_only=args.read_only,
        )
        allowed = frozenset(args.allow) if args.allow else None
        targets.append(
            VDiskTarget(
                spec.vdisk_id,
                lu,
                block_size=store.block_size,
                allowed_initiators=allowed,
                chap=args.chap,
                mutual_chap=args.mutual_chap,
            )
        )
    return targets, stores


def _share_limits(args: argparse.Namespace, owner: str) -> ShareLimits:
    """What one session or one vDisk may hold: the flags given, the fair share for the rest."""
    fair = ShareLimits.fair(args.queue_depth, args.queue_depth, args.max_buffer_mib << 20)
    slots = getattr(args, f"{owner}_slots")
    buffer_mib = getattr(args, f"{owner}_buffer_mib")
    return ShareLimits(
        slots=fair.slots if slots is None else slots,
        buffered_bytes=fair.buffered_bytes if buffer_mib is None else buffer_mib << 20,
        waiting=fair.waiting,
    )


def _check_vdisks(args: argparse.Namespace, in_memory: bool) -> None:
    """Refuse duplicate ids, missing sizes and sizes the store cannot hold."""
    from stargate.stores.capacity import (
        CapacityError,
        check_file_capacity,
        check_memory_capacity,
        check_size_bound,
    )

    seen: set[str] = set()
    for spec in args.vdisk:
        if spec.vdisk_id in seen:
            raise CliError(f"vDisk {spec.vdisk_id} given twice")
        seen.add(spec.vdisk_id)
        exists = args.data_dir is not None and (args.data_dir / f"{spec.vdisk_id}.json").exists()
        if spec.size is None and (in_memory or not exists):
            raise CliError(f"vDisk {spec.vdisk_id} does not exist: give its size, ID:SIZE")
        if spec.size is None or exists:
            continue  # an existing vDisk keeps its stored size
        try:
            if args.null:
                check_size_bound(spec.size)
            elif args.memory:
                check_memory_capacity(spec.size)
            else:
                check_file_capacity(args.data_dir, spec.size)
        except CapacityError as error:
            raise CliError(f"vDisk {spec.vdisk_id}: {error}") from None


def run_target(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    targets, stores = _open_targets(args)
    host, port = args.portal
    registry = TargetRegistry(PortalGroup())
    for target in targets:
        registry.add(target)
    config = ServerConfig(
        host=host,
        port=port,
        advertised_address=args.advertise,
        queue_depth=args.queue_depth,
        max_buffered_bytes=args.max_buffer_mib << 20,
        session_limits=_share_limits(args, "session"),
        vdisk_limits=_share_limits(args, "vdisk"),
        login_timeout=args.login_timeout,
        timers=ConnectionTimers(
            nop_interval=args.nop_interval,
            nop_timeout=args.nop_timeout,
            data_out_timeout=args.data_out_timeout,
            pdu_timeout=args.pdu_timeout,
            control_pdu_rate=args.control_pdu_rate,
        ),
        eager_send_every=max(0, args.eager_send_every),
        busy_poll_us=args.busy_poll_us,
    )
    server = StargateServer(registry, config)
    server.policy.discovery_chap = args.discovery_chap
    server.policy.discovery_mutual_chap = args.discovery_mutual_chap
    control = _control_token(args) if args.http is not None else None
    listen_error: OSError | None = None
    try:
        trio.run(_serve_until_signalled, server, args.http, control)
    except* OSError as group:  # from inside trio's nursery: wrapped in a group
        listen_error = _first_os_error(group)
    finally:
        for store in stores:
            with contextlib.suppress(OSError):
                store.sync()
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


def _control_token(args: argparse.Namespace) -> ControlToken:
    """The HTTP page's control token and its file: --control-token-file, else
    DATA_DIR/control.token, else a new file in a private temporary directory."""
    import tempfile

    from control.control_token import TOKEN_FILE, ControlTokenError, ensure_token

    path: Path = args.control_token_file
    temporary = path is None and args.data_dir is None
    if path is None:
        if args.data_dir is not None:
            path = args.data_dir / TOKEN_FILE
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
) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve)
            if http_portal is not None:
                from control.http import serve_http
                from faults.forensics import Forensics
                from stargate.control_page import TargetPage

                forensics = Forensics("target")
                forensics.attach(server)
                nursery.start_soon(forensics.sample_io, server)
                assert control is not None
                page = TargetPage(server, control.token, control.path, forensics)
                http_port = await nursery.start(serve_http, page.handle, *http_portal)
                print(f"stargate: HTTP on {http_portal[0]}:{http_port}", flush=True)
                print(f"stargate: control token in {control.path}", flush=True)
            names = ", ".join(target.name for target in server.registry)
            log.info("serving %s on port %s", names, port)
            print(f"stargate: listening on {server.config.host}:{port}", flush=True)
            async for signum in signals:
                log.info("signal %s: shutting down", signal.Signals(signum).name)
                await server.shutdown()
                nursery.cancel_scope.cancel()
                break
