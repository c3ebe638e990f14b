"""A VM's view of the cluster: many vDisks, each on its own session(s), through one portal.

    async with VM("127.0.0.1:3261") as vm:          # the node's redirector
        disk = await vm.attach("17")                 # iqn.2010-06.com.nutanix:vmdisk-17, LUN 0
        await disk.write(0, data)
        vm.report()                                  # per-vDisk statistics

AHV Turbo gives a VM with 2 or more vCPUs 2 sessions per disk (one per guest queue):
``attach(vdisk, sessions=2)`` logs in twice, each session with its own ISID, both through
the redirector; ``vm.sessions(vdisk)`` lists them. Each session lives in its own task (a
trio nursery must be left by the task that entered it), so disks attach and detach in any
order.
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
        self._attachments: dict[str, list[_Attachment]] = {}  # a vDisk's sessions
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
        for attachments in self._attachments.values():
            for attachment in attachments:
                attachment.detach.set()
        if isinstance(exc, Exception):
            # Let the body's error through as itself, not wrapped in an ExceptionGroup.
            await self._nursery_manager.__aexit__(None, None, None)
            return False
        return await self._nursery_manager.__aexit__(exc_type, exc, traceback)

    @property
    def disks(self) -> dict[str, BlockDevice]:
        """Each vDisk's first session."""
        return {name: attachments[0].device for name, attachments in self._attachments.items()}

    def sessions(self, vdisk: str) -> list[BlockDevice]:
        """Every session of an attached vDisk, in login order."""
        return [attachment.device for attachment in self._attachments[vdisk]]

    async def attach(self, vdisk: str, *, lun: int = 0, sessions: int = 1) -> BlockDevice:
        """Log in to the vDisk's target through the VM's portal, ``sessions`` times; raises
        if one fails. Returns the first session."""
        if vdisk in self._attachments:
            raise ValueError(f"{vdisk} is already attached")
        if sessions < 1:
            raise ValueError(f"a disk has at least one session, not {sessions}")
        assert self._nursery is not None, "use VM as `async with VM(...) as vm`"
        url = IscsiUrl(self.portal, vdisk_target(vdisk), lun, self.config.login.chap)
        attachments: list[_Attachment] = []
        try:
            for _ in range(sessions):
                # Each session gets its own ISID: one initiator, many independent sessions.
                login = replace(self.config.login, isid=LoginOptions().isid)
                attachment: _Attachment = await self._nursery.start(
                    self._serve, url, replace(self.config, login=login)
                )
                attachments.append(attachment)
        except BaseException:
            for attachment in attachments:  # all or nothing
                attachment.detach.set()
            raise
        self._attachments[vdisk] = attachments
        return attachments[0].device

    async def detach(self, vdisk: str) -> None:
        attachments = self._attachments.pop(vdisk)
        for attachment in attachments:
            attachment.detach.set()
        for attachment in attachments:
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
        """Per-session statistics: I/Os, bytes, latency percentiles, reconnects, the portal
        serving it now and the longest I/O pause; a vDisk's first session under its name,
        the others as ``<vdisk>#2``, ``<vdisk>#3``..."""
        return {
            name if index == 0 else f"{name}#{index + 1}": attachment.device.stats.snapshot()
            for name, attachments in self._attachments.items()
            for index, attachment in enumerate(attachments)
        }
