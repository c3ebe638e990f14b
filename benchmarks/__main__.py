"""``python -m benchmarks``: see benchmarks/runner.py; ``python -m benchmarks ab``: see
benchmarks/ab.py."""

import sys

if sys.argv[1:2] == ["ab"]:
    from benchmarks.ab import main as ab_main

    sys.exit(ab_main(sys.argv[2:]))

from benchmarks.runner import main

sys.exit(main())
