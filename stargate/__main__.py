"""`python -m stargate`: the `stargate` console script, whose entry point gathers every
floor's subcommands (`cluster.cli`); the one import upward, allowed by name in the import
contracts (pyproject.toml)."""

import sys

from cluster.cli import main

sys.exit(main())
