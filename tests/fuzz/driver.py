"""Time-bounded hypothesis fuzzing: one knob for CI and for long local runs.

A fuzz target is an ordinary ``@given`` test decorated with ``@fuzz_target(examples)``. In
CI (``FUZZ_SECONDS`` unset or 0) it runs one hypothesis round of ``examples`` random
examples, a few seconds per target. ``FUZZ_SECONDS=N python -m pytest tests/fuzz`` runs
rounds of fresh random examples until each target has spent N seconds (the round under
way finishes first). Every example counts in `STATS`, which the fuzz conftest prints.

A failure is reported the hypothesis way: the shrunk example and a
``@reproduce_failure(...)`` line to paste between ``@fuzz_target`` and ``@given`` to
replay it. Bugs found are pinned as regression tests in tests/fuzz/test_regressions.py.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

FUZZ_SECONDS_VARIABLE = "FUZZ_SECONDS"
PYTEST_TIMEOUT = 300  # as in pyproject.toml


def fuzz_seconds() -> float:
    """The local time budget per target; 0 in CI (one round of the fixed example count)."""
    raw = os.environ.get(FUZZ_SECONDS_VARIABLE, "").strip()
    if not raw:
        return 0.0
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError(f"{FUZZ_SECONDS_VARIABLE} must be a number of seconds: {raw!r}") from None
    return max(0.0, seconds)


@dataclass
class TargetStats:
    examples: int = 0
    rounds: int = 0
    seconds: float = 0.0
    events: Counter[str] = field(default_factory=Counter)


STATS: dict[str, TargetStats] = {}


def count_example(target: str) -> None:
    """Called by a target body once per example (the figures in the summary)."""
    STATS.setdefault(target, TargetStats()).examples += 1


class ErrorLog(logging.Handler):
    """Collects ERROR records: the server logs a connection handler's failure (a bug)
    instead of raising it, so a target attaches one of these to see it."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def count_event(target: str, what: str) -> None:
    """Count an outcome of an example (shows that a target reaches the states it should)."""
    STATS.setdefault(target, TargetStats()).events[what] += 1


def fuzz_target(examples: int) -> Callable[[Callable[..., Any]], Callable[[], None]]:
    """Turn a ``@given`` function into a time-bounded pytest test (see the module doc).

    Hypothesis' deadline is off: a target bounds its own time (trio.fail_after) and a
    slow example on a loaded machine is not a bug. The example database keeps failures
    so the next run tries them first.
    """

    def decorate(given_test: Callable[..., Any]) -> Callable[[], None]:
        configured = settings(
            max_examples=examples,
            deadline=None,
            print_blob=True,
            suppress_health_check=[
                HealthCheck.too_slow,
                HealthCheck.data_too_large,
                HealthCheck.filter_too_much,
            ],
        )(given_test)
        name = given_test.__name__

        def test() -> None:
            budget = fuzz_seconds()
            stats = STATS.setdefault(name, TargetStats())
            started = time.monotonic()
            try:
                while True:
                    configured()
                    stats.rounds += 1
                    if time.monotonic() - started >= budget:
                        break
            finally:
                stats.seconds += time.monotonic() - started

        # Not functools.wraps: pytest would follow __wrapped__ and ask for the arguments
        # that hypothesis supplies.
        test.__name__ = test.__qualname__ = name
        test.__doc__ = given_test.__doc__
        test.__module__ = given_test.__module__
        budget = fuzz_seconds()
        if budget:
            # pytest-timeout's default (pyproject) is for CI: a long local run gets its
            # budget plus room for the round under way and a failure's shrinking.
            return pytest.mark.timeout(PYTEST_TIMEOUT + 2 * budget)(test)
        return test

    return decorate
