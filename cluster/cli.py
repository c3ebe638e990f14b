"""The `stargate` console script (also `python -m stargate` and `python -m cluster`).

It sits on the top floor because it gathers every floor's subcommands: `target` (the
target alone, `stargate.cli`), the cluster's (`cluster|vm|vdisk|cvm|top|demo`), the fault
tools (`fault|scenario|timeline`) and the soak. Each module's ``register(subparsers)`` adds
its parsers and sets ``handler`` (argv namespace -> exit code).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cluster import commands, fault_cli, vg_cli
from cluster.conformance import cli as conformance_cli
from cluster.jepsen import cli as soak_cli
from stargate import cli as target_cli
from stargate.cli import CliError, Handler

# In help order.
SUBCOMMAND_MODULES = (target_cli, commands, vg_cli, fault_cli, soak_cli, conformance_cli)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stargate", description="The CVM storage service of the cluster emulator."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except CliError as error:
        print(f"stargate {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
