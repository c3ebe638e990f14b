"""`stargate cluster` options for the cluster's behaviour settings (topology/settings.py):
the failback mode, the stable window and the redirectors' health-check knobs, given to
`cluster up`, changed live with `cluster set`, shown by `cluster status` and `up --detach`.

`cluster set` records the new values in cluster.json (what a restarted redirector reads)
and gives them to every running redirector through its page (`POST /h/gflags`, the same
path an operator's script uses), so they take effect at once."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import trio

from control.control_token import ControlTokenError, cluster_token
from control.http import HttpError, http_json
from redirector.config import redirector_page_url
from redirector.flags import MAX_STABLE_WINDOW
from stargate.cli import CliError
from topology.settings import (
    DEFAULT_HEALTH,
    HEALTH_KNOBS,
    FailbackMode,
    HealthChecks,
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


PUSH_TIMEOUT = 3.0


def _stable_window(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= seconds <= MAX_STABLE_WINDOW:
        raise argparse.ArgumentTypeError(f"must be in [0, {MAX_STABLE_WINDOW:g}] s: {text!r}")
    return seconds


def add_set_options(parser: argparse.ArgumentParser) -> None:
    add_failback(parser, "the failback mode, used from the next failback on")
    parser.add_argument(
        "--stable-window",
        type=_stable_window,
        metavar="SECONDS",
        help="how long a CVM must be healthy before its vDisks fail back",
    )
    add_health_knobs(parser)


def cluster_set(args: argparse.Namespace) -> int:
    """Rewrite cluster.json, then set the same flags on every running redirector."""
    directory: Path = args.dir.resolve()
    knobs = health_knobs_given(args)
    if args.failback is None and args.stable_window is None and not knobs:
        raise CliError(
            "nothing to set: give --failback, --stable-window, --nop-interval, "
            "--nop-timeout, --misses or --connect-timeout"
        )
    try:
        spec = ClusterSpec.load(directory)
        health = HealthChecks.from_json({**spec.health.to_json(), **knobs})
    except (ClusterSpecError, SettingsError) as error:
        raise CliError(str(error)) from None
    flags: dict[str, str] = {name: repr(value) for name, value in knobs.items()}
    changes: dict[str, Any] = {"health": health}
    if args.failback is not None:
        changes["failback"] = args.failback
        flags["failback"] = args.failback.value
    if args.stable_window is not None:
        changes["stable_window"] = args.stable_window
        flags["stable_window"] = repr(args.stable_window)
    spec = dataclasses.replace(spec, **changes)
    spec.save(directory)
    live = trio.run(push_to_redirectors, spec, directory, flags)
    print(
        json.dumps(
            {**settings_document(spec), "stable_window": spec.stable_window, "redirectors": live},
            indent=2,
            sort_keys=True,
        )
    )
    return 0


async def push_to_redirectors(
    spec: ClusterSpec, directory: Path, flags: dict[str, str]
) -> dict[str, str]:
    """POST /h/gflags to each node's redirector; per node "set", or why not (a redirector
    that is not running reads cluster.json when it starts)."""
    try:
        token = cluster_token(directory)
    except ControlTokenError as error:
        return {str(node.node_id): f"not set live: {error}" for node in spec.nodes}
    query = urlencode(flags)
    outcome: dict[str, str] = {}

    async def push(node_id: int, url: str) -> None:
        try:
            status, answer = await http_json("POST", url, timeout=PUSH_TIMEOUT, token=token)
        except HttpError as error:
            outcome[str(node_id)] = f"not running? {error}"
            return
        if status == 200:
            outcome[str(node_id)] = "set"
        else:
            error_text = answer.get("error") if isinstance(answer, dict) else answer
            outcome[str(node_id)] = f"refused (HTTP {status}): {error_text}"

    async with trio.open_nursery() as nursery:
        for node in spec.nodes:
            nursery.start_soon(push, node.node_id, f"{redirector_page_url(node)}/h/gflags?{query}")
    return dict(sorted(outcome.items()))
