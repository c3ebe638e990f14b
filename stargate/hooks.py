"""The typed hooks through which the layers above (the cluster, fault injection) reach a
`StargateServer`: given at construction, fixed for the server's life.

    hooks = ServerHooks(
        gate=OwnershipGate(...),                   # which vDisks' commands may run now
        login_policy=lambda registry, sessions: OwnershipLoginPolicy(..., on_login),
        observer=forensics,                        # session started / ended
        faults=FaultInjector(is_failed_over=..., listeners=[forensics.fault_fired]),
    )
    server = StargateServer(registry, config, hooks)

The logical unit's fence is no hook of the server: it wraps the unit the registry serves
(cluster/admission.py `FencedLogicalUnit`, a `stargate.target.LogicalUnitLike`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from faults.injector import FaultInjector
from stargate.login_phase import LoginPolicy
from stargate.queue import AdmissionGate
from stargate.session import Session, SessionTable
from stargate.target import TargetRegistry


class ObservedConnection(Protocol):
    """What a session observer may read of the session's connection."""

    @property
    def cmd_sn_out_of_window(self) -> int: ...

    @property
    def logout_requested_at(self) -> float | None: ...


class SessionObserver(Protocol):
    """Told when a session enters the full-feature phase and when it ends."""

    def session_started(self, session: Session, connection: ObservedConnection) -> None: ...

    def session_ended(
        self, session: Session, connection: ObservedConnection, reason: str
    ) -> None: ...


# Builds the server's login policy from its registry and session table.
LoginPolicyFactory = Callable[[TargetRegistry, SessionTable], LoginPolicy]


@dataclass(frozen=True, slots=True)
class ServerHooks:
    # The command queue's admission gate; None: the queue's own rules alone.
    gate: AdmissionGate | None = None
    login_policy: LoginPolicyFactory = LoginPolicy
    observer: SessionObserver | None = None
    # Armed faults; the server performs their immediate actions (stargate.fault_actions).
    faults: FaultInjector = field(default_factory=FaultInjector)
