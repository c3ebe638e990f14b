"""`python -m redirector --dir DIR --node I [--log FILE]`: node I's iSCSI redirector.

Started by `stargate cluster up`. Reads DIR/cluster.json; logs in AHV's iscsi_redirector
format to FILE (default stderr); SIGTERM or SIGINT end it cleanly.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from redirector.app import Redirector
from redirector.config import (
    DEFAULT_LOGIN_TIMEOUT,
    DEFAULT_STARTUP_GRACE,
    RedirectorConfig,
    Timers,
)
from redirector.log import redirector_logger
from topology.coordination import CoordinationError
from topology.settings import HEALTH_KNOBS, SettingsError
from topology.spec import ClusterSpecError


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m redirector", description="One node's iSCSI redirector in a cluster."
    )
    parser.add_argument("--dir", type=Path, required=True, help="the cluster directory")
    parser.add_argument("--node", type=int, required=True, help="this node's id")
    parser.add_argument("--log", type=Path, help="the AHV-format log file (default: stderr)")
    overrides = "overrides cluster.json's health knob (tests, experiments)"
    parser.add_argument("--nop-interval", type=float, metavar="SECONDS", help=overrides)
    parser.add_argument("--nop-timeout", type=float, metavar="SECONDS", help=overrides)
    parser.add_argument("--misses", type=int, metavar="N", help=overrides)
    parser.add_argument("--connect-timeout", type=float, metavar="SECONDS", help=overrides)
    parser.add_argument("--login-timeout", type=float, default=DEFAULT_LOGIN_TIMEOUT)
    parser.add_argument("--startup-grace", type=float, default=DEFAULT_STARTUP_GRACE)
    return parser.parse_args(argv)


async def serve_until_signalled(redirector: Redirector, logger: logging.Logger) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(redirector.run)
            node = redirector.config.node
            print(
                f"redirector-{node.node_id}: iSCSI {node.redirector_address}:{port}, "
                f"advertised {node.redirector_portal}",
                flush=True,
            )
            async for signum in signals:
                logger.info("Signal %s: shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    timers = Timers(login_timeout=args.login_timeout, startup_grace=args.startup_grace)
    given = {name: getattr(args, name) for name in HEALTH_KNOBS}
    overrides = {name: value for name, value in given.items() if value is not None}
    try:
        config = RedirectorConfig.load(args.dir, args.node, timers)
        if overrides:
            health = dataclasses.replace(config.spec.health, **overrides)
            config = dataclasses.replace(config, timers=dataclasses.replace(timers, health=health))
    except (ClusterSpecError, SettingsError) as error:
        print(f"redirector-{args.node}: {error}", file=sys.stderr)
        return 2
    logger = redirector_logger(args.log)
    failure: str | None = None
    try:
        trio.run(serve_until_signalled, Redirector(config, logger), logger)
    except* OSError as group:  # from inside trio's nurseries: wrapped in a group
        failure = f"cannot listen: {group.exceptions[0]}"
    except* CoordinationError as group:
        failure = f"coordinator {config.paths.coordinator()}: {group.exceptions[0]}"
    if failure is not None:
        print(f"redirector-{args.node}: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
