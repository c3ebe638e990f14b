"""The cluster-mode stargate: one CVM's storage service.

    python -m cluster.cvm --dir DIR --node I

Serves every vDisk under DIR/vdisks on the node's CVM address (port 3261), opening each one
lazily when a login names it, and runs the HTTP stats/control page on port 2009. A login for
a vDisk starts taking it over (acquisition.py): the stargate recorded as owner is asked to
release it (`POST /control/vdisks/<id>/release`), then the epoch is bumped if the record is
still the one read (compare-and-swap), else the next owner is asked; an owner that does not
answer in time is taken over all the same, and its fence stops it. Until the claim is owned,
the vDisk's commands wait, parked, in the command queue, for a bounded time (admission.py).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
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
from cluster.forensics import cvm_faults, cvm_forensics
from cluster.registry import ClusterRegistry, OwnershipLoginPolicy
from cluster.stats_page import StatsPage
from control.http import HttpError, http_json, serve_http
from stargate.cli import CliError, add_not_ready_flags, arm_not_ready
from stargate.hooks import ServerHooks
from stargate.scsi.lu import LogicalUnit
from stargate.scsi.reserve import Reservations, vdisk_reservations
from stargate.server import DEFAULT_QUEUE_DEPTH, ServerConfig, StargateServer
from stargate.session import SessionTable
from stargate.stats import VDiskStats
from stargate.stores.file import FileStore
from stargate.target import TargetRegistry, VDiskTarget
from stargate.transport.runner import FullFeatureConnection
from topology.acquisition import Acquisition, AskOwner, Claimed, GaveUp, RetryLater
from topology.naming import TARGET_NAME_PREFIX
from topology.ownership import Fence, OwnershipFile
from topology.spec import (
    MAX_RELEASE_TIMEOUT,
    ClusterPaths,
    ClusterSpec,
    valid_release_timeout,
)
from topology.vdisk import VDiskMeta

log = logging.getLogger("cluster.cvm")

RELEASE_TIMEOUT = 5.0  # how long the previous owner may take to release before take-over
DRAIN_TIMEOUT = 2.0  # how long a releasing owner lets in-flight commands finish
DROP_TIMEOUT = 1.5  # how long dropped connections get to go before they are closed
WATCH_INTERVAL = 0.25  # how often owned vDisks' records are checked for a take-over
PARK_MARGIN = 2.0  # parked commands are answered BUSY this long after the release timeout
ACQUIRE_ROUNDS_TIME = 3  # an acquisition gives up after this many release timeouts
SETTLE_TIMEOUT = 0.05  # at most this long for connections to notice a close before resuming


@dataclass(eq=False)
class OpenedVDisk:
    """One opening of a vDisk at this stargate: from a login naming it until it goes."""

    target: VDiskTarget
    store: FileStore
    reservations: Reservations
    claim: Claim

    def close_files(self) -> None:
        with contextlib.suppress(OSError):
            self.store.sync()
            self.store.close()
        self.claim.file.close()


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
    ) -> None:
        self.paths = ClusterPaths(directory)
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
        self.registry = ClusterRegistry(self._open_target, self.paths)
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
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.server.serve)
            await nursery.start(
                serve_http, self.page.handle, self.node.cvm_address, self.node.http_port
            )
            nursery.start_soon(self._watch)
            nursery.start_soon(self.forensics.sample_io, self.server)
            task_status.started()

    async def shutdown(self) -> None:
        await self.server.shutdown()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        for opened in list(self._opened.values()):
            self._detach(opened.claim)
            opened.close_files()

    # -- opening vDisks -----------------------------------------------------------------

    def _open_target(self, vdisk_id: str) -> VDiskTarget | None:
        try:
            meta = VDiskMeta.load(self.paths.vdisk_meta_file(vdisk_id))
            store = FileStore.open_or_create(self.paths.vdisks, meta)
        except (OSError, ValueError) as error:
            log.error("cannot open vDisk %s: %s", vdisk_id, error)
            return None
        reservations, unit_attentions = vdisk_reservations(self.paths.vdisks, vdisk_id)
        claim = Claim(
            vdisk_id,
            f"{TARGET_NAME_PREFIX}{vdisk_id}",
            OwnershipFile(self.paths.ownership_file(vdisk_id)),
        )
        lu = LogicalUnit(
            FencedStore(store, claim),
            store.meta,
            reservations=reservations,
            unit_attentions=unit_attentions,
        )
        target = VDiskTarget(
            vdisk_id, FencedLogicalUnit(lu, claim, self.lose), block_size=store.block_size
        )
        target.stats = self.vdisk_stats.setdefault(vdisk_id, target.stats)
        self.claims[target.name] = claim
        self._opened[target.name] = OpenedVDisk(target, store, reservations, claim)
        log.info("opened vDisk %s", vdisk_id)
        return target

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
        acquisition = Acquisition(
            claim.file, self.node_id, now=trio.current_time(), time_limit=self.acquire_time_limit
        )
        step = acquisition.begin(trio.current_time())
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
            step = acquisition.finish(trio.current_time())
        claim.fence = Fence(claim.file, step.record)
        claim.evidence = self._evidence_of(claim.vdisk_id).begin(claim.fence.record.epoch)
        opened = self._opened.get(claim.target_name)
        if opened is not None and opened.claim is claim:
            opened.reservations.reload()  # the previous owner may have changed them
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
        url = f"{owner.http_url}/control/vdisks/{vdisk_id}/release?by={self.node_id}"
        try:
            status, answer = await http_json(
                "POST", url, timeout=self.release_timeout, token=self.page.token
            )
        except HttpError as error:
            log.warning("vDisk %s: node %d did not release it (%s)", vdisk_id, owner_id, error)
            return
        log.info("vDisk %s: node %d released it (%s: %s)", vdisk_id, owner_id, status, answer)

    # -- releasing and losing -----------------------------------------------------------

    async def release(self, vdisk_id: str, *, by: str = "?", notify: bool = True) -> dict[str, Any]:
        """Another stargate takes the vDisk: stop admitting, drain, drop, close. Without
        ``notify`` (failback's "quiesce then kill") the connections are closed without an
        async event first."""
        name = f"{TARGET_NAME_PREFIX}{vdisk_id}"
        claim = self.claims.get(name)
        if claim is None:
            return {"vdisk": vdisk_id, "released": True, "was_serving": False}
        was_serving = claim.state is ClaimState.OWNED
        claim.state = ClaimState.RELEASING
        opened = self._opened.get(name)
        if was_serving and opened is not None:
            stats = opened.target.stats
            with trio.move_on_after(self.drain_timeout):
                while stats.queue_depth - claim.live_parked() > 0:
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
        return self.server.request_logout(vdisk_id, seconds)


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
    add_not_ready_flags(parser)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    return parser.parse_args(argv)


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
        )
        arm_not_ready(args, cvm.server.faults)
    except (ValueError, CliError) as error:
        print(f"stargate-{args.node}: {error}", file=sys.stderr)
        return 2
    failure: BaseException | None = None
    try:
        trio.run(serve_until_signalled, cvm)
    except* OSError as group:  # from inside trio's nurseries: wrapped in a group
        failure = group.exceptions[0]
    if failure is not None:
        print(f"stargate-{args.node}: cannot listen: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
