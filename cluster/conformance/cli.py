"""`stargate conformance run|list`: put an initiator through the kit's tests."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import trio

from cluster.conformance.catalogue import SUITES, TESTS, select
from cluster.conformance.choice import DRIVER_NAMES, driver_named
from cluster.conformance.failover import (
    DEFAULT_CLUSTER_BASE,
    DEFAULT_STABLE_WINDOW,
    ClusterUnavailable,
)
from cluster.conformance.report import print_results, tests_table, write_json, write_junit
from cluster.conformance.runner import (
    DEFAULT_DRIVER_TIMEOUT,
    DEFAULT_WINDOW,
    RunOptions,
    run_tests,
)
from cluster.conformance.target import KitAddresses
from cluster.conformance.verdict import Verdict
from initiator.console import output_console
from stargate.cli import CliError


def register(subparsers: Any) -> None:
    conformance = subparsers.add_parser(
        "conformance",
        help="put an iSCSI initiator through login, full-feature, redirect and CHAP tests",
        description="Each test sets up scripted portals on loopback (a stargate serves the "
        "I/O behind them), runs the initiator, and judges it only by the PDUs the target "
        "received. Exit status 1 if a test fails.",
    )
    actions = conformance.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="the tests, their suite and RFC 7143 sections")
    listing.set_defaults(handler=list_command)
    run = actions.add_parser("run", help="run the tests against one initiator")
    run.add_argument("--initiator", required=True, choices=DRIVER_NAMES, help="the driver")
    run.add_argument(
        "--command",
        metavar="TEMPLATE",
        help="for --initiator command: a command line with {portal} {host} {port} {target} "
        "{lun} (and {user} {secret} {target_user} {target_secret} for CHAP)",
    )
    run.add_argument("--suite", default="all", help=f"{','.join(SUITES)} or all (default)")
    run.add_argument("--report", type=Path, metavar="FILE.json", help="write a JSON report")
    run.add_argument("--junit", type=Path, metavar="FILE.xml", help="write JUnit XML")
    run.add_argument(
        "--window", type=float, default=DEFAULT_WINDOW, help="seconds a storm test watches"
    )
    run.add_argument(
        "--driver-timeout",
        type=float,
        default=DEFAULT_DRIVER_TIMEOUT,
        help="seconds per driver run",
    )
    run.add_argument("--host", default="127.0.0.1", help="the kit's listening address")
    run.add_argument(
        "--other-host", default="127.0.0.2", help="the second address redirects lead to"
    )
    run.add_argument(
        "--cluster-base",
        default=DEFAULT_CLUSTER_BASE,
        help="base address of the failover suite's 3-node cluster (node N: base + N.1, N.2)",
    )
    run.add_argument(
        "--stable-window",
        type=float,
        default=DEFAULT_STABLE_WINDOW,
        help="seconds node 1 must be healthy before the failover suite's failback",
    )
    run.set_defaults(handler=run_command)


def list_command(args: argparse.Namespace) -> int:
    output_console().print(tests_table(TESTS))
    return 0


def run_command(args: argparse.Namespace) -> int:
    try:
        tests = select(args.suite)
        driver = driver_named(args.initiator, args.command)
    except ValueError as error:
        raise CliError(str(error)) from None
    if args.window <= 0 or args.driver_timeout <= 0 or args.stable_window <= 0:
        raise CliError("--window, --driver-timeout and --stable-window must be positive")
    if args.host == args.other_host:
        raise CliError("--other-host must differ from --host (the redirects need two addresses)")
    missing = driver.unavailable()
    if missing is not None:
        raise CliError(missing)
    options = RunOptions(
        args.window,
        args.driver_timeout,
        KitAddresses(args.host, args.other_host),
        args.cluster_base,
        args.stable_window,
    )
    # The stargate behind the portals logs every dropped connection: tests drop many.
    stargate_log = logging.getLogger("stargate")
    level = stargate_log.level
    stargate_log.setLevel(logging.CRITICAL)
    try:
        results = trio.run(run_tests, tests, driver, options)
    except ClusterUnavailable as error:
        raise CliError(str(error)) from None
    finally:
        stargate_log.setLevel(level)
    print_results(output_console(), driver.name, results)
    if args.report:
        write_json(args.report, driver.name, results)
    if args.junit:
        write_junit(args.junit, driver.name, results)
    return 1 if any(result.verdict is Verdict.FAIL for result in results) else 0
