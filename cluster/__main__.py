"""`python -m cluster`: the `stargate` console script."""

import sys

from cluster.cli import main

sys.exit(main())
