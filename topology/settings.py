"""Cluster-wide behaviour recorded in cluster.json: how failback ends the remote sessions
and how the redirectors check the stargates' health.

Both are plain values, validated here once: `cluster up` flags, cluster.json and
`cluster set` all go through these constructors, so a bad value is refused the same way
wherever it comes from (`SettingsError`, a `ValueError`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

MAX_SECONDS = 3600.0  # a health timer is in (0, this]
MAX_MISSES = 100


class SettingsError(ValueError):
    """A failback mode or a health-check knob out of its range."""


class FailbackMode(Enum):
    """How a remote stargate gives a vDisk back when the local one is stable again.

    KILL is what the Nutanix Bible describes ("will quiesce then kill all connections"):
    new commands are held, in-flight ones finish (bounded), then the TCP connections are
    closed without any async event. LOGOUT sends AsyncEvent 1 (logout request) and drops
    the sessions that have not logged out after a timeout.
    """

    KILL = "kill"
    LOGOUT = "logout"

    @classmethod
    def parse(cls, text: str) -> FailbackMode:
        try:
            return cls(text)
        except ValueError:
            choices = ", ".join(mode.value for mode in cls)
            raise SettingsError(f"failback mode must be one of {choices}, not {text!r}") from None


DEFAULT_FAILBACK = FailbackMode.KILL


@dataclass(frozen=True)
class HealthChecks:
    """The redirectors' checks of each stargate: a NOP-Out every ``nop_interval`` seconds
    on a discovery session, unanswered after ``nop_timeout``; ``misses`` unanswered in a
    row mean down (a refused or reset connection means down at once); a connection or
    login taking longer than ``connect_timeout`` fails."""

    nop_interval: float = 1.0
    nop_timeout: float = 3.0
    misses: int = 1
    connect_timeout: float = 3.0

    def __post_init__(self) -> None:
        for name in ("nop_interval", "nop_timeout", "connect_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise SettingsError(f"{name} must be a number of seconds, not {value!r}")
            if not (math.isfinite(value) and 0 < value <= MAX_SECONDS):
                raise SettingsError(f"{name} must be in (0, {MAX_SECONDS:g}] seconds, not {value}")
            object.__setattr__(self, name, float(value))  # frozen: normalise ints
        if isinstance(self.misses, bool) or not isinstance(self.misses, int):
            raise SettingsError(f"misses must be an integer, not {self.misses!r}")
        if not 1 <= self.misses <= MAX_MISSES:
            raise SettingsError(f"misses must be in 1..{MAX_MISSES}, not {self.misses}")

    @property
    def detection_bound(self) -> float:
        """The longest a hung stargate can go unnoticed after its last answer: ``misses``
        rounds of one interval then one NOP-Out unanswered for the timeout."""
        return self.misses * (self.nop_interval + self.nop_timeout)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Any) -> HealthChecks:
        if not isinstance(raw, dict):
            raise SettingsError(f"health must be an object, not {raw!r}")
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise SettingsError(f"unknown health fields {sorted(unknown)}")
        return cls(**raw)

    def describe(self) -> str:
        return (
            f"NOP every {self.nop_interval:g} s, timeout {self.nop_timeout:g} s, "
            f"down after {self.misses} miss(es), connect timeout {self.connect_timeout:g} s"
        )


DEFAULT_HEALTH = HealthChecks()
HEALTH_KNOBS = tuple(HealthChecks.__dataclass_fields__)  # as cluster.json and flags name them
