"""Immediate fault actions on a running stargate: asynchronous logout and drop messages
with chosen Time2Wait/Time2Retain, unit attentions on demand, a network pause."""

from __future__ import annotations

from typing import TYPE_CHECKING

from faults.model import Fault, FaultKind

if TYPE_CHECKING:
    from stargate.server import StargateServer


class ServerActions:
    """The `faults.injector.ActionPerformer` of one `StargateServer` (it runs them)."""

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
                served = server.registry.serving(vdisk_id)
                if served is not None:
                    served[1].lu.unit_attentions.establish(code)
                    queued += 1
            return f"unit attention {code[0]:#04x}/{code[1]:#04x} on {queued} vDisk(s)"
        if kind is FaultKind.NETWORK_PAUSE:
            server.faults.network_paused = True
            connections = list(server.all_connections())
            for connection in connections:
                connection.blackhole()
            return f"network paused: {len(connections)} connection(s) blackholed"
        return f"{kind.value}: not an action"
