"""The open-iscsi driver: Linux's initiator (iscsiadm, iscsid, the kernel's iscsi_tcp) in
the QEMU guest of cluster/guest, booted once per run and given one job per test.

The guest reaches the host only through four relayed portals, fixed at boot and re-pointed
per test: the entry portal at 10.0.2.100:3260, and where a redirect leads by what it
changes (a new address: 10.0.2.101; a new port: 3261). The kit advertises those guest-side
addresses in its redirects (`route`), since the guest can reach nothing else.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import trio

from cluster.conformance.drivers import OUTPUT_TAIL, DriverJob, DriverRun
from cluster.guest.build import GuestBuildError
from cluster.guest.harness import Guest, GuestError, GuestImage
from iscsicore.portal import Portal

GUEST_ADDRESSES = ("10.0.2.100", "10.0.2.101")  # the entry's address, another one
GUEST_PORTS = (3260, 3261)  # the entry's port, another one
ENTRY = f"{GUEST_ADDRESSES[0]}:{GUEST_PORTS[0]}"
# Unused portals lead here: nothing listens, so a stray retry of the last job finds no one.
NOWHERE = ("127.0.0.1", 1)
# A refused portal holds the guest's connection this long before closing it (see relay.py:
# closing at once trips open-iscsi's reconnects).
PATIENCE = 2.0
BOOT_TIMEOUT = 180.0
JOB_SLACK = 90.0  # a job's clean-up (logout, record deletion) after its budget
RUN_TIMEOUT = 4 * 3600.0  # QEMU's own watchdog: a whole conformance run


def guest_portal_for(portal: Portal, entry: Portal) -> tuple[str, int]:
    """Where the guest reaches ``portal``: the entry's address and port unless it differs."""
    address = GUEST_ADDRESSES[0] if portal.host == entry.host else GUEST_ADDRESSES[1]
    port = GUEST_PORTS[0] if portal.port == entry.port else GUEST_PORTS[1]
    return address, port


@dataclass(slots=True)
class OpenIscsiDriver:
    """open-iscsi in the guest: node record, login (digests offered, CHAP and mutual CHAP
    through node.session.auth.*), 64 KiB written and verified with fio, logout."""

    name: str = "open-iscsi"
    chap: bool = True
    mutual_chap: bool = True
    _image: GuestImage | None = None
    _guest: Guest | None = None
    boots: int = 0
    _boot_error: str = ""
    _routes: dict[str, tuple[str, int]] = field(default_factory=dict)

    def unavailable(self) -> str | None:
        if shutil.which("qemu-system-x86_64") is None:
            return "qemu-system-x86_64 not installed (apt-get install qemu-system-x86)"
        try:
            self._image = GuestImage.ensure()
        except GuestBuildError as error:
            return f"the open-iscsi guest cannot be built here: {error}"
        return None

    def route(self, portals: Mapping[str, Portal]) -> dict[str, Portal]:
        """Point the guest's relays at this test's listeners; the portals the target must
        name to the guest (in redirects) instead of its own."""
        entry = next(iter(portals.values()))
        advertised: dict[str, Portal] = {}
        routes: dict[str, tuple[str, int]] = {}
        for name, portal in portals.items():
            address, port = guest_portal_for(portal, entry)
            key = f"{address}:{port}"
            if key in routes:
                raise ValueError(f"two of the test's portals would share the guest's {key}")
            routes[key] = (portal.host, portal.port)
            advertised[name] = Portal(address, port, portal.tpgt)
        self._routes = routes
        if self._guest is not None:
            self._apply_routes()
        return advertised

    def _apply_routes(self) -> None:
        assert self._guest is not None
        for address in GUEST_ADDRESSES:
            for port in GUEST_PORTS:
                key = f"{address}:{port}"
                host, host_port = self._routes.get(key, NOWHERE)
                self._guest.repoint(key, host_port, host, patience=PATIENCE)

    def _boot(self) -> Guest:
        image = self._image or GuestImage.ensure()
        portals = {
            f"{address}:{port}": NOWHERE for address in GUEST_ADDRESSES for port in GUEST_PORTS
        }
        guest = Guest(
            image,
            portals,
            "conformance",
            timeout=RUN_TIMEOUT,
            name="conformance-open-iscsi",
            connect_patience=PATIENCE,
        )
        guest.start()
        try:
            guest.wait_for("job", timeout=BOOT_TIMEOUT)
        except GuestError:
            guest.kill()
            raise
        self.boots += 1
        return guest

    async def start(self) -> None:
        """Boot the guest before the tests, so that no test's budget pays for it."""
        if self._guest is not None:
            return
        try:
            self._guest = await trio.to_thread.run_sync(self._boot)
        except GuestError as error:
            self._boot_error = f"the guest did not boot: {error}"[-OUTPUT_TAIL:]
            return
        self._apply_routes()

    async def _restart(self) -> None:
        await self.close()
        await self.start()

    async def run(self, job: DriverJob, deadline: float) -> DriverRun:
        started = time.monotonic()
        guest = self._guest
        if guest is None:
            return DriverRun(None, self._boot_error or "the guest is not running", 0.0)
        seconds = max(1, math.ceil(deadline - trio.current_time()))
        words = [f"target={job.target}", f"portal={ENTRY}", f"seconds={seconds}"]
        if job.chap is not None:
            words += [f"user={job.chap.username}", f"secret={job.chap.secret.decode()}"]
            if job.mutual is not None:
                words += [
                    f"target_user={job.mutual.username}",
                    f"target_secret={job.mutual.secret.decode()}",
                ]
        first_step = len(guest.steps)
        guest.signal("job", " ".join(words))
        try:
            await trio.to_thread.run_sync(
                lambda: guest.wait_for("job", timeout=seconds + JOB_SLACK)
            )
        except GuestError as error:
            await self._restart()  # stuck or gone: the next test gets a fresh guest
            return DriverRun(None, str(error)[-OUTPUT_TAIL:], time.monotonic() - started)
        steps = guest.steps[first_step:]
        if any(step.name == "cleanup" for step in steps):
            await self._restart()  # a session outlived the job: the next test gets a fresh guest
        output = "\n".join(str(step) for step in steps)
        passed = bool(steps) and all(step.passed for step in steps)
        return DriverRun(0 if passed else 1, output, time.monotonic() - started)

    async def close(self) -> None:
        guest, self._guest = self._guest, None
        if guest is not None:
            await trio.to_thread.run_sync(guest.kill)
