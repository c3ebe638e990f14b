"""Failback: bring this node's vDisks home once the local stargate is stable again.

The policy says which vDisks were redirected to which remote CVM. When the local stargate
has been healthy for the stable window, each of those remote stargates is asked over its
HTTP page to end the vDisk's sessions, as cluster.json's failback mode says (read at each
failback, so `stargate cluster set --failback` applies to a running cluster):

- ``kill`` (``POST /control/vdisks/<id>/kill``): quiesce then kill, as the Nutanix Bible
  describes: new commands held, in-flight ones finished (bounded), connections closed;
- ``logout`` (``POST /control/vdisks/<id>/logout``): AsyncEvent 1 (logout request) to the
  sessions, dropped after a timeout.

The initiator logs in again through this redirector, which now sends it home. A request
that fails is retried a bounded number of times; a remote CVM that goes down meanwhile
drops the placement itself (policy).

A redirector that restarts knows no placements: the first time the local stargate is stable
it also looks at the ownership records of its node's VMs' vDisks, and those a remote
stargate owns are failed back the same way (once that stargate is seen healthy).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import trio

from control.control_token import ControlTokenError, cluster_token
from control.http import HttpError, http_json
from redirector.config import RedirectorConfig
from redirector.policy import PlacementPolicy
from topology.coordination import CoordinationError, OwnershipRecords
from topology.naming import target_name_for
from topology.settings import FailbackMode
from topology.spec import ClusterSpec, ClusterSpecError, NodeSpec, load_vms

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
    requested: int = 0  # failback requests the remote stargates accepted
    sessions_asked: int = 0  # to log out (mode logout)
    connections_killed: int = 0  # closed after the quiesce (mode kill)
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
    # Set live on the redirector's page (/h/gflags); None: cluster.json's, read each time.
    mode_override: FailbackMode | None = None
    logout_seconds: int | None = None  # None: the timers'

    async def run(self, records: OwnershipRecords) -> None:
        while True:
            await self.step(records)
            await trio.sleep(CHECK_INTERVAL)

    async def step(self, records: OwnershipRecords) -> None:
        """Ask for the sessions of every vDisk due to come home to end (concurrently)."""
        now = self.clock()
        strays: dict[str, str] = {}
        if self.policy.local_is_stable(now):
            if not self._looked_for_strays:
                try:
                    self._strays = await self.stray_vdisks(records)
                except CoordinationError as error:
                    self.logger.warning("Ownership records unreadable, looking again: %s", error)
                else:
                    self._looked_for_strays = True
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
                    nursery.start_soon(self._request_failback, vdisk, node_key, attempts)

    def mode(self) -> FailbackMode:
        """The mode set live, else cluster.json's as it is now (the spec loaded at start if
        unreadable)."""
        if self.mode_override is not None:
            return self.mode_override
        try:
            return ClusterSpec.load(self.config.directory).failback
        except ClusterSpecError:
            return self.config.spec.failback

    @property
    def failback_logout_seconds(self) -> int:
        if self.logout_seconds is not None:
            return self.logout_seconds
        return self.config.timers.failback_logout_seconds

    async def _request_failback(self, vdisk: str, node_key: str, attempts: _Attempts) -> None:
        node = self.config.node_of(node_key)
        mode = self.mode()
        try:
            answer = await end_sessions(
                self.config, node, vdisk, mode, logout_seconds=self.failback_logout_seconds
            )
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
        target = target_name_for(vdisk)
        if mode is FailbackMode.LOGOUT:
            asked = int(answer.get("sessions_asked", 0))
            self.logger.info(
                "Failing back target %s: %s asked %d session(s) to log out",
                target,
                node.cvm_portal,
                asked,
            )
            self.stats.sessions_asked += asked
        else:
            killed = int(answer.get("connections_closed", 0))
            self.logger.info(
                "Failing back target %s: %s quiesced and killed %d connection(s)",
                target,
                node.cvm_portal,
                killed,
            )
            self.stats.connections_killed += killed
        self.stats.requested += 1
        self._forget(vdisk)

    def _forget(self, vdisk: str) -> None:
        self.policy.forget(vdisk)
        self._attempts.pop(vdisk, None)
        self._strays.pop(vdisk, None)

    async def stray_vdisks(self, records: OwnershipRecords) -> dict[str, str]:
        """vDisks of this node's VMs owned by a remote stargate, by their records (a
        load-balanced VM's vDisks have homes of their own: not strays)."""
        local = self.config.node_id
        remote_ids = set(self.config.spec.node_ids) - {local}
        strays = {}
        for vm in load_vms(self.config.directory):
            if vm.home_node != local or vm.load_balance:
                continue
            for vdisk in vm.vdisk_ids:
                record = await records.read_ownership(vdisk)
                if record is None or record.node_id not in remote_ids:
                    continue
                strays[vdisk] = self.config.node_key(record.node_id)
        return strays


async def end_sessions(
    config: RedirectorConfig,
    node: NodeSpec,
    vdisk: str,
    mode: FailbackMode,
    *,
    logout_seconds: int | None = None,
) -> dict[str, Any]:
    """Ask ``node``'s stargate to end ``vdisk``'s sessions as ``mode`` says (in mode
    logout within ``logout_seconds``, by default the timers'); its answer (sessions asked,
    connections closed). Raises HttpError when it did not."""
    url = f"{node.http_url}/control/vdisks/{quote(vdisk, safe='')}/{mode.value}"
    if mode is FailbackMode.LOGOUT:
        seconds = (
            config.timers.failback_logout_seconds if logout_seconds is None else logout_seconds
        )
        url += f"?seconds={seconds}"
    try:
        token = cluster_token(config.directory)  # the CVM pages' credential
    except ControlTokenError as error:
        raise HttpError(str(error)) from None
    status, document = await http_json("POST", url, timeout=REQUEST_TIMEOUT, token=token)
    if status != 200:
        raise HttpError(f"{url}: HTTP {status}")
    return document if isinstance(document, dict) else {}
