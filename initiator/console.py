"""The terminal the project's commands print to (`initiator`, and the `stargate` command's
cluster subcommands above it). Piped or redirected, tables keep every character (scripts
grep whole IQNs) instead of being cut to rich's default 80 columns."""

from __future__ import annotations

import sys

from rich.console import Console

UNCUT_WIDTH = 10_000


def output_console(*, stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else UNCUT_WIDTH)
