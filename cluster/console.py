"""The terminal the cluster's commands print to. Piped or redirected, tables keep every
character (scripts grep whole IQNs) instead of being cut to rich's default 80 columns."""

from __future__ import annotations

import sys

from rich.console import Console

UNCUT_WIDTH = 10_000


def output_console() -> Console:
    return Console(width=None if sys.stdout.isatty() else UNCUT_WIDTH)
