"""Fault injection and failover forensics: armed faults (model, triggers, injector), the
transport's fault strategy (`FaultInjector`, given to `stargate.transport` connections),
actions on a server, the HTTP control endpoints, the `stargate fault|scenario|timeline`
commands, the timeline and the initiator auditor."""

from stargate.faults.injector import FaultEvent, FaultInjector
from stargate.faults.model import Delay, DropMode, Fault, FaultKind, IoClass

__all__ = ["Delay", "DropMode", "Fault", "FaultEvent", "FaultInjector", "FaultKind", "IoClass"]
