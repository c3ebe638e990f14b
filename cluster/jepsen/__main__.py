"""`python -m cluster.jepsen`: the same as `stargate soak`."""

import sys

from cluster.jepsen.cli import main

sys.exit(main())
