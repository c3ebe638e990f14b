"""Print how many examples each fuzz target ran, and for how long."""

from __future__ import annotations

import pytest

from tests.fuzz.driver import FUZZ_SECONDS_VARIABLE, STATS, fuzz_seconds


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not STATS:
        return
    budget = fuzz_seconds()
    mode = f"{FUZZ_SECONDS_VARIABLE}={budget:g}" if budget else "CI budget"
    terminalreporter.section(f"fuzz targets ({mode})")
    for name, stats in sorted(STATS.items()):
        rate = stats.examples / stats.seconds if stats.seconds else 0.0
        terminalreporter.write_line(
            f"{name}: {stats.examples} examples in {stats.rounds} rounds, "
            f"{stats.seconds:.1f} s ({rate:.0f}/s)"
        )
        if stats.events:
            events = ", ".join(f"{what}: {n}" for what, n in sorted(stats.events.items()))
            terminalreporter.write_line(f"    {events}")
