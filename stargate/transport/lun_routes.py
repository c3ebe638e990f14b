"""Where a command's LUN field leads on one connection: the logical unit, and what its
commands are charged to (the command queue's sub-queue and tenant, the vDisk's counters).

Built once per connection from its target's LUNs; a LUN field the target does not serve
(another number, or an addressing method other than peripheral or flat) leads nowhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from iscsicore.pdu import encode_lun
from stargate.queue import CommandQueue, Tenant
from stargate.stats import VDiskStats
from stargate.target import LogicalUnitLike, VDiskTarget


@dataclass(frozen=True, slots=True, eq=False)
class LunRoute:
    number: int
    lu: LogicalUnitLike
    vdisk_id: str
    queue_key: str  # its sub-queue in the command queue (round-robin between vDisks)
    stats: VDiskStats
    tenant: Tenant  # this session's share (one for all its LUNs) and this vDisk's


class LunRoutes:
    """The LUNs of one session's target, by raw LUN field."""

    def __init__(self, target: VDiskTarget, queue: CommandQueue) -> None:
        tenants = queue.tenants([lun.queue_key for lun in target.luns])
        self.routes: tuple[LunRoute, ...] = tuple(
            LunRoute(lun.number, lun.lu, lun.vdisk_id, lun.queue_key, lun.stats, tenant)
            for lun, tenant in zip(target.luns, tenants, strict=True)
        )
        self._by_field: dict[int, LunRoute] = {}
        for route in self.routes:
            self._by_field[encode_lun(route.number)] = route
            self._by_field[(0x4000 | route.number) << 48] = route  # flat addressing too

    def of(self, lun_field: int) -> LunRoute | None:
        return self._by_field.get(lun_field)

    @property
    def numbers(self) -> tuple[int, ...]:
        return tuple(route.number for route in self.routes)
