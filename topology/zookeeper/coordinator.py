"""The cluster's coordination on ZooKeeper (the `Coordinator` of topology/coordination.py).

Znodes under the cluster's path (zk://HOST:PORT/PATH):

    PATH/spec                   cluster.json's document
    PATH/vms/<name>             a VM's record
    PATH/vdisks/<id>            a vDisk's metadata
    PATH/ownership/<id>         {"node": N, "epoch": E}: the take-over is a set conditional on
                                the znode version read; a stale version is refused
    PATH/live/<member>          ephemeral: the member (stargate-N, redirector-N) is alive
    PATH/elections/<name>/...   ephemeral sequential candidates, named as kazoo's Lock and
                                Election recipes name theirs (`<id>__lock__<seq>`, data: the
                                candidate), so `client.Election(path).contenders()` lists them

The recipe is run over the trio bridge rather than through kazoo's blocking recipe objects,
which would hold a thread per waiting candidate. A node proves what it holds (the fence of
each ownership cell, its leadership) only while its session is connected and has not been
interrupted since it last read: a suspended or lost session makes every fence fail at once,
from kazoo's thread, before trio hears of it; `wait_session_change` tells the node, which
drops what it served. Registrations are re-created when a new session replaces a lost one.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import trio
from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError
from kazoo.protocol.states import KazooState, WatchedEvent, ZnodeStat
from kazoo.retry import KazooRetry

from topology.coordination import (
    CoordinationError,
    CoordinationTimeout,
    CoordinatorUrl,
    SessionState,
    check_name,
)
from topology.ownership import ClaimOutcome, ClaimResult, OwnershipRecord
from topology.spec import ClusterSpec, ClusterSpecError, VmRecord
from topology.vdisk import VDiskMeta
from topology.zookeeper.bridge import KazooBridge

log = logging.getLogger("topology.zookeeper")

UNPROVABLE = -1  # a cell generation no session ever has
CLOSE_TIMEOUT = 5.0  # seconds to close the session (its ephemeral znodes go with it)
LOCK_MARK = "__lock__"  # kazoo's Lock/Election node name marker


def _encode_record(record: OwnershipRecord) -> bytes:
    return json.dumps({"node": record.node_id, "epoch": record.epoch}).encode()


def _decode_record(data: bytes) -> OwnershipRecord:
    try:
        raw = json.loads(data)
        return OwnershipRecord(int(raw["node"]), int(raw["epoch"]))
    except (ValueError, KeyError, TypeError):
        raise CoordinationError(f"not an ownership record: {data[:64]!r}") from None


class Session:
    """The session as a fence sees it. kazoo's thread flips `provable` and bumps
    `generation` itself on every interruption (no waiting for trio to run); trio hears of
    the change through the bridge."""

    def __init__(self) -> None:
        self.provable = False
        self.generation = 0  # bumped whenever the session stops being provable
        self.state = SessionState.SUSPENDED
        self._lock = threading.Lock()

    def on_kazoo_state(self, state: str) -> None:  # kazoo's thread
        with self._lock:
            if state == KazooState.CONNECTED:
                self.provable = True
            elif self.provable:
                self.provable = False
                self.generation += 1

    def proves(self, generation: int) -> bool:
        return self.provable and generation == self.generation


class ZooKeeperOwnershipCell:
    def __init__(self, coordinator: ZooKeeperCoordinator, vdisk_id: str) -> None:
        self._coordinator = coordinator
        self._bridge = coordinator.bridge
        self._session = coordinator.session_view
        self.path = coordinator.node_path("ownership", vdisk_id)
        self._record = OwnershipRecord(0, 0)
        self._mzxid = 0  # the transaction that wrote the record known: orders the reads
        self._generation = UNPROVABLE
        self._closed = False
        self._watch = self._bridge.forward(self._on_watch)  # one watcher: kazoo dedups it

    def read(self) -> OwnershipRecord:
        return self._record

    def matches(self, expected: OwnershipRecord) -> bool:
        return self._session.proves(self._generation) and self._record == expected

    async def fetch(self) -> OwnershipRecord:
        record, _version = await self._read()
        return record

    async def _read(self) -> tuple[OwnershipRecord, int | None]:
        """The record and its znode version (None: no znode), as read now; remembered
        (with the watch armed) for the fence."""
        generation = self._session.generation
        client = self._bridge.client
        try:
            data, stat = await self._bridge.call(lambda: client.get_async(self.path, self._watch))
        except NoNodeError:
            await self._bridge.call(lambda: client.exists_async(self.path, watch=self._watch))
            self._remember(OwnershipRecord(0, 0), 0, generation)
            return OwnershipRecord(0, 0), None
        record = _decode_record(data)
        self._remember(record, stat.mzxid, generation)
        return record, stat.version

    def _remember(self, record: OwnershipRecord, mzxid: int, generation: int) -> None:
        """Keep what was read or written unless something newer is known: within one
        session, reads complete in order but trio may resume their tasks in any order
        (the later write, by its zxid, wins); a read in a newer session wins anyway."""
        if generation < self._generation:
            return
        if generation == self._generation and mzxid < self._mzxid:
            return
        self._record, self._mzxid = record, mzxid
        self._generation = generation

    async def compare_and_claim(self, expected: OwnershipRecord, node_id: int) -> ClaimResult:
        client = self._bridge.client
        try:
            generation = self._session.generation
            current, version = await self._read()
            if current != expected:
                return ClaimResult(ClaimOutcome.MOVED, current)
            claimed = OwnershipRecord(node_id, current.epoch + 1)
            data = _encode_record(claimed)
            try:
                stat: ZnodeStat
                if version is None:
                    _path, stat = await self._bridge.call(
                        lambda: client.create_async(
                            self.path, data, makepath=True, include_data=True
                        )
                    )
                else:
                    stat = await self._bridge.call(
                        lambda: client.set_async(self.path, data, version=version)
                    )
            except (BadVersionError, NodeExistsError, NoNodeError):  # stale version: moved
                return ClaimResult(ClaimOutcome.MOVED, await self.fetch())
        except CoordinationError:
            return ClaimResult(ClaimOutcome.UNAVAILABLE, expected)
        self._remember(claimed, stat.mzxid, generation)
        return ClaimResult(ClaimOutcome.CLAIMED, claimed)

    def _on_watch(self, _event: WatchedEvent) -> None:  # in trio
        if not self._closed:
            self._coordinator.spawn(self._refresh)

    async def _refresh(self) -> None:
        try:
            await self.fetch()
        except CoordinationError as error:
            # The record changed and could not be read back: nothing is provable.
            self._generation = UNPROVABLE
            log.warning("%s: not re-read after a change: %s", self.path, error)

    def close(self) -> None:
        self._closed = True
        self._coordinator.forget_cell(self)


class ZooKeeperRegistration:
    def __init__(self, coordinator: ZooKeeperCoordinator, name: str, data: bytes) -> None:
        self.name = name
        self.path = coordinator.node_path("live", name)
        self.data = data
        self._coordinator = coordinator
        self.closed = False

    async def create(self) -> None:
        client = self._coordinator.bridge.client
        try:
            await self._coordinator.bridge.call(
                lambda: client.create_async(self.path, self.data, ephemeral=True, makepath=True)
            )
        except NodeExistsError:
            raise CoordinationError(f"member {self.name} is registered and alive already") from None

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._coordinator.forget_registration(self)
        client = self._coordinator.bridge.client
        with suppress(NoNodeError, CoordinationError):  # gone already, or with the session
            await self._coordinator.bridge.call(lambda: client.delete_async(self.path))


def _sequence(node_name: str) -> int:
    return int(node_name[-10:])


class ZooKeeperLeadership:
    def __init__(self, coordinator: ZooKeeperCoordinator, election: str, candidate: str) -> None:
        self._coordinator = coordinator
        self.directory = coordinator.node_path("elections", election)
        self.candidate = candidate
        self.node: str | None = None  # our candidate znode's name
        self._generation = UNPROVABLE
        self._leading = False

    async def enter(self) -> None:
        client = self._coordinator.bridge.client
        prefix = f"{self.directory}/{uuid.uuid4().hex}{LOCK_MARK}"
        generation = self._coordinator.session_view.generation
        created: str = await self._coordinator.bridge.call(
            lambda: client.create_async(
                prefix, self.candidate.encode(), ephemeral=True, sequence=True, makepath=True
            )
        )
        self.node = created.rsplit("/", 1)[1]
        self._generation = generation

    def holds(self) -> bool:
        return self._leading and self._coordinator.session_view.proves(self._generation)

    async def wait_leading(self) -> None:
        bridge = self._coordinator.bridge
        while not self.holds():
            if self.node is None or not self._coordinator.session_view.proves(self._generation):
                raise CoordinationError(f"{self.candidate}: not a candidate (session lost?)")
            children: list[str] = await bridge.call(
                lambda: bridge.client.get_children_async(self.directory)
            )
            ahead = sorted(
                (c for c in children if LOCK_MARK in c and _sequence(c) < _sequence(self.node)),
                key=_sequence,
            )
            if not ahead:
                self._leading = True
                return
            await self._wait_gone(f"{self.directory}/{ahead[-1]}")

    async def _wait_gone(self, predecessor: str) -> None:
        """Return once the candidate just ahead is gone (it resigned, or its session did)."""
        bridge = self._coordinator.bridge
        gone = trio.Event()
        watch = bridge.forward(lambda _event: gone.set())
        if await bridge.call(lambda: bridge.client.exists_async(predecessor, watch=watch)):
            await gone.wait()

    async def resign(self) -> None:
        self._leading = False
        node, self.node = self.node, None
        if node is None:
            return
        self._coordinator.forget_candidacy(self)
        bridge = self._coordinator.bridge
        with suppress(NoNodeError, CoordinationError):
            await bridge.call(lambda: bridge.client.delete_async(f"{self.directory}/{node}"))


class ZooKeeperCoordinator:
    def __init__(
        self, url: CoordinatorUrl, client: KazooClient, nursery: trio.Nursery, call_timeout: float
    ) -> None:
        self.url = url
        self.bridge = KazooBridge(client, call_timeout=call_timeout)
        self.session_view = Session()
        self._nursery = nursery
        self._state_changed = trio.Event()
        self._connected = trio.Event()
        self._cells: set[ZooKeeperOwnershipCell] = set()
        self._registrations: list[ZooKeeperRegistration] = []
        self._candidacies: list[ZooKeeperLeadership] = []
        self._lost_since_connected = False
        self.sessions_lost = 0  # sessions that expired under this node (logs, tests)

    def node_path(self, *parts: str) -> str:
        return "/".join((self.url.path, *parts))

    def spawn(self, job: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run ``job`` beside the coordinator's user (watch refreshes, re-registrations)."""
        self._nursery.start_soon(job, *args)

    # -- session ------------------------------------------------------------------------

    async def connect(self) -> None:
        client = self.bridge.client
        self.bridge.listen(self._on_state, at_once=self.session_view.on_kazoo_state)
        client.start_async()
        with trio.move_on_after(self.url.session_timeout + self.bridge.call_timeout):
            await self._connected.wait()
        if not self._connected.is_set():
            raise CoordinationTimeout(f"cannot reach ZooKeeper at {self.url.host}:{self.url.port}")
        await self.bridge.call(lambda: client.ensure_path_async(self.url.path))

    @property
    def session(self) -> SessionState:
        return self.session_view.state

    async def wait_session_change(self, seen: SessionState) -> SessionState:
        while self.session_view.state is seen:
            await self._state_changed.wait()
        return self.session_view.state

    def _on_state(self, state: str) -> None:  # in trio
        previous = self.session_view.state
        if self.session_view.state is SessionState.CLOSED:
            return
        if state == KazooState.CONNECTED:
            self.session_view.state = SessionState.CONNECTED
            self._connected.set()
            for cell in list(self._cells):
                self.spawn(cell._refresh)  # provable again once re-read in this session
            if self._lost_since_connected:
                self._lost_since_connected = False
                for registration in list(self._registrations):
                    self.spawn(self._recreate, registration)
        elif state == KazooState.SUSPENDED:
            self.session_view.state = SessionState.SUSPENDED
        else:
            self.session_view.state = SessionState.LOST
            self._lost_since_connected = True
            self.sessions_lost += 1
        if self.session_view.state is not previous:
            connected = self.session_view.state is SessionState.CONNECTED
            log.log(logging.INFO if connected else logging.WARNING, "ZooKeeper session: %s",
                    self.session_view.state.value)  # fmt: skip
            self._state_changed.set()
            self._state_changed = trio.Event()

    async def _recreate(self, registration: ZooKeeperRegistration) -> None:
        try:
            await registration.create()
        except CoordinationError as error:
            log.warning("member %s not registered again: %s", registration.name, error)

    async def aclose(self) -> None:
        with trio.move_on_after(CLOSE_TIMEOUT):
            for registration in list(self._registrations):
                await registration.close()
            for candidacy in list(self._candidacies):
                await candidacy.resign()
        self.session_view.state = SessionState.CLOSED
        self._state_changed.set()
        self.bridge.close()
        client = self.bridge.client
        self.session_view.on_kazoo_state(KazooState.LOST)
        # Once per process: stopping joins kazoo's threads, so off the event loop.
        with trio.move_on_after(CLOSE_TIMEOUT):
            await trio.to_thread.run_sync(client.stop, abandon_on_cancel=True)
        client.close()

    # -- ownership ----------------------------------------------------------------------

    def ownership(self, vdisk_id: str) -> ZooKeeperOwnershipCell:
        cell = ZooKeeperOwnershipCell(self, vdisk_id)
        self._cells.add(cell)
        return cell

    def forget_cell(self, cell: ZooKeeperOwnershipCell) -> None:
        self._cells.discard(cell)

    async def read_ownership(self, vdisk_id: str) -> OwnershipRecord | None:
        data = await self._get(self.node_path("ownership", vdisk_id))
        return None if data is None else _decode_record(data)

    async def set_ownership(self, vdisk_id: str, node_id: int) -> OwnershipRecord:
        cell = ZooKeeperOwnershipCell(self, vdisk_id)
        try:
            for _ in range(16):  # a claim is conditional: retry the read if another moved it
                result = await cell.compare_and_claim(await cell.fetch(), node_id)
                if result.outcome is ClaimOutcome.CLAIMED:
                    return result.record
            raise CoordinationError(f"vDisk {vdisk_id}: the record kept moving")
        finally:
            cell.close()

    # -- liveness -----------------------------------------------------------------------

    async def register(self, name: str, info: dict[str, Any]) -> ZooKeeperRegistration:
        data = json.dumps(info).encode()
        registration = ZooKeeperRegistration(self, check_name("member", name), data)
        await registration.create()
        self._registrations.append(registration)
        return registration

    def forget_registration(self, registration: ZooKeeperRegistration) -> None:
        if registration in self._registrations:
            self._registrations.remove(registration)

    async def members(self) -> dict[str, dict[str, Any]]:
        names = await self._children(self.node_path("live"))
        found: dict[str, dict[str, Any]] = {}

        async def one(name: str) -> None:
            data = await self._get(self.node_path("live", name))
            if data is not None:  # gone meanwhile: not alive
                try:
                    found[name] = json.loads(data or b"{}")
                except ValueError:
                    found[name] = {}

        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(one, name)
        return dict(sorted(found.items()))

    # -- leader election ----------------------------------------------------------------

    async def campaign(self, election: str, candidate: str) -> ZooKeeperLeadership:
        leadership = ZooKeeperLeadership(self, check_name("election", election), candidate)
        await leadership.enter()
        self._candidacies.append(leadership)
        return leadership

    def forget_candidacy(self, leadership: ZooKeeperLeadership) -> None:
        if leadership in self._candidacies:
            self._candidacies.remove(leadership)

    async def leader(self, election: str) -> str | None:
        directory = self.node_path("elections", check_name("election", election))
        candidates = [child for child in await self._children(directory) if LOCK_MARK in child]
        for name in sorted(candidates, key=_sequence):
            data = await self._get(f"{directory}/{name}")
            if data is not None:
                return data.decode()
        return None

    # -- the cluster's description ------------------------------------------------------

    async def save_spec(self, spec: ClusterSpec) -> None:
        await self._put(self.node_path("spec"), json.dumps(spec.to_json()).encode())

    async def load_spec(self) -> ClusterSpec:
        data = await self._get(self.node_path("spec"))
        if data is None:
            raise ClusterSpecError(f"{self.url}: no cluster spec: run `stargate cluster up`")
        return ClusterSpec.from_json(json.loads(data))

    async def save_vm(self, vm: VmRecord) -> None:
        document = {
            "name": vm.name,
            "home_node": vm.home_node,
            "vdisk_ids": vm.vdisk_ids,
            "sessions_per_disk": vm.sessions_per_disk,
        }
        await self._put(self.node_path("vms", vm.name), json.dumps(document).encode())

    async def load_vms(self) -> list[VmRecord]:
        vms = []
        for name in sorted(await self._children(self.node_path("vms"))):
            data = await self._get(self.node_path("vms", name))
            if data is not None:
                raw = json.loads(data)
                vms.append(
                    VmRecord(
                        str(raw["name"]),
                        int(raw["home_node"]),
                        [str(v) for v in raw["vdisk_ids"]],
                        int(raw.get("sessions_per_disk", 1)),
                    )
                )
        return vms

    async def save_vdisk(self, meta: VDiskMeta) -> None:
        await self._put(self.node_path("vdisks", meta.vdisk_id), meta.to_json().encode())

    async def load_vdisks(self) -> list[VDiskMeta]:
        metas = []
        for name in sorted(await self._children(self.node_path("vdisks"))):
            data = await self._get(self.node_path("vdisks", name))
            if data is not None:
                metas.append(VDiskMeta.from_json(data.decode()))
        return metas

    # -- znode helpers ------------------------------------------------------------------

    async def _get(self, path: str) -> bytes | None:
        try:
            data, _stat = await self.bridge.call(lambda: self.bridge.client.get_async(path))
        except NoNodeError:
            return None
        return bytes(data)

    async def _children(self, path: str) -> list[str]:
        try:
            children: list[str] = await self.bridge.call(
                lambda: self.bridge.client.get_children_async(path)
            )
        except NoNodeError:
            return []
        return children

    async def _put(self, path: str, data: bytes) -> None:
        client = self.bridge.client
        for _ in range(3):  # set, else create; a racing creator makes the set work next time
            try:
                await self.bridge.call(lambda: client.set_async(path, data))
                return
            except NoNodeError:
                pass
            try:
                await self.bridge.call(lambda: client.create_async(path, data, makepath=True))
                return
            except NodeExistsError:
                pass
        raise CoordinationError(f"{path}: created and deleted under us")


@asynccontextmanager
async def open_zookeeper(
    url: CoordinatorUrl, *, call_timeout: float
) -> AsyncIterator[ZooKeeperCoordinator]:
    """Connect (within the session timeout plus a call's), yield, withdraw and close."""
    client = KazooClient(
        hosts=f"{url.host}:{url.port}",
        timeout=url.session_timeout,
        connection_retry=KazooRetry(max_tries=-1, delay=0.05, max_delay=0.5),
    )
    try:
        async with trio.open_nursery() as nursery:
            coordinator = ZooKeeperCoordinator(url, client, nursery, call_timeout)
            try:
                await coordinator.connect()
                yield coordinator
            finally:
                with trio.CancelScope(shield=True):
                    await coordinator.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The nursery (for watch refreshes) is an implementation detail: the caller's own
        # exception, or a refusal to connect, comes out as itself.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
