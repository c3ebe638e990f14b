"""The redirector's tunables and counters for its 2009-style pages (`/h/gflags`, `/h/vars`).

Live changes, all safe because each is read again where it is used: the health-check knobs
(every monitor reads its timers at each ping), the stable window (the policy compares with
it at each check), the failback mode and logout time (read at each failback).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from control.flags import Flag, FlagSet, int_in, seconds_in
from topology.settings import MAX_MISSES, MAX_SECONDS, FailbackMode

if TYPE_CHECKING:
    from redirector.app import Redirector

MAX_STABLE_WINDOW = 86_400.0
MAX_LOGOUT_SECONDS = 0xFFFF  # AsyncEvent 1's Parameter3


def redirector_flags(redirector: Redirector) -> FlagSet:
    health = redirector.health
    policy = redirector.policy
    failback = redirector.failback
    timers = redirector.config.timers

    def knob(name: str, help_text: str, parse: Callable[[str], Any]) -> Flag:
        def apply(value: Any) -> None:
            health.apply(dataclasses.replace(health.knobs, **{name: value}))

        return Flag(name, help_text, lambda: getattr(health.knobs, name), parse, apply)

    def set_stable_window(value: float) -> None:
        policy.stable_window = value

    def set_failback(mode: FailbackMode) -> None:
        failback.mode_override = mode

    def set_logout_seconds(value: int) -> None:
        failback.logout_seconds = value

    return FlagSet(
        [
            Flag(
                "stable_window",
                "seconds the local stargate must stay healthy before its vDisks fail back",
                lambda: policy.stable_window,
                seconds_in(0.0, MAX_STABLE_WINDOW, low_open=False),
                set_stable_window,
            ),
            Flag(
                "failback",
                "how remote stargates end failed-back sessions: kill (quiesce then close) "
                "or logout (AsyncEvent 1)",
                failback.mode,
                FailbackMode.parse,
                set_failback,
            ),
            Flag(
                "failback_logout_seconds",
                "in mode logout, how long sessions get to log out before they are dropped",
                lambda: failback.failback_logout_seconds,
                int_in(0, MAX_LOGOUT_SECONDS),
                set_logout_seconds,
            ),
            knob(
                "nop_interval",
                "seconds between NOP-Outs to each stargate",
                seconds_in(0.0, MAX_SECONDS),
            ),
            knob(
                "nop_timeout",
                "a NOP-Out unanswered this long is a miss",
                seconds_in(0.0, MAX_SECONDS),
            ),
            knob("misses", "misses in a row before a stargate is down", int_in(1, MAX_MISSES)),
            knob(
                "connect_timeout",
                "seconds for a health connection and its login",
                seconds_in(0.0, MAX_SECONDS),
            ),
            Flag(
                "placement",
                "how vDisks are placed on remote stargates while the local one is down",
                lambda: policy.mode,
                fixed_because="placements made under one mode are kept by the policy",
            ),
            Flag(
                "login_timeout",
                "seconds a client's login may take",
                lambda: timers.login_timeout,
                fixed_because="given to the portal at start",
            ),
            Flag(
                "startup_grace",
                "seconds after start during which a stargate never seen up is not declared down",
                lambda: timers.startup_grace,
                fixed_because="only meaningful at start",
            ),
        ]
    )


def redirector_vars(redirector: Redirector) -> dict[str, int | float]:
    """``redirector/...`` counters: redirects per stargate, failovers (redirects to a remote
    stargate), failbacks, the health of each stargate."""
    stats = redirector.server.stats
    local = redirector.health.local_key
    counters: dict[str, int | float] = {
        "redirector/refused": stats.refused,
        "redirector/discovery_sessions": stats.discovery_sessions,
        "redirector/bad_clients": stats.bad_clients,
        "redirector/redirects": sum(stats.redirects.values()),
        "redirector/failovers": sum(n for key, n in stats.redirects.items() if key != local),
    }
    for key, count in stats.redirects.items():
        counters[f"redirector/node/{key}/redirects"] = count
    for key, state in redirector.health.nodes.items():
        counters[f"redirector/node/{key}/healthy"] = 1 if state.reported else 0
        monitor = redirector.health.monitors.get(key)
        if monitor is not None:
            counters[f"redirector/node/{key}/health_checks"] = monitor.checks
    failback = redirector.failback.stats
    counters["redirector/failbacks"] = failback.requested
    counters["redirector/failback/sessions_asked"] = failback.sessions_asked
    counters["redirector/failback/connections_killed"] = failback.connections_killed
    counters["redirector/failback/abandoned"] = failback.abandoned
    dsip = redirector.dsip
    counters["redirector/dsip/leading"] = 1 if dsip.leading else 0
    counters["redirector/dsip/terms"] = dsip.terms
    counters["redirector/dsip/redirects"] = sum(dsip.server.stats.redirects.values())
    counters["redirector/dsip/discovery_sessions"] = dsip.server.stats.discovery_sessions
    counters["redirector/dsip/refused_unattached"] = dsip.server.refused_unattached
    counters["redirector/dsip/failbacks"] = dsip.failback.requested
    return counters
