"""`python -m stargate`: the same as the `stargate` console script."""

import sys

from stargate.cli import main

sys.exit(main())
