"""`stargate vg create|attach|detach|list|delete`: volume groups for external initiators."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import trio
from rich.table import Table

from cluster.commands import add_dir, print_json
from cluster.volume_groups import change_attachment, create_volume_group, delete_volume_group
from control.client import vdisk_table
from initiator.console import output_console
from iscsicore.chap import ChapSecrets
from redirector.vg_placement import home_node
from stargate.cli import CliError
from topology.spec import ClusterPaths, ClusterSpec, ClusterSpecError
from topology.vdisk import VDiskMeta
from topology.volume_group import (
    DEFAULT_VG_STABLE_WINDOW,
    DEFAULT_VIRTUAL_TARGETS,
    MAX_VIRTUAL_TARGETS,
    VolumeGroup,
    VolumeGroupError,
    VolumeGroupStore,
)


def _chap(text: str) -> ChapSecrets:
    try:
        return ChapSecrets.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def register(subparsers: Any) -> None:
    vg = subparsers.add_parser(
        "vg",
        help="volume groups: disks for external initiators behind the Data Services IP",
    )
    actions = vg.add_subparsers(dest="vg_action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="create a volume group and its disks")
    create.add_argument("name")
    add_dir(create)
    create.add_argument("--disks", type=int, required=True, help="how many disks (LUNs)")
    create.add_argument("--size", required=True, help="each disk's size (1G, 512M or bytes)")
    create.add_argument(
        "--attach", action="append", default=[], metavar="IQN",
        help="an initiator that may use the group (repeat for more)",
    )  # fmt: skip
    create.add_argument("--chap", type=_chap, metavar="USER:SECRET")
    create.add_argument("--mutual-chap", type=_chap, metavar="USER:SECRET")
    create.add_argument(
        "--virtual-targets", type=int, metavar="N",
        help=f"targets the disks are spread over, 1..{MAX_VIRTUAL_TARGETS} "
        f"(default {DEFAULT_VIRTUAL_TARGETS}; 1: one target, its disks LUNs 0..K-1)",
    )  # fmt: skip
    create.add_argument("--preferred-node", type=int, metavar="N")
    create.add_argument(
        "--load-balance", action="store_true", help="spread the targets over every CVM"
    )
    create.add_argument(
        "--stable-window", type=float, metavar="SECONDS",
        help=f"fail back once the home CVM is healthy this long (default "
        f"{DEFAULT_VG_STABLE_WINDOW:g}, as Nutanix Volumes)",
    )  # fmt: skip
    create.set_defaults(handler=vg_create)
    for action, help_text in (
        ("attach", "let an initiator see and use the group"),
        ("detach", "take an initiator's access away"),
    ):
        parser = actions.add_parser(action, help=help_text)
        parser.add_argument("name")
        parser.add_argument("iqn")
        add_dir(parser)
        parser.set_defaults(handler=vg_attach_or_detach)
    listing = actions.add_parser("list", help="each group's targets, LUNs and serving CVMs")
    add_dir(listing)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=vg_list)
    delete = actions.add_parser("delete", help="delete a group and its disks' data")
    delete.add_argument("name")
    add_dir(delete)
    delete.add_argument("--force", action="store_true", help="even with initiators attached")
    delete.set_defaults(handler=vg_delete)


def describe(group: VolumeGroup, spec: ClusterSpec, paths: ClusterPaths) -> dict[str, Any]:
    """A group as `vg create` and `vg list --json` print it (no secrets)."""
    return {
        "name": group.name,
        "iqn": group.iqn,
        "dsip": spec.dsip_portal,
        "attachments": list(group.attachments),
        "chap": group.chap is not None,
        "mutual_chap": group.mutual_chap is not None,
        "preferred_node": group.preferred_node,
        "load_balance": group.load_balance,
        "stable_window": group.stable_window,
        "targets": [
            {
                "iqn": target.iqn,
                "home_node": home_node(group, target, spec.node_ids),
                "luns": [
                    {
                        "lun": lun,
                        "vdisk": vdisk_id,
                        "size": VDiskMeta.load(paths.vdisk_meta_file(vdisk_id)).size,
                    }
                    for lun, vdisk_id in enumerate(target.vdisk_ids)
                ],
            }
            for target in group.targets()
        ],
    }


def vg_create(args: argparse.Namespace) -> int:
    directory: Path = args.dir.resolve()
    try:
        group = create_volume_group(
            directory,
            args.name,
            disks=args.disks,
            size=args.size,
            attachments=tuple(args.attach),
            chap=args.chap,
            mutual_chap=args.mutual_chap,
            virtual_targets=args.virtual_targets,
            preferred_node=args.preferred_node,
            load_balance=args.load_balance,
            stable_window=args.stable_window,
        )
        spec = ClusterSpec.load(directory)
    except (ClusterSpecError, VolumeGroupError, ValueError) as error:
        raise CliError(str(error)) from None
    print_json(describe(group, spec, ClusterPaths(directory)))
    return 0


def vg_attach_or_detach(args: argparse.Namespace) -> int:
    try:
        group = change_attachment(
            args.dir.resolve(), args.name, args.iqn, attach=args.vg_action == "attach"
        )
    except VolumeGroupError as error:
        raise CliError(str(error)) from None
    print_json({"name": group.name, "attachments": list(group.attachments)})
    return 0


def vg_delete(args: argparse.Namespace) -> int:
    try:
        group = delete_volume_group(args.dir.resolve(), args.name, force=args.force)
    except VolumeGroupError as error:
        raise CliError(str(error)) from None
    print(f"deleted volume group {group.name} and its {len(group.vdisk_ids)} disks")
    return 0


def vg_list(args: argparse.Namespace) -> int:
    directory: Path = args.dir.resolve()
    try:
        spec = ClusterSpec.load(directory)
        groups = VolumeGroupStore(directory).all()
    except (ClusterSpecError, VolumeGroupError) as error:
        raise CliError(str(error)) from None
    paths = ClusterPaths(directory)
    # What the running CVMs say of each disk: who serves it, with how many connections.
    serving = {row["id"]: row for row in trio.run(vdisk_table, spec, paths)}
    documents = []
    for group in groups:
        document = describe(group, spec, paths)
        for target in document["targets"]:
            rows = [serving.get(lun["vdisk"], {}) for lun in target["luns"]]
            nodes = {row.get("serving_node") for row in rows} - {None}
            target["serving_node"] = nodes.pop() if len(nodes) == 1 else None
            target["connections"] = max((row.get("connections", 0) for row in rows), default=0)
        documents.append(document)
    if args.json:
        print_json(documents)
        return 0
    table = Table(title="Volume groups")
    for column in ("group", "target", "LUNs", "home", "served by", "conns", "attached"):
        table.add_column(column)
    for document in documents:
        for target in document["targets"]:
            table.add_row(
                document["name"],
                target["iqn"],
                ", ".join(f"{lun['lun']}:{lun['size'] >> 20} MiB" for lun in target["luns"]),
                str(target["home_node"]),
                str(target["serving_node"] or "-"),
                str(target["connections"]),
                ", ".join(document["attachments"]) or "-",
            )
    output_console().print(table)
    return 0
