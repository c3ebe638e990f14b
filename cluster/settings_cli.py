"""`stargate cluster` options for the cluster's behaviour settings (topology/settings.py):
the failback mode and the redirectors' health-check knobs, given to `cluster up`, changed
live with `cluster set`, shown by `cluster status` and `up --detach`."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from stargate.cli import CliError
from topology.settings import (
    DEFAULT_HEALTH,
    HEALTH_KNOBS,
    FailbackMode,
    SettingsError,
)
from topology.spec import ClusterSpec, ClusterSpecError


def _failback_mode(text: str) -> FailbackMode:
    try:
        return FailbackMode.parse(text)
    except SettingsError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    return seconds


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a whole number of at least 1: {text!r}")
    return int(text)


def add_failback(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument(
        "--failback",
        type=_failback_mode,
        metavar="{kill,logout}",
        help=help_text,
    )


def add_health_knobs(parser: argparse.ArgumentParser) -> None:
    """The redirectors' health checks of the stargates (cluster.json's "health")."""
    default = DEFAULT_HEALTH
    group = parser.add_argument_group("redirector health checks")
    group.add_argument(
        "--nop-interval",
        type=_seconds,
        metavar="SECONDS",
        help=f"between NOP-Outs to each stargate (default {default.nop_interval:g})",
    )
    group.add_argument(
        "--nop-timeout",
        type=_seconds,
        metavar="SECONDS",
        help=f"a NOP-Out unanswered this long is a miss (default {default.nop_timeout:g})",
    )
    group.add_argument(
        "--misses",
        type=_count,
        metavar="N",
        help=f"misses in a row before a stargate is down (default {default.misses})",
    )
    group.add_argument(
        "--connect-timeout",
        type=_seconds,
        metavar="SECONDS",
        help=f"for a health connection and login (default {default.connect_timeout:g})",
    )


def health_knobs_given(args: argparse.Namespace) -> dict[str, float | int]:
    """The health-check knobs given on the command line (they override one by one)."""
    return {name: getattr(args, name) for name in HEALTH_KNOBS if getattr(args, name) is not None}


def settings_document(spec: ClusterSpec) -> dict[str, Any]:
    return {"failback": spec.failback.value, "health": spec.health.to_json()}


def cluster_set(args: argparse.Namespace) -> int:
    """Rewrite cluster.json: the redirectors read the failback mode at each failback."""
    directory: Path = args.dir.resolve()
    if args.failback is None:
        raise CliError("nothing to set: give --failback kill|logout")
    try:
        spec = ClusterSpec.load(directory)
    except ClusterSpecError as error:
        raise CliError(str(error)) from None
    spec = dataclasses.replace(spec, failback=args.failback)
    spec.save(directory)
    print(json.dumps(settings_document(spec), indent=2, sort_keys=True))
    return 0
