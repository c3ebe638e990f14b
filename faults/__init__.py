"""Fault injection and failover forensics, independent of any server: the fault model and
its triggers, the injector (armed faults, events, actions it asks its server to perform),
login faults and the socket channel they use, the initiator auditor and the forensics
recorder (which reads the target through Protocols).

May import: iscsicore, topology.
"""

from faults.injector import FaultEvent, FaultInjector
from faults.model import Delay, DropMode, Fault, FaultKind, IoClass

__all__ = ["Delay", "DropMode", "Fault", "FaultEvent", "FaultInjector", "FaultKind", "IoClass"]
