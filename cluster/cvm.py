"""The cluster-mode stargate: one CVM's storage service.

    python -m cluster.cvm --dir DIR --node I

Serves every vDisk under DIR/vdisks on the node's CVM address (port 3261), opening each one
lazily when a login names it, and runs the HTTP stats/control page on port 2009. A login for
a vDisk starts taking it over (acquisition.py): the stargate recorded as owner is asked to
release it (`POST /control/vdisks/<id>/release`), then the epoch is bumped if the record is
still the one read (compare-and-swap), else the next owner is asked; an owner that does not
answer in time is taken over all the same, and its fence stops it. Until the claim is owned,
the vDisk's commands wait, parked, in the command queue, for a bounded time (admission.py).

Ownership records and liveness go through the cluster's coordinator (`--coordinator`: the
shared directory by default, or zk://HOST:PORT/PATH): the stargate registers itself as the
live member `stargate-<i>`, does not wait for the release of an owner that is not alive,
and drops every vDisk it serves the moment its coordinator session is interrupted (its
fences cannot be proved any more).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
import trio.testing

from cluster.admission import (
    Claim,
    ClaimState,
    FencedLogicalUnit,
    FencedStore,
    OwnershipGate,
)
from cluster.evidence import EvidenceFile, evidence_file
from cluster.fabric import VDiskStore, fabric_of, fence, open_store
from cluster.forensics import cvm_faults, cvm_forensics
from cluster.registry import ClusterRegistry, OwnershipLoginPolicy
from cluster.stats_page import StatsPage
from control.http import HttpError, http_json, serve_http
from iscsicore.chap import ChapSecrets
from stargate.cli import CliError, add_not_ready_flags, arm_not_ready
from stargate.hooks import ServerHooks
from stargate.scsi.lu import LogicalUnit
from stargate.scsi.reserve import Reservations, vdisk_reservations
from stargate.server import DEFAULT_QUEUE_DEPTH, ServerConfig, StargateServer
from stargate.session import SessionTable
from stargate.stats import VDiskStats
from stargate.target import ChapCredentials, ExtraLun, TargetRegistry, VDiskTarget
from stargate.transport.runner import FullFeatureConnection
from topology.acquisition import Acquisition, AskOwner, Claimed, GaveUp, RetryLater
from topology.coordination import (
    CoordinationError,
    Coordinator,
    CoordinatorUrl,
    CoordinatorUrlError,
    OwnershipCell,
    SessionState,
    open_coordinator,
    register_when_free,
)
from topology.directory_coordination import DirectoryCoordinator
from topology.naming import TARGET_NAME_PREFIX
from topology.ownership import Fence, OwnershipRecord
from topology.spec import (
    MAX_RELEASE_TIMEOUT,
    ClusterPaths,
    ClusterSpec,
    valid_release_timeout,
)
from topology.vdisk import VDiskMeta
from topology.volume_group import (
    VirtualTarget,
    VolumeGroup,
    VolumeGroupError,
    VolumeGroupStore,
    unit_target_name,
)

log = logging.getLogger("cluster.cvm")

RELEASE_TIMEOUT = 5.0  # how long the previous owner may take to release before take-over
DRAIN_TIMEOUT = 2.0  # how long a releasing owner lets in-flight commands finish
DROP_TIMEOUT = 1.5  # how long dropped connections get to go before they are closed
WATCH_INTERVAL = 0.25  # how often owned vDisks' records are checked for a take-over
PARK_MARGIN = 2.0  # parked commands are answered BUSY this long after the release timeout
ACQUIRE_ROUNDS_TIME = 3  # an acquisition gives up after this many release timeouts
SETTLE_TIMEOUT = 0.05  # at most this long for connections to notice a close before resuming
PAGE_RECORDS_TIMEOUT = 1.0  # at most this long for a page's ownership records


@dataclass(eq=False)
class OpenedVDisk:
    """One opening of a target at this stargate (a vDisk's, or a volume group's virtual
    target with its LUNs): from a login naming it until it goes."""

    target: VDiskTarget
    stores: list[VDiskStore]  # by LUN
    reservations: list[Reservations]  # by LUN
    claim: Claim  # one for the whole target: its LUNs move together
    cell: OwnershipCell  # the claim's record, with the compare-and-swap

    def close_files(self) -> None:
        for store in self.stores:
            with contextlib.suppress(OSError):
                store.sync()
            with contextlib.suppress(OSError):  # a fenced RBD store fails its sync
                store.close()
        self.cell.close()


class ClusterStargate:
    """One CVM: the iSCSI server, its vDisk claims, the watcher and the HTTP page."""

    def __init__(
        self,
        directory: Path,
        node_id: int,
        *,
        queue_depth: int = DEFAULT_QUEUE_DEPTH,
        release_timeout: float | None = None,
        drain_timeout: float = DRAIN_TIMEOUT,
        coordinator: CoordinatorUrl | None = None,
    ) -> None:
        self.paths = ClusterPaths(directory)
        # Not given: the one `cluster up --coordinator` recorded, else the directory.
        self.coordinator_url = coordinator or CoordinatorUrl.parse(self.paths.coordinator())
        self.fabric = fabric_of(self.paths)  # where the vDisks' bytes are: cluster/fabric.py
        # The directory needs no connection: usable before `run` (tests drive the server
        # without it); ZooKeeper's session is opened by `run` and lives as long.
        self.coordinator: Coordinator | None = None
        if self.coordinator_url.is_directory:
            self.coordinator = DirectoryCoordinator(self.paths.root)
        self.spec = ClusterSpec.load(directory)
        self.node = self.spec.node(node_id)
        if release_timeout is None:  # not given: cluster.json's, else the default
            release_timeout = self.spec.release_timeout or RELEASE_TIMEOUT
        self.release_timeout = release_timeout
        self.drain_timeout = drain_timeout
        self.acquire_time_limit = ACQUIRE_ROUNDS_TIME * release_timeout
        self.started = time.time()
        self.claims: dict[str, Claim] = {}  # by target name
        self._opened: dict[str, OpenedVDisk] = {}  # by target name
        self._evidence: dict[str, EvidenceFile] = {}  # by vDisk id, for the process's life
        # One counter set per vDisk for the life of the process, across moves away and back:
        # the page's counters stay monotonic, and connections of an earlier opening still
        # decrement the gauges they incremented.
        self.vdisk_stats: dict[str, VDiskStats] = {}
        self._nursery: trio.Nursery | None = None
        self.groups = VolumeGroupStore(self.paths.root)
        self.registry = ClusterRegistry(self._open_target, self.paths, self._open_virtual_target)
        config = ServerConfig(
            host=self.node.cvm_address,
            port=self.node.cvm_port,
            advertised_address=self.node.cvm_portal,
            queue_depth=queue_depth,
        )
        # The hooks: the shared queue parks commands of unowned vDisks, logins acquire;
        # faults and forensics (timeline, auditor).
        self.gate = OwnershipGate(
            self.claims,
            on_lost=self.lose,
            on_unclaimed=self._start_acquiring,
            park_limit=release_timeout + PARK_MARGIN,
        )
        self.forensics = cvm_forensics(self.paths, node_id)
        hooks = ServerHooks(
            gate=self.gate,
            login_policy=self._login_policy,
            observer=self.forensics,
            faults=cvm_faults(self.paths, node_id, self.forensics),
        )
        self.server = StargateServer(self.registry, config, hooks)
        self.page = StatsPage(self)

    @property
    def node_id(self) -> int:
        return self.node.node_id

    # -- running ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve iSCSI and HTTP until cancelled or `shutdown()`."""
        async with self._coordinated() as coordinator:
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    await nursery.start(self.server.serve)
                    await nursery.start(
                        serve_http, self.page.handle, self.node.cvm_address, self.node.http_port
                    )
                    nursery.start_soon(self._watch)
                    nursery.start_soon(self._watch_session, coordinator)
                    nursery.start_soon(self._register, coordinator)
                    nursery.start_soon(self.forensics.sample_io, self.server)
                    task_status.started()
            finally:
                self._nursery = None
                for opened in list(self._opened.values()):  # before the coordinator closes
                    self._detach(opened.claim)
                    opened.close_files()

    @asynccontextmanager
    async def _coordinated(self) -> AsyncIterator[Coordinator]:
        if self.coordinator is not None:
            directory = self.coordinator
            try:
                yield directory
            finally:
                await directory.aclose()  # its registrations go
                self.coordinator = DirectoryCoordinator(self.paths.root)  # for a next run
            return
        async with open_coordinator(self.coordinator_url, self.paths.root) as coordinator:
            self.coordinator = coordinator
            try:
                yield coordinator
            finally:
                self.coordinator = None

    async def _register(self, coordinator: Coordinator) -> None:
        """Be the live member stargate-<i> (the coordinator withdraws it as `run` ends)."""
        info = {"pid": os.getpid(), "address": self.node.cvm_address, "http": self.node.http_url}
        await register_when_free(coordinator, self.node.stargate_name, info, log=log)

    async def _watch_session(self, coordinator: Coordinator) -> None:
        """An interrupted session proves nothing: stop serving everything at once."""
        state = coordinator.session
        while True:
            state = await coordinator.wait_session_change(state)
            if state is SessionState.CLOSED:
                return
            if state is SessionState.CONNECTED:
                continue
            for claim in list(self.claims.values()):
                if claim.state in (ClaimState.OWNED, ClaimState.ACQUIRING, ClaimState.RELEASING):
                    log.warning("vDisk %s: coordinator session %s", claim.vdisk_id, state.value)
                    self.lose(claim)

    async def shutdown(self) -> None:
        await self.server.shutdown()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()  # `run` lets its vDisks go as it ends

    # -- opening vDisks -----------------------------------------------------------------

    def _open_target(self, vdisk_id: str) -> VDiskTarget | None:
        return self._open_unit(vdisk_id, f"{TARGET_NAME_PREFIX}{vdisk_id}", (vdisk_id,))

    def _open_virtual_target(
        self, group: VolumeGroup, virtual: VirtualTarget
    ) -> VDiskTarget | None:
        """A volume group's virtual target: its disks as LUNs 0..K-1, its attachments as
        the ACL, the group's CHAP; owned as one unit (``vg-NAME-tgtI``)."""
        return self._open_unit(
            virtual.unit_id,
            virtual.iqn,
            virtual.vdisk_ids,
            allowed=frozenset(group.attachments),
            chap=_credentials(group.chap),
            mutual_chap=_credentials(group.mutual_chap),
        )

    def _open_unit(
        self,
        unit_id: str,
        target_name: str,
        vdisk_ids: tuple[str, ...],
        *,
        allowed: frozenset[str] | None = None,
        chap: ChapCredentials | None = None,
        mutual_chap: ChapCredentials | None = None,
    ) -> VDiskTarget | None:
        """Open the stores of ``vdisk_ids`` (LUN 0 first) as one target under one claim."""
        if self.coordinator is None:
            return None  # not running (a login racing the shutdown)
        stores: list[VDiskStore] = []
        try:
            for vdisk_id in vdisk_ids:
                meta = VDiskMeta.load(self.paths.vdisk_meta_file(vdisk_id))
                stores.append(open_store(self.paths, self.fabric, meta))
        except (OSError, ValueError) as error:
            log.error("cannot open %s: %s", unit_id, error)
            for store in stores:
                store.close()
            return None
        cell = self.coordinator.ownership(unit_id)
        claim = Claim(unit_id, target_name, cell)
        lus: list[FencedLogicalUnit] = []
        all_reservations: list[Reservations] = []
        for store in stores:
            vdisk_id = store.meta.vdisk_id
            reservations, unit_attentions = vdisk_reservations(self.paths.vdisks, vdisk_id)
            lu = LogicalUnit(
                FencedStore(store, claim),
                store.meta,
                reservations=reservations,
                unit_attentions=unit_attentions,
                target_luns=len(stores),  # REPORT LUNS lists its target's
            )
            lus.append(FencedLogicalUnit(lu, claim, self.lose))
            all_reservations.append(reservations)
        first = vdisk_ids[0]
        target = VDiskTarget(
            first,
            lus[0],
            block_size=stores[0].block_size,
            allowed_initiators=allowed,
            chap=chap,
            mutual_chap=mutual_chap,
            extra_luns=tuple(
                ExtraLun(vdisk_id, lu, self._counters(vdisk_id))
                for vdisk_id, lu in zip(vdisk_ids[1:], lus[1:], strict=True)
            ),
            iqn=target_name,
            counters=self._counters(first),
        )
        self.claims[target.name] = claim
        self._opened[target.name] = OpenedVDisk(target, stores, all_reservations, claim, cell)
        log.info("opened %s (%d LUN%s)", unit_id, len(stores), "" if len(stores) == 1 else "s")
        return target

    def vdisks_of(self, claim: Claim) -> tuple[str, ...]:
        """The vDisks a claim covers: its target's LUNs (one for a VM's vDisk)."""
        opened = self._opened.get(claim.target_name)
        if opened is None or opened.claim is not claim:
            return (claim.vdisk_id,)
        return tuple(lun.vdisk_id for lun in opened.target.luns)

    def unit_of(self, vdisk_id: str) -> str:
        """The vDisk's ownership unit (a volume group's disk: its virtual target's)."""
        try:
            return self.groups.unit_of(vdisk_id)
        except VolumeGroupError:
            return vdisk_id

    def _counters(self, vdisk_id: str) -> VDiskStats:
        """A vDisk's counters for the life of the process, across its moves away and back."""
        return self.vdisk_stats.setdefault(vdisk_id, VDiskStats(vdisk_id))

    # -- acquiring ----------------------------------------------------------------------

    def _login_policy(
        self, registry: TargetRegistry, sessions: SessionTable
    ) -> OwnershipLoginPolicy:
        return OwnershipLoginPolicy(registry, sessions, self._on_login)

    def _on_login(self, target_name: str) -> None:
        claim = self.claims.get(target_name)
        if claim is not None:
            self._start_acquiring(claim)

    def _start_acquiring(self, claim: Claim) -> None:
        if claim.state is not ClaimState.IDLE or self._nursery is None:
            return
        claim.state = ClaimState.ACQUIRING
        self._nursery.start_soon(self._acquire, claim)

    async def _acquire(self, claim: Claim) -> None:
        opened = self._opened.get(claim.target_name)
        if opened is None or opened.claim is not claim:
            return
        cell = opened.cell
        acquisition = Acquisition(
            self.node_id, now=trio.current_time(), time_limit=self.acquire_time_limit
        )
        try:
            record = await cell.fetch()
        except CoordinationError as error:
            self._give_up(claim, f"the coordinator did not answer: {error}")
            return
        step = acquisition.begin(record, trio.current_time())
        while not isinstance(step, Claimed):
            if isinstance(step, GaveUp):
                self._give_up(claim, step.reason)
                return
            if isinstance(step, AskOwner):
                await self._ask_release(step.owner_id, claim.vdisk_id)
            elif isinstance(step, RetryLater):
                await trio.sleep(step.delay)
            if claim.state is not ClaimState.ACQUIRING:
                return  # released or lost while we waited
            # The directory's compare-and-swap never yields: nothing runs between the check
            # above and the write. ZooKeeper's does; a claim won for a vDisk released or
            # lost meanwhile is harmless (nobody serves that epoch; the next claimer asks).
            result = await cell.compare_and_claim(step.seen, self.node_id)
            if claim.state is not ClaimState.ACQUIRING:
                return
            step = acquisition.finish(result, trio.current_time())
        claim.fence = Fence(claim.file, step.record)
        claim.evidence = self._evidence_of(claim.vdisk_id).begin(claim.fence.record.epoch)
        opened = self._opened.get(claim.target_name)
        if opened is not None and opened.claim is claim:
            try:  # the data's own fence: the previous owner's lock broken, ours taken
                await fence(opened.stores)
            except OSError as error:
                self._give_up(claim, f"cannot lock its data: {error}")
                return
            for reservations in opened.reservations:
                reservations.reload()  # the previous owner may have changed them
        # Still ACQUIRING, so new commands park behind the old ones: first let connections
        # whose close arrived while we waited (or were stopped) read it and abort theirs.
        with trio.move_on_after(SETTLE_TIMEOUT):
            await trio.testing.wait_all_tasks_blocked()
        if claim.state is not ClaimState.ACQUIRING:
            return
        claim.state = ClaimState.OWNED
        log.info("vDisk %s: serving, epoch %d", claim.vdisk_id, claim.fence.record.epoch)
        self.gate.resume(claim, self.server.queue)

    def _give_up(self, claim: Claim, reason: str) -> None:
        log.warning("vDisk %s: not acquired: %s", claim.vdisk_id, reason)
        self.gate.refuse_parked(claim)
        detached = self._detach(claim)
        if detached is not None and self._nursery is not None:
            self._nursery.start_soon(self._close, detached, f"not acquired: {reason}")

    def _evidence_of(self, vdisk_id: str) -> EvidenceFile:
        evidence = self._evidence.get(vdisk_id)
        if evidence is None:
            path = evidence_file(self.paths.evidence, vdisk_id, self.node_id)
            evidence = self._evidence[vdisk_id] = EvidenceFile(path)
        return evidence

    async def _ask_release(self, owner_id: int, vdisk_id: str) -> None:
        try:
            owner = self.spec.node(owner_id)
        except ValueError:
            return
        if not await self._alive(owner.stargate_name):
            log.info("vDisk %s: node %d is not alive: taking over", vdisk_id, owner_id)
            return
        url = f"{owner.http_url}/control/vdisks/{vdisk_id}/release?by={self.node_id}"
        try:
            status, answer = await http_json(
                "POST", url, timeout=self.release_timeout, token=self.page.token
            )
        except HttpError as error:
            log.warning("vDisk %s: node %d did not release it (%s)", vdisk_id, owner_id, error)
            return
        log.info("vDisk %s: node %d released it (%s: %s)", vdisk_id, owner_id, status, answer)

    async def _alive(self, member: str) -> bool:
        """Whether ``member`` is registered (when the coordinator cannot say: assume so,
        and ask)."""
        if self.coordinator is None:
            return True
        try:
            return member in await self.coordinator.members()
        except CoordinationError:
            return True

    async def ownership_records(self, vdisk_ids: list[str]) -> dict[str, OwnershipRecord]:
        """The records of ``vdisk_ids`` as the coordinator has them (the pages' "owner"),
        read together within one call's deadline; those it could not read are left out."""
        coordinator = self.coordinator
        records: dict[str, OwnershipRecord] = {}
        if coordinator is None:
            return records

        async def read(vdisk_id: str) -> None:
            with contextlib.suppress(CoordinationError):
                record = await coordinator.read_ownership(vdisk_id)
                if record is not None:
                    records[vdisk_id] = record

        with trio.move_on_after(PAGE_RECORDS_TIMEOUT):
            async with trio.open_nursery() as nursery:
                for vdisk_id in vdisk_ids:
                    nursery.start_soon(read, vdisk_id)
        return records

    # -- releasing and losing -----------------------------------------------------------

    async def release(self, vdisk_id: str, *, by: str = "?", notify: bool = True) -> dict[str, Any]:
        """Another stargate takes the vDisk (or a volume group's virtual target, by its
        unit id): stop admitting, drain, drop, close. Without ``notify`` (failback's
        "quiesce then kill") the connections are closed without an async event first."""
        name = unit_target_name(vdisk_id)
        claim = self.claims.get(name)
        if claim is None:
            return {"vdisk": vdisk_id, "released": True, "was_serving": False}
        was_serving = claim.state is ClaimState.OWNED
        claim.state = ClaimState.RELEASING
        opened = self._opened.get(name)
        if was_serving and opened is not None:
            luns = opened.target.luns
            with trio.move_on_after(self.drain_timeout):
                while sum(lun.stats.queue_depth for lun in luns) - claim.live_parked() > 0:
                    await trio.sleep(0.005)
        detached = self._detach(claim)
        closed = 0
        if detached is not None:
            reason = f"released to node {by}" if notify else f"released ({by}), killed"
            closed = await self._close(detached, reason, notify=notify)
        return {
            "vdisk": vdisk_id,
            "released": True,
            "was_serving": was_serving,
            "connections_closed": closed,
        }

    def lose(self, claim: Claim) -> None:
        """The record moved under us (we were stopped, or slow): drop the vDisk now."""
        if claim.state is ClaimState.GONE:
            return
        log.warning("vDisk %s: taken over by node %d", claim.vdisk_id, claim.file.read().node_id)
        detached = self._detach(claim)
        if detached is not None and self._nursery is not None:
            self._nursery.start_soon(self._close, detached, "taken over by another stargate")

    def _detach(self, claim: Claim) -> OpenedVDisk | None:
        """Forget the vDisk at once (a new login opens it afresh); None if done already."""
        claim.state = ClaimState.GONE
        name = claim.target_name
        opened = self._opened.get(name)
        if opened is None or opened.claim is not claim:
            return None
        del self._opened[name]
        del self.claims[name]
        self.registry.remove(name)
        return opened

    async def _close(self, opened: OpenedVDisk, reason: str, *, notify: bool = True) -> int:
        """Drop the connections of this opening of the vDisk (AsyncEvent 3 first when
        ``notify``), then close its files. Returns how many connections it had."""

        def its_connections() -> list[FullFeatureConnection]:
            connections = self.server.connections_of(opened.target.name)
            return [c for c in connections if c.target is opened.target]

        count = len(its_connections())
        if notify:
            for connection in its_connections():
                # Time2Wait 2: the initiator does not bounce straight back (it moved, or will).
                connection.drop(all_connections=True, time2wait=2, time2retain=0)
            with trio.move_on_after(DROP_TIMEOUT):
                while its_connections():
                    await trio.sleep(0.01)
        for connection in its_connections():
            connection.close(reason)
        opened.claim.parked.clear()
        opened.close_files()
        log.info("vDisk %s: no longer served here (%s)", opened.target.vdisk_id, reason)
        return count

    async def _watch(self) -> None:
        while True:
            await trio.sleep(WATCH_INTERVAL)
            for claim in list(self.claims.values()):
                if claim.state is ClaimState.OWNED and not claim.may_execute():
                    self.lose(claim)
                elif claim.state is ClaimState.ACQUIRING and claim.parked:
                    self.gate.expire_parked(claim)  # nothing waits past its bound

    # -- failback -----------------------------------------------------------------------

    def request_logout(self, vdisk_id: str, seconds: int) -> int:
        """AsyncEvent 1 to the sessions of the vDisk's target (or the virtual target's,
        by its unit id); how many were asked."""
        opened = self._opened.get(unit_target_name(vdisk_id))
        if opened is not None:
            vdisk_id = opened.target.vdisk_id  # its LUN 0
        return self.server.request_logout(vdisk_id, seconds)


def _credentials(secrets: ChapSecrets | None) -> ChapCredentials | None:
    return None if secrets is None else ChapCredentials(secrets.username, secrets.secret.decode())


# -- process ------------------------------------------------------------------------------


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not valid_release_timeout(seconds):
        raise argparse.ArgumentTypeError(
            f"must be in (0, {MAX_RELEASE_TIMEOUT:g}] seconds: {text!r}"
        )
    return seconds


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m cluster.cvm", description="One CVM's stargate in a cluster."
    )
    parser.add_argument("--dir", type=Path, required=True, help="the cluster directory")
    parser.add_argument("--node", type=int, required=True, help="this CVM's node id")
    parser.add_argument("--queue-depth", type=int, default=DEFAULT_QUEUE_DEPTH)
    parser.add_argument(
        "--release-timeout",
        type=_positive_seconds,
        default=None,
        help="seconds a vDisk's owner may take to release it before it is taken over "
        "(default: cluster.json's release_timeout, else 5; parked commands wait 2 s more "
        "at most)",
    )
    parser.add_argument(
        "--coordinator",
        type=_coordinator_url,
        default=None,
        help="where ownership and liveness are agreed: 'dir' (the cluster directory) or "
        "zk://HOST:PORT/PATH (default: what `cluster up` recorded, else dir)",
    )
    add_not_ready_flags(parser)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    return parser.parse_args(argv)


def _coordinator_url(text: str) -> CoordinatorUrl:
    try:
        return CoordinatorUrl.parse(text)
    except CoordinatorUrlError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


async def serve_until_signalled(cvm: ClusterStargate) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(cvm.run)
            node = cvm.node
            print(
                f"stargate-{node.node_id}: iSCSI {node.cvm_address}:{cvm.server.port}, "
                f"HTTP {node.http_url}, pid {os.getpid()}",
                flush=True,
            )
            async for signum in signals:
                log.info("signal %s: shutting down", signal.Signals(signum).name)
                await cvm.shutdown()
                nursery.cancel_scope.cancel()
                break


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format=f"%(asctime)s stargate-{args.node} %(levelname)s %(name)s: %(message)s",
    )
    try:
        cvm = ClusterStargate(
            args.dir,
            args.node,
            queue_depth=args.queue_depth,
            release_timeout=args.release_timeout,
            coordinator=args.coordinator,
        )
        arm_not_ready(args, cvm.server.faults)
    except (ValueError, CliError) as error:
        print(f"stargate-{args.node}: {error}", file=sys.stderr)
        return 2
    failure: str | None = None
    try:
        trio.run(serve_until_signalled, cvm)
    except* OSError as group:  # from inside trio's nurseries: wrapped in a group
        failure = f"cannot listen: {group.exceptions[0]}"
    except* CoordinationError as group:
        failure = f"coordinator {cvm.coordinator_url}: {group.exceptions[0]}"
    if failure is not None:
        print(f"stargate-{args.node}: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
