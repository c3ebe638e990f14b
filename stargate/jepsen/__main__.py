"""`python -m stargate.jepsen`: the same as `stargate soak`."""

import sys

from stargate.jepsen.cli import main

sys.exit(main())
