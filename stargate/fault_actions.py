"""Immediate fault actions on a running stargate: asynchronous logout and drop messages
with chosen Time2Wait/Time2Retain, unit attentions on demand, a network pause."""

from __future__ import annotations

from typing import TYPE_CHECKING

from faults.model import Fault, FaultKind
from stargate.scsi.ua import UnitAttentionQueues

if TYPE_CHECKING:
    from stargate.server import StargateServer


class ServerActions:
    """`FaultInjector.perform_action` for one `StargateServer`."""

    def __init__(self, server: StargateServer) -> None:
        self.server = server

    def __call__(self, fault: Fault) -> str:
        server = self.server
        kind = fault.kind
        vdisks = [fault.vdisk] if fault.vdisk else [t.vdisk_id for t in server.registry]
        if kind is FaultKind.ASYNC_LOGOUT:
            asked = sum(server.request_logout(v, fault.time2wait) for v in vdisks)
            return f"logout requested of {asked} session(s), within {fault.time2wait} s"
        if kind in (FaultKind.ASYNC_DROP_CONNECTION, FaultKind.ASYNC_DROP_SESSION):
            whole = kind is FaultKind.ASYNC_DROP_SESSION
            dropped = sum(
                server.drop_connections(
                    v,
                    time2wait=fault.time2wait,
                    time2retain=fault.time2retain,
                    whole_session=whole,
                )
                for v in vdisks
            )
            return f"dropped {dropped} connection(s), Time2Wait {fault.time2wait}"
        if kind is FaultKind.UNIT_ATTENTION:
            code = (fault.asc, fault.ascq)
            queued = 0
            for vdisk_id in vdisks:
                target = server.registry.by_vdisk_id(vdisk_id)
                queues = _unit_attention_queues(target.lu if target is not None else None)
                if queues is not None:
                    queues.establish(code)
                    queued += 1
            return f"unit attention {code[0]:#04x}/{code[1]:#04x} on {queued} vDisk(s)"
        if kind is FaultKind.NETWORK_PAUSE:
            server.faults.network_paused = True
            connections = list(server.all_connections())
            for connection in connections:
                connection.blackhole()
            return f"network paused: {len(connections)} connection(s) blackholed"
        return f"{kind.value}: not an action"


def _unit_attention_queues(lu: object) -> UnitAttentionQueues | None:
    """The queues of a logical unit, looking through wrappers (the cluster's fence)."""
    for _ in range(3):
        queues = getattr(lu, "unit_attentions", None)
        if isinstance(queues, UnitAttentionQueues):
            return queues
        lu = getattr(lu, "lu", None) or getattr(lu, "inner", None)
        if lu is None:
            return None
    return None
