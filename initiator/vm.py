"""A VM's view of the cluster: many vDisks, each on its own session, through one portal.

    async with VM("127.0.0.1:3261") as vm:          # the node's redirector
        disk = await vm.attach("17")                 # iqn.2010-06.com.nutanix:vmdisk-17, LUN 0
        await disk.write(0, data)
        vm.report()                                  # per-vDisk statistics

Each disk's session lives in its own task (a trio nursery must be left by the task that
entered it), so disks attach and detach in any order.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import TracebackType

import trio

from iscsicore.portal import Portal

from .device import BlockDevice
from .login_flow import LoginOptions
from .session import SessionConfig
from .url import IscsiUrl, parse_portal

VDISK_IQN_PREFIX = "iqn.2010-06.com.nutanix:vmdisk-"


def vdisk_target(vdisk: str) -> str:
    """The target name of a vDisk id (a full IQN is returned unchanged)."""
    return (
        vdisk if vdisk.startswith("iqn.") or vdisk.startswith("eui.") else VDISK_IQN_PREFIX + vdisk
    )


@dataclass(slots=True)
class _Attachment:
    device: BlockDevice
    detach: trio.Event = field(default_factory=trio.Event)
    gone: trio.Event = field(default_factory=trio.Event)


class VM:
    def __init__(
        self,
        portal: str | Portal,
        *,
        name: str = "vm",
        config: SessionConfig | None = None,
    ) -> None:
        self.portal = parse_portal(portal) if isinstance(portal, str) else portal
        self.name = name
        self.config = config or SessionConfig()
        self._attachments: dict[str, _Attachment] = {}
        self._nursery_manager = trio.open_nursery()
        self._nursery: trio.Nursery | None = None

    async def __aenter__(self) -> VM:
        self._nursery = await self._nursery_manager.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        for attachment in self._attachments.values():
            attachment.detach.set()
        if isinstance(exc, Exception):
            # Let the body's error through as itself, not wrapped in an ExceptionGroup.
            await self._nursery_manager.__aexit__(None, None, None)
            return False
        return await self._nursery_manager.__aexit__(exc_type, exc, traceback)

    @property
    def disks(self) -> dict[str, BlockDevice]:
        return {name: a.device for name, a in self._attachments.items()}

    async def attach(self, vdisk: str, *, lun: int = 0) -> BlockDevice:
        """Log in to the vDisk's target through the VM's portal; raises if that fails."""
        if vdisk in self._attachments:
            raise ValueError(f"{vdisk} is already attached")
        assert self._nursery is not None, "use VM as `async with VM(...) as vm`"
        # Each session gets its own ISID: one initiator, many independent sessions.
        config = replace(self.config, login=replace(self.config.login, isid=LoginOptions().isid))
        url = IscsiUrl(self.portal, vdisk_target(vdisk), lun, self.config.login.chap)
        attachment: _Attachment = await self._nursery.start(self._serve, url, config)
        self._attachments[vdisk] = attachment
        return attachment.device

    async def detach(self, vdisk: str) -> None:
        attachment = self._attachments.pop(vdisk)
        attachment.detach.set()
        await attachment.gone.wait()

    async def _serve(
        self,
        url: IscsiUrl,
        config: SessionConfig,
        task_status: trio.TaskStatus[_Attachment] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            async with BlockDevice.open(url, config) as device:
                attachment = _Attachment(device)
                task_status.started(attachment)
                await attachment.detach.wait()
        finally:
            if "attachment" in locals():
                attachment.gone.set()

    def report(self) -> dict[str, dict[str, object]]:
        """Per-vDisk statistics: I/Os, bytes, latency percentiles, reconnects, the portal
        serving it now and the longest I/O pause."""
        return {name: a.device.stats.snapshot() for name, a in self._attachments.items()}
