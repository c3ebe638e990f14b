"""Failback: bring this node's vDisks home once the local stargate is stable again.

The policy says which vDisks were redirected to which remote CVM. When the local stargate
has been healthy for the stable window, each of those remote stargates is asked over its
HTTP page (``POST /control/vdisks/<id>/logout``) to send AsyncEvent 1 (logout request) to
the vDisk's sessions and drop them after a timeout; the initiator logs in again through
this redirector, which now sends it home. A request that fails is retried a bounded number
of times; a remote CVM that goes down meanwhile drops the placement itself (policy).

A redirector that restarts knows no placements: the first time the local stargate is stable
it also looks at the ownership records of its node's VMs' vDisks, and those a remote
stargate owns are failed back the same way (once that stargate is seen healthy).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

import trio

from control.control_token import ControlTokenError, cluster_token
from control.http import HttpError, http_json
from redirector.config import RedirectorConfig
from redirector.policy import PlacementPolicy
from topology.naming import target_name_for
from topology.ownership import read_record
from topology.spec import load_vms

CHECK_INTERVAL = 0.5
REQUEST_TIMEOUT = 2.0
MAX_ATTEMPTS = 5
RETRY_BACKOFF_FIRST = 0.5
RETRY_BACKOFF_MAX = 4.0


@dataclass
class _Attempts:
    count: int = 0
    not_before: float = 0.0


@dataclass
class FailbackStats:
    requested: int = 0  # logout requests the remote stargates accepted
    sessions_asked: int = 0
    abandoned: int = 0  # vDisks given up on after MAX_ATTEMPTS


@dataclass
class Failback:
    config: RedirectorConfig
    policy: PlacementPolicy
    logger: logging.Logger
    clock: Callable[[], float] = trio.current_time
    stats: FailbackStats = field(default_factory=FailbackStats)
    _attempts: dict[str, _Attempts] = field(default_factory=dict)
    _strays: dict[str, str] = field(default_factory=dict)  # vDisk -> remote node key
    _looked_for_strays: bool = False

    async def run(self) -> None:
        while True:
            await self.step()
            await trio.sleep(CHECK_INTERVAL)

    async def step(self) -> None:
        """Ask for the logout of every vDisk due to come home (concurrently)."""
        now = self.clock()
        if not self.policy.local_is_stable(now):
            return
        if not self._looked_for_strays:
            self._looked_for_strays = True
            self._strays = self.stray_vdisks()
        # A stray owned by a stargate not (yet) seen healthy waits: asking it would fail.
        strays = {v: node for v, node in self._strays.items() if self.policy.is_healthy(node)}
        due = {**strays, **self.policy.failback_due(now)}
        for vdisk in list(self._attempts):
            if vdisk not in due:
                del self._attempts[vdisk]  # came home, or its remote CVM died
        async with trio.open_nursery() as nursery:
            for vdisk, node_key in due.items():
                attempts = self._attempts.setdefault(vdisk, _Attempts())
                if self.clock() >= attempts.not_before:
                    nursery.start_soon(self._request_logout, vdisk, node_key, attempts)

    async def _request_logout(self, vdisk: str, node_key: str, attempts: _Attempts) -> None:
        node = self.config.node_of(node_key)
        seconds = self.config.timers.failback_logout_seconds
        url = f"{node.http_url}/control/vdisks/{quote(vdisk, safe='')}/logout?seconds={seconds}"
        try:
            try:
                token = cluster_token(self.config.directory)  # the CVM pages' credential
            except ControlTokenError as error:
                raise HttpError(str(error)) from None
            status, document = await http_json("POST", url, timeout=REQUEST_TIMEOUT, token=token)
            if status != 200:
                raise HttpError(f"{url}: HTTP {status}")
        except HttpError as error:
            attempts.count += 1
            if attempts.count >= MAX_ATTEMPTS:
                self.logger.warning(
                    "Failback of %s from %s abandoned after %d attempts: %s",
                    vdisk,
                    node.cvm_portal,
                    attempts.count,
                    error,
                )
                self.stats.abandoned += 1
                self._forget(vdisk)
                return
            backoff = min(RETRY_BACKOFF_MAX, RETRY_BACKOFF_FIRST * 2 ** (attempts.count - 1))
            attempts.not_before = self.clock() + backoff
            return
        asked = int(document.get("sessions_asked", 0)) if isinstance(document, dict) else 0
        self.logger.info(
            "Failing back target %s: %s asked %d session(s) to log out",
            target_name_for(vdisk),
            node.cvm_portal,
            asked,
        )
        self.stats.requested += 1
        self.stats.sessions_asked += asked
        self._forget(vdisk)

    def _forget(self, vdisk: str) -> None:
        self.policy.forget(vdisk)
        self._attempts.pop(vdisk, None)
        self._strays.pop(vdisk, None)

    def stray_vdisks(self) -> dict[str, str]:
        """vDisks of this node's VMs owned by a remote stargate, by their records."""
        local = self.config.node_id
        remote_ids = set(self.config.spec.node_ids) - {local}
        strays = {}
        for vm in load_vms(self.config.directory):
            if vm.home_node != local:
                continue
            for vdisk in vm.vdisk_ids:
                record = read_record(self.config.paths.ownership_file(vdisk))
                if record is None or record.node_id not in remote_ids:
                    continue
                strays[vdisk] = self.config.node_key(record.node_id)
        return strays
