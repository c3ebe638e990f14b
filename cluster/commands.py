"""The cluster's `stargate` subcommands: cluster up|down|save|status|set, vm create,
vdisk list,
cvm kill|stop|cont|start|restart, top.

Each handler takes the parsed namespace and returns the exit status; problems the user can
fix are raised as `stargate.cli.CliError` (one line on stderr, exit status 2).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import signal
import sys
from pathlib import Path
from typing import Any

import trio
from rich.table import Table

from cluster import demo
from cluster.config import cluster_config, saved_config
from cluster.coordinated import choose_coordinator, coordinator_of, publish, record_coordinator
from cluster.fabric import Fabric, FabricError, choose_fabric, fabric_of, record_fabric
from cluster.provision import create_vm, provision_vms
from cluster.settings_cli import (
    add_failback,
    add_health_knobs,
    add_set_options,
    cluster_set,
    health_knobs_given,
    settings_document,
)
from cluster.supervisor import READY_TIMEOUT, ProcessKind, ProcessStatus, Supervisor
from cluster.top import run_top
from cluster.volume_groups import provision_volume_groups
from control.client import vdisk_table
from control.control_token import cluster_token_file
from initiator.console import output_console
from stargate.cli import CliError, add_not_ready_flags, not_ready_argv
from topology.config_file import ConfigDocument, ConfigError
from topology.coordination import CoordinationError
from topology.spec import (
    PLACEMENTS,
    Advertisement,
    ClusterPaths,
    ClusterSpec,
    ClusterSpecError,
    normal_dsip,
)


def _advertisement(text: str) -> Advertisement:
    try:
        return Advertisement.parse(text)
    except (ClusterSpecError, ValueError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _dsip(text: str) -> str:
    try:
        return normal_dsip(text)
    except ClusterSpecError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, required=True, help="the cluster directory")


def print_json(document: Any) -> None:
    # A closed pipe (`| head`) is the reader's choice, not an error worth a traceback.
    with contextlib.suppress(BrokenPipeError):
        print(json.dumps(document, indent=2, sort_keys=True), flush=True)


# -- registration --------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    _register_cluster(subparsers)
    _register_vm(subparsers)
    _register_vdisk(subparsers)
    _register_cvm(subparsers)
    top = subparsers.add_parser("top", help="the whole cluster, live")
    add_dir(top)
    top.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    top.add_argument("--iterations", type=int, help="refresh this many times, then exit")
    top.set_defaults(handler=run_top_command)
    demo.register(subparsers)


def _register_cluster(subparsers: Any) -> None:
    cluster = subparsers.add_parser("cluster", help="start, stop and inspect a local cluster")
    actions = cluster.add_subparsers(dest="cluster_action", metavar="ACTION", required=True)
    up = actions.add_parser(
        "up",
        help="start N nodes: a stargate and a redirector each",
        description="Start the cluster DIR describes, or a new one. Its settings and VMs "
        "can come from a TOML file (--config, see docs/examples/cluster.toml; `cluster "
        "save` writes one); flags given with --config override the file's values.",
    )
    add_dir(up)
    up.add_argument(
        "--config", type=Path, metavar="FILE.toml", help="the cluster's settings and VMs"
    )
    up.add_argument("--nodes", type=int, help="how many nodes (required without --config)")
    up.add_argument(
        "--stable-window",
        type=float,
        metavar="SECONDS",
        help="how long a CVM must be healthy before failback",
    )
    up.add_argument(
        "--release-timeout",
        type=float,
        metavar="SECONDS",
        help="how long a vDisk's owner may take to release it before another CVM takes "
        "it over (default 5)",
    )
    up.add_argument(
        "--policy",
        choices=PLACEMENTS,
        help="how a redirector picks a remote CVM for a vDisk",
    )
    up.add_argument(
        "--base-address",
        help="node i: redirector base+i*256+1, stargate base+i*256+2",
    )
    up.add_argument(
        "--advertise",
        type=_advertisement,
        action="append",
        metavar="[cvm:|redirector:]NODE=ADDR[:PORT]",
        help="the address initiators reach a CVM (or redirector) at; repeatable",
    )
    add_failback(
        up,
        "how a remote CVM gives a vDisk back: kill (quiesce then close the connections, as "
        "AHV does; default) or logout (AsyncEvent logout request, dropped after 5 s)",
    )
    add_health_knobs(up)
    up.add_argument(
        "--coordinator",
        metavar="dir|zk://HOST:PORT/PATH",
        help="where the CVMs agree on vDisk ownership and liveness: the cluster directory "
        "(default) or a ZooKeeper (Debian's zookeeper; PATH is this cluster's own znode)",
    )
    up.add_argument(
        "--fabric",
        metavar="dir|rbd:POOL[/IMAGE-PREFIX]",
        help="where the vDisks' bytes live: sparse files in the cluster directory (default) "
        "or one Ceph RBD image each, fenced by the image's exclusive lock (cluster/fabric.py)",
    )
    up.add_argument(
        "--ceph-conf",
        type=Path,
        metavar="FILE",
        help="the Ceph cluster's ceph.conf, with --fabric rbd:POOL (default: librados's search)",
    )
    up.add_argument(
        "--dsip",
        type=_dsip,
        metavar="ADDR[:PORT]",
        help="the Data Services IP, volume groups' portal for external initiators "
        "(default: the base address + 3, port 3260)",
    )
    up.add_argument(
        "--dsip-advertise",
        type=_dsip,
        metavar="ADDR[:PORT]",
        help="the DSIP as initiators reach it (NAT, a QEMU guest): the address discovery at "
        "the DSIP gives for every target (default: the DSIP itself)",
    )
    up.add_argument(
        "--detach",
        action="store_true",
        help="return once everything answers, printing the cluster as JSON",
    )
    up.add_argument(
        "--no-redirectors",
        action="store_true",
        default=None,
        help="start the stargates only (tests of the storage path)",
    )
    up.add_argument(
        "--timeout",
        type=float,
        default=READY_TIMEOUT,
        help="seconds to wait for every process to answer",
    )
    up.set_defaults(handler=cluster_up)
    down = actions.add_parser("down", help="stop every process the cluster started")
    add_dir(down)
    down.set_defaults(handler=cluster_down)
    save = actions.add_parser(
        "save",
        help="print the cluster's configuration as TOML, for cluster up --config "
        "(its shape, not its data: vDisks are recreated empty)",
    )
    add_dir(save)
    save.set_defaults(handler=cluster_save)
    status = actions.add_parser("status", help="every process: pid, address, health, log")
    add_dir(status)
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=cluster_status)
    settings = actions.add_parser("set", help="change a setting of a (running) cluster")
    add_dir(settings)
    add_set_options(settings)
    settings.set_defaults(handler=cluster_set)


def _register_vm(subparsers: Any) -> None:
    vm = subparsers.add_parser("vm", help="VMs and their vDisks")
    actions = vm.add_subparsers(dest="vm_action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="create a VM's vDisks")
    create.add_argument("name")
    add_dir(create)
    create.add_argument("--node", type=int, required=True, help="the VM's home node")
    create.add_argument("--disks", type=int, default=1)
    create.add_argument("--size", default="1G", help="each vDisk's size: 512M, 4G, ...")
    create.add_argument(
        "--sessions-per-disk",
        type=int,
        default=1,
        metavar="N",
        help="sessions the VM opens per vDisk (AHV Turbo: 2 for 2 or more vCPUs; 1..8)",
    )
    create.add_argument(
        "--load-balance",
        action="store_true",
        help="spread the VM's vDisks over every CVM, even while the local one is healthy",
    )
    create.set_defaults(handler=vm_create)


def _register_vdisk(subparsers: Any) -> None:
    vdisk = subparsers.add_parser("vdisk", help="the cluster's vDisks")
    actions = vdisk.add_subparsers(dest="vdisk_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="each vDisk, the CVM serving it, connections")
    add_dir(listing)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=vdisk_list)


def _register_cvm(subparsers: Any) -> None:
    cvm = subparsers.add_parser("cvm", help="fault injection on one CVM's stargate")
    actions = cvm.add_subparsers(dest="cvm_action", metavar="ACTION", required=True)
    helps = {
        "kill": "SIGKILL",
        "stop": "SIGSTOP (hung CVM)",
        "cont": "SIGCONT",
        "start": "start it again",
        "restart": "graceful stop (SIGTERM), then start",
    }
    for action, help_text in helps.items():
        parser = actions.add_parser(action, help=help_text)
        parser.add_argument("node", type=int)
        add_dir(parser)
        if action in ("start", "restart"):
            add_not_ready_flags(parser)  # the CVM refuses logins for a while after start
        parser.set_defaults(handler=cvm_action)


# -- cluster ------------------------------------------------------------------------------


def _supervisor(directory: Path, **options: Any) -> Supervisor:
    try:
        return Supervisor(directory, **options)
    except ClusterSpecError as error:
        raise CliError(str(error)) from None


def cluster_up(args: argparse.Namespace) -> int:
    directory: Path = args.dir.resolve()
    paths = ClusterPaths(directory)
    try:
        stored = ClusterSpec.load(directory) if paths.spec_file.exists() else None
        document = ConfigDocument.load(args.config) if args.config is not None else None
        config = cluster_config(document, _up_flags(args), stored)
        coordinator = choose_coordinator(paths, config.coordinator)
        fabric = choose_fabric(paths, _fabric_flag(args))
        wanted = config.spec()
        if stored is None:
            wanted.save(directory)
        else:
            _check_same_cluster(stored, wanted, args.dir)
        record_fabric(paths, fabric)  # before any vDisk is made: they are made on it
        provision_vms(directory, config.vms)
        provision_volume_groups(directory, config.volume_groups)
        record_coordinator(paths, coordinator)  # first: a retry after a failed publish agrees
        publish(paths, coordinator)
    except (ValueError, ConfigError) as error:  # ClusterSpecError, CapacityError, coordinator
        raise CliError(str(error)) from None
    supervisor = Supervisor(directory, redirectors=config.redirectors)
    supervisor.remember_mode(redirectors=config.redirectors)
    for process in supervisor.processes:
        supervisor.start(process)
    not_ready = trio.run(supervisor.wait_ready, supervisor.processes, args.timeout)
    if not_ready:
        for process in not_ready:
            _, state = supervisor.state(process)
            print(f"{process.name} ({state}) does not answer; its log ends:", file=sys.stderr)
            print(supervisor.log_tail(process) or "(empty)", file=sys.stderr)
        if not args.detach:
            _stop_all(supervisor)
        return 1
    if args.detach:
        print_json(cluster_document(supervisor, trio.run(supervisor.statuses)))
        return 0
    return _foreground(supervisor)


def _fabric_flag(args: argparse.Namespace) -> Fabric | None:
    if args.fabric is None:
        if args.ceph_conf is not None:
            raise FabricError("--ceph-conf goes with --fabric rbd:POOL only")
        return None
    return Fabric.parse(args.fabric, args.ceph_conf)


def _up_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The ClusterConfig fields given as flags."""
    flags = {
        "nodes": args.nodes,
        "stable_window": args.stable_window,
        "placement": args.policy,
        "base_address": args.base_address,
        "release_timeout": args.release_timeout,
        "advertise": tuple(args.advertise) if args.advertise else None,
        "redirectors": False if args.no_redirectors else None,
        "failback": args.failback,
        "dsip": args.dsip,
        "dsip_advertise": args.dsip_advertise,
        "coordinator": args.coordinator,
        "health": health_knobs_given(args) or None,  # knobs over the file's or stored ones
    }
    return {name: value for name, value in flags.items() if value is not None}


def _check_same_cluster(stored: ClusterSpec, wanted: ClusterSpec, directory: Path) -> None:
    """`cluster up` on an existing directory starts the cluster it describes: settings
    that would describe another one are refused rather than silently ignored."""
    if len(stored.nodes) != len(wanted.nodes):
        raise CliError(
            f"{directory}/cluster.json has {len(stored.nodes)} nodes, not {len(wanted.nodes)}: "
            "use another --dir"
        )
    if wanted != stored:
        raise CliError(
            f"{directory}/cluster.json describes another cluster than these options: "
            "start it without them, or use another --dir"
        )


def cluster_save(args: argparse.Namespace) -> int:
    directory: Path = args.dir.resolve()
    try:
        supervisor = Supervisor(directory)  # knows whether redirectors were started
        config, notes = saved_config(directory, redirectors=supervisor.redirectors)
    except ClusterSpecError as error:
        raise CliError(str(error)) from None
    for note in notes:
        print(f"stargate cluster save: note: {note}", file=sys.stderr)
    header = (
        f"# The cluster of {directory}, saved by `stargate cluster save`.\n"
        "# `stargate cluster up --config FILE --dir NEW_DIR` recreates it: the same nodes,\n"
        "# settings, VMs and vDisk sizes. vDisk data is not copied: the vDisks start empty.\n\n"
    )
    with contextlib.suppress(BrokenPipeError):
        print(header + config.to_toml(), end="", flush=True)
    return 0


def cluster_document(supervisor: Supervisor, statuses: list[ProcessStatus]) -> dict[str, Any]:
    spec = supervisor.spec
    by_name = {status.name: status.to_json() for status in statuses}
    nodes = []
    for node in spec.nodes:
        nodes.append(
            {
                "node": node.node_id,
                "stargate": {
                    "portal": node.cvm_portal,
                    "address": f"{node.cvm_address}:{node.cvm_port}",
                    "http": node.http_url,
                    **by_name.get(node.stargate_name, {}),
                },
                "redirector": {
                    "portal": node.redirector_portal,
                    "address": f"{node.redirector_address}:{node.redirector_port}",
                    **by_name.get(node.redirector_name, {}),
                },
            }
        )
    return {
        "dir": str(supervisor.directory),
        # What POST/DELETE to the HTTP pages must send as Authorization: Bearer.
        "control_token_file": str(cluster_token_file(supervisor.directory)),
        "stable_window": spec.stable_window,
        "release_timeout": spec.release_timeout,
        "placement": spec.placement,
        "base_address": spec.base_address,
        "dsip": spec.dsip_portal,
        "coordinator": coordinator_of(supervisor.directory),
        "fabric": str(fabric_of(ClusterPaths(supervisor.directory))),
        **settings_document(spec),
        "nodes": nodes,
    }


def _foreground(supervisor: Supervisor) -> int:

    print("cluster up; Ctrl-C takes it down", flush=True)

    async def until_interrupted() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_top, supervisor)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(until_interrupted)
    finally:
        _stop_all(supervisor)
    return 0


def _stop_all(supervisor: Supervisor) -> list[str]:
    # Redirectors first: no new logins are sent to stargates that are about to go.
    redirectors = [p for p in supervisor.processes if p.kind is ProcessKind.REDIRECTOR]
    stargates = [p for p in supervisor.processes if p.kind is ProcessKind.STARGATE]
    return supervisor.stop_many(redirectors) + supervisor.stop_many(stargates)


def cluster_down(args: argparse.Namespace) -> int:
    # Every process with a pid file, whatever mode `cluster up` ran in.
    supervisor = _supervisor(args.dir.resolve(), redirectors=True)
    stopped = _stop_all(supervisor)
    print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
    return 0


def cluster_status(args: argparse.Namespace) -> int:
    supervisor = _supervisor(args.dir.resolve())
    statuses = trio.run(supervisor.statuses)
    spec = supervisor.spec
    if args.json:
        processes = [status.to_json() for status in statuses]
        print_json({**settings_document(spec), "processes": processes})
        return 0
    table = Table(
        title=f"cluster {supervisor.directory}",
        caption=f"failback: {spec.failback.value}; health checks: {spec.health.describe()}",
    )
    for column in ("process", "pid", "state", "health", "address"):
        table.add_column(column, no_wrap=True)
    table.add_column("log", overflow="fold")
    styles = {"up": "green", "stopped": "yellow", "starting": "yellow", "down": "red"}
    for status in statuses:
        table.add_row(
            status.name,
            str(status.pid or "-"),
            status.state,
            f"[{styles.get(status.health, '')}]{status.health}[/]",
            status.address,
            status.log,
        )
    output_console().print(table)
    return 0


# -- VMs and vDisks ---------------------------------------------------------------------


def vm_create(args: argparse.Namespace) -> int:

    directory: Path = args.dir.resolve()
    try:
        spec = ClusterSpec.load(directory)
        record, infos = create_vm(
            directory,
            args.name,
            home_node=args.node,
            disks=args.disks,
            size=args.size,
            sessions_per_disk=args.sessions_per_disk,
            load_balance=args.load_balance,
        )
        paths = ClusterPaths(directory)
        publish(paths, choose_coordinator(paths, None))  # ZooKeeper's copy of the VMs
    except (ClusterSpecError, ValueError) as error:
        raise CliError(str(error)) from None
    print_json(
        {
            "vm": record.name,
            "home_node": record.home_node,
            "sessions_per_disk": record.sessions_per_disk,
            "load_balance": record.load_balance,
            "portal": spec.node(record.home_node).redirector_portal,
            "vdisks": [info.to_json(spec) for info in infos],
        }
    )
    return 0


def vdisk_list(args: argparse.Namespace) -> int:
    directory: Path = args.dir.resolve()
    try:
        spec = ClusterSpec.load(directory)
    except ClusterSpecError as error:
        raise CliError(str(error)) from None
    try:
        table_rows = trio.run(vdisk_table, spec, ClusterPaths(directory))
    except CoordinationError as error:
        raise CliError(f"ownership records unreadable: {error}") from None
    if args.json:
        print_json(table_rows)
        return 0
    table = Table(title="vDisks")
    for column in ("vDisk", "VM / group", "home", "size", "served by", "conns", "IQN"):
        table.add_column(column)
    for row in table_rows:
        group = row.get("volume_group")
        table.add_row(
            row["id"],
            row["vm"] or (f"vg {group}" if group else "-"),
            str(row["home_node"] or "-"),
            f"{row['size'] / (1 << 20):.0f} MiB",
            str(row["serving_node"] or "-"),
            str(row["connections"]),
            row["iqn"] or "(its virtual target's LUN)",
        )
    output_console().print(table)
    return 0


# -- fault injection ------------------------------------------------------------------------


def cvm_action(args: argparse.Namespace) -> int:
    supervisor = _supervisor(args.dir.resolve())
    try:
        process = supervisor.stargate(args.node)
    except (ClusterSpecError, ValueError) as error:
        raise CliError(str(error)) from None
    action: str = args.cvm_action
    try:
        if action == "kill":
            pid = supervisor.kill(process)
        elif action == "stop":
            pid = supervisor.send(process, signal.SIGSTOP)
        elif action == "cont":
            pid = supervisor.send(process, signal.SIGCONT)
        else:
            if action == "restart":
                supervisor.stop(process)
            if args.not_ready is not None:
                try:
                    flags = not_ready_argv(args.not_ready, args.not_ready_status)
                except ValueError as error:
                    raise CliError(f"--not-ready-status: {error}") from None
                process = dataclasses.replace(process, argv=(*process.argv, *flags))
            pid = supervisor.start(process)
            if trio.run(supervisor.wait_ready, [process]):
                print(f"{process.name} does not answer; its log ends:", file=sys.stderr)
                print(supervisor.log_tail(process), file=sys.stderr)
                return 1
    except ProcessLookupError as error:
        raise CliError(str(error)) from None
    print(f"{process.name}: {action} (pid {pid})")
    return 0


def run_top_command(args: argparse.Namespace) -> int:

    supervisor = _supervisor(args.dir.resolve())
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(lambda: run_top(supervisor, interval=args.interval, iterations=args.iterations))
    return 0
