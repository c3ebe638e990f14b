"""Ownership under adversity, explored by hypothesis: three nodes, one vDisk, every interleaving
of logins, release requests and answers, pauses (a paused node takes no step and answers
nothing), resumes, kills, restarts, connection closes and clock jumps.

The nodes run the real code on real files: each maps the record with its own `OwnershipFile`
(as its own process would), acquires through `Acquisition` (a compare-and-swap on the
record), parks and resumes commands in a real queue behind an `OwnershipGate` whose
`Claim`s and fences decide. Only what surrounds them is modelled, as cvm.py does it: the
HTTP release request (a message), the connections (a close reaches the node at once, is
read when it takes a step; before resuming parked commands it reads what arrived), and the
execution of a WRITE as one step that checks the fence and appends to the disk's history.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from cluster.admission import Claim, ClaimState, OwnershipGate
from stargate.queue import Admission, CommandQueue, Tenant
from topology.acquisition import (
    Acquisition,
    AskOwner,
    Claimed,
    GaveUp,
    RetryLater,
    Step,
    begin_sync,
    finish_sync,
)
from topology.ownership import NO_NODE, Fence, OwnershipFile, OwnershipRecord, read_record

NAME = "iqn.2010-06.com.nutanix:vmdisk-vd"
NODES = (1, 2, 3)
RELEASE_TIMEOUT = 5.0
PARK_LIMIT = RELEASE_TIMEOUT + 2.0
TIME_LIMIT = 3 * RELEASE_TIMEOUT


@dataclass(eq=False)
class Connection:
    node_id: int
    open: bool = True  # the initiator has not closed it (nor the target dropped it)
    close_read: bool = False  # the node has read the close (its commands are aborted)


@dataclass(eq=False)
class Write:
    """A WRITE of ``value``, as the real queue sees a task (the `QueuedCommand` protocol)."""

    model: OwnershipModel
    node: Node
    claim: Claim
    connection: Connection
    value: int
    parked_at: float | None = None
    buffer_bytes: int = 0
    tenant: Tenant | None = None  # charged to the queue as a whole

    @property
    def cancelled(self) -> bool:
        return self.connection.close_read

    def dispatch(self) -> None:  # resumed by the queue, with a slot held
        self.model.execute(self)


@dataclass(frozen=True)
class Execution:
    node_id: int
    epoch: int
    value: int


@dataclass
class Node:
    node_id: int
    file: OwnershipFile
    claims: dict[str, Claim]
    gate: OwnershipGate
    queue: CommandQueue
    alive: bool = True
    paused: bool = False
    connections: list[Connection] = field(default_factory=list)
    acquisition: Acquisition | None = None
    asking: int | None = None  # the owner asked, while waiting for its answer
    ask_deadline: float = 0.0
    answered: bool = False
    asked_about: set[OwnershipRecord] = field(default_factory=set)  # records whose owner was asked
    awaiting_data: list[Write] = field(default_factory=list)  # admitted, Data-Out to come

    @property
    def claim(self) -> Claim | None:
        return self.claims.get(NAME)

    @property
    def steps(self) -> bool:
        return self.alive and not self.paused


@dataclass(frozen=True)
class ReleaseRequest:
    requester: int
    owner: int
    acquisition: Acquisition


class OwnershipModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="ownership-model-"))
        self.path = self.directory / "vd"
        self.now = 0.0
        self.nodes: dict[int, Node] = {}
        self.requests: list[ReleaseRequest] = []
        self.executions: list[Execution] = []
        self.highest_acked_epoch = 0
        self.last_record_epoch = 0

    @initialize()
    def start_nodes(self) -> None:
        for node_id in NODES:
            self.nodes[node_id] = self.fresh_node(node_id)

    def fresh_node(self, node_id: int) -> Node:
        claims: dict[str, Claim] = {}
        gate = OwnershipGate(
            claims,
            on_lost=lambda claim: self.detach(node, claim),
            on_unclaimed=lambda claim: self.start_acquiring(node, claim),
            park_limit=PARK_LIMIT,
            clock=lambda: self.now,
        )
        node = Node(node_id, OwnershipFile(self.path), claims, gate, CommandQueue(64, gate=gate))
        return node

    def teardown(self) -> None:
        for node in self.nodes.values():
            if node.alive:
                node.file.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- what cvm.py does ---------------------------------------------------------------

    def start_acquiring(self, node: Node, claim: Claim) -> None:
        if claim.state is not ClaimState.IDLE:
            return
        claim.state = ClaimState.ACQUIRING
        node.acquisition = Acquisition(node.node_id, now=self.now, time_limit=TIME_LIMIT)
        node.asked_about = set()
        acquisition = node.acquisition
        self.advance(node, claim, lambda now: begin_sync(acquisition, node.file, now))

    def advance(self, node: Node, claim: Claim, call: Callable[[float], Step]) -> None:
        """One step of the real acquisition; what it did to the record is checked."""
        before = node.file.read()
        step = call(self.now)
        if isinstance(step, AskOwner):
            node.asked_about.add(before)
        elif isinstance(step, Claimed):
            assert step.record == OwnershipRecord(node.node_id, before.epoch + 1)
            assert before.node_id in (NO_NODE, node.node_id) or before in node.asked_about, (
                f"node {node.node_id} took {before} without asking its owner"
            )
        self.take(node, claim, step)

    def take(self, node: Node, claim: Claim, step: Step) -> None:
        acquisition = node.acquisition
        assert acquisition is not None
        if isinstance(step, AskOwner):
            node.asking, node.answered = step.owner_id, False
            node.ask_deadline = self.now + RELEASE_TIMEOUT
            self.requests.append(ReleaseRequest(node.node_id, step.owner_id, acquisition))
        elif isinstance(step, RetryLater):
            node.asking, node.answered = None, True  # try again at its next step
        elif isinstance(step, GaveUp):
            node.acquisition = node.asking = None
            node.gate.refuse_parked(claim)
            self.detach(node, claim)
        else:
            assert isinstance(step, Claimed), step  # the sync drivers claim at once
            self.become_owner(node, claim, step)

    def become_owner(self, node: Node, claim: Claim, step: Claimed) -> None:
        node.acquisition = node.asking = None
        claim.fence = Fence(node.file, step.record)
        self.read_closes(node)  # the settle before resuming: closes that arrived are read
        claim.state = ClaimState.OWNED
        node.gate.resume(claim, node.queue)

    def detach(self, node: Node, claim: Claim) -> None:
        """lose / release / give up: forget the vDisk and drop its connections."""
        claim.state = ClaimState.GONE
        if node.claims.get(NAME) is claim:
            del node.claims[NAME]
        if node.acquisition is not None:
            node.acquisition = node.asking = None
        for connection in node.connections:
            connection.open = False
            connection.close_read = True
        node.queue.forget_cancelled()
        claim.parked.clear()
        for _ in node.awaiting_data:
            node.queue.release()
        node.awaiting_data.clear()

    def read_closes(self, node: Node) -> None:
        for connection in node.connections:
            if not connection.open:
                connection.close_read = True
        node.queue.forget_cancelled()
        for write in [w for w in node.awaiting_data if w.cancelled]:
            node.awaiting_data.remove(write)
            node.queue.release()
        node.connections = [c for c in node.connections if c.open]

    def execute(self, write: Write) -> None:
        """`FencedLogicalUnit.execute` + the store: the fence, read now, decides."""
        node = write.node
        assert node.steps, "a paused or dead node executed"
        if write.claim.may_execute():
            assert write.connection.open, "a command of a closed connection executed"
            if write.parked_at is not None:
                assert self.now - write.parked_at <= PARK_LIMIT, "ran past its bound"
            assert write.claim.fence is not None
            epoch = write.claim.fence.record.epoch
            for earlier in self.executions:
                assert earlier.epoch <= epoch, f"epoch went backwards: {earlier} then {epoch}"
                assert earlier.epoch != epoch or earlier.node_id == node.node_id, (
                    f"two nodes executed in epoch {epoch}"
                )
            assert epoch >= self.highest_acked_epoch, "older epoch after a newer acked write"
            self.executions.append(Execution(node.node_id, epoch, write.value))
            self.highest_acked_epoch = max(self.highest_acked_epoch, epoch)
        else:
            self.detach(node, write.claim)  # BUSY, and the vDisk is dropped here
        node.queue.release()

    # -- rules: each picks among the nodes (connections, requests) it can apply to ----------

    def eligible(self, wanted: Callable[[Node], bool]) -> list[Node]:
        return [node for node in self.nodes.values() if wanted(node)]

    @staticmethod
    def has_open_connection(node: Node) -> bool:
        return node.steps and node.claim is not None and any(c.open for c in node.connections)

    def may_go_on(self, node: Node) -> bool:
        return (
            node.steps
            and node.acquisition is not None
            and (node.answered or self.now >= node.ask_deadline)
        )

    @staticmethod
    def watcher_has_work(node: Node) -> bool:
        claim = node.claim
        return (
            node.steps
            and claim is not None
            and (
                (claim.state is ClaimState.OWNED and not claim.may_execute())
                or (claim.state is ClaimState.ACQUIRING and bool(claim.parked))
            )
        )

    @rule(index=st.integers(0, 2))
    def login(self, index: int) -> None:
        node = self.nodes[NODES[index]]
        if not node.steps:
            return
        claim = node.claim
        if claim is None:
            claim = Claim("vd", NAME, node.file)
            node.claims[NAME] = claim
        node.connections.append(Connection(node.node_id))
        self.start_acquiring(node, claim)

    @precondition(lambda self: any(map(self.has_open_connection, self.nodes.values())))
    @rule(index=st.integers(0, 20), value=st.integers(0, 255), with_data=st.booleans())
    def write(self, index: int, value: int, with_data: bool) -> None:
        nodes = self.eligible(self.has_open_connection)
        node = nodes[index % len(nodes)]
        assert node.claim is not None
        connections = [c for c in node.connections if c.open]
        command = Write(self, node, node.claim, connections[value % len(connections)], value)
        admission = node.queue.admit(NAME, command)
        if admission is Admission.RUN:
            if with_data:
                self.execute(command)
            else:
                node.awaiting_data.append(command)  # its Data-Out comes later (R2T)
        elif admission is Admission.QUEUED:
            command.parked_at = self.now

    @precondition(lambda self: any(n.steps and n.awaiting_data for n in self.nodes.values()))
    @rule(index=st.integers(0, 2))
    def data_out_arrives(self, index: int) -> None:
        nodes = self.eligible(lambda n: n.steps and bool(n.awaiting_data))
        node = nodes[index % len(nodes)]
        write = node.awaiting_data.pop(0)
        if write.connection.open:
            self.execute(write)  # it may have been admitted before a pause: the fence says
        else:
            node.queue.release()

    @precondition(lambda self: any(self.nodes[r.owner].steps for r in self.requests))
    @rule(index=st.integers(0, 20))
    def owner_answers(self, index: int) -> None:
        """`POST /release` handled by its owner (if it steps): drain, drop, close, answer."""
        ready = [r for r in self.requests if self.nodes[r.owner].steps]
        request = ready[index % len(ready)]
        self.requests.remove(request)
        owner = self.nodes[request.owner]
        claim = owner.claim
        if claim is not None:
            claim.state = ClaimState.RELEASING
            self.detach(owner, claim)
        requester = self.nodes[request.requester]
        if requester.alive and requester.acquisition is request.acquisition:
            requester.answered = True

    @precondition(lambda self: any(map(self.may_go_on, self.nodes.values())))
    @rule(index=st.integers(0, 2))
    def requester_goes_on(self, index: int) -> None:
        """The answer arrived, or the release timeout passed (or the lock was busy)."""
        nodes = self.eligible(self.may_go_on)
        node = nodes[index % len(nodes)]
        assert node.acquisition is not None and node.claim is not None
        acquisition = node.acquisition
        self.advance(node, node.claim, lambda now: finish_sync(acquisition, node.file, now))

    @precondition(lambda self: any(map(self.watcher_has_work, self.nodes.values())))
    @rule(index=st.integers(0, 2))
    def watcher(self, index: int) -> None:
        nodes = self.eligible(self.watcher_has_work)
        node = nodes[index % len(nodes)]
        claim = node.claim
        assert claim is not None
        if claim.state is ClaimState.OWNED:
            self.detach(node, claim)
        else:
            node.gate.expire_parked(claim)

    @precondition(
        lambda self: any(
            n.steps and any(not c.open for c in n.connections) for n in self.nodes.values()
        )
    )
    @rule(index=st.integers(0, 2))
    def node_reads_closes(self, index: int) -> None:
        nodes = self.eligible(lambda n: n.steps and any(not c.open for c in n.connections))
        self.read_closes(nodes[index % len(nodes)])

    @precondition(lambda self: any(c.open for n in self.nodes.values() for c in n.connections))
    @rule(index=st.integers(0, 20))
    def initiator_closes(self, index: int) -> None:
        connections = [c for n in self.nodes.values() for c in n.connections if c.open]
        connections[index % len(connections)].open = False  # read when its node steps

    @rule(index=st.integers(0, 2))
    def pause(self, index: int) -> None:
        self.nodes[NODES[index]].paused = True

    @precondition(lambda self: any(n.paused for n in self.nodes.values()))
    @rule(index=st.integers(0, 2))
    def resume(self, index: int) -> None:
        nodes = self.eligible(lambda n: n.paused)
        nodes[index % len(nodes)].paused = False

    @precondition(lambda self: any(n.alive for n in self.nodes.values()))
    @rule(index=st.integers(0, 2))
    def kill(self, index: int) -> None:
        nodes = self.eligible(lambda n: n.alive)
        node = nodes[index % len(nodes)]
        node.alive = False
        for connection in node.connections:
            connection.open = False
        node.file.close()
        self.requests = [r for r in self.requests if r.owner != node.node_id]  # unanswered

    @precondition(lambda self: any(not n.alive for n in self.nodes.values()))
    @rule(index=st.integers(0, 2))
    def restart(self, index: int) -> None:
        nodes = self.eligible(lambda n: not n.alive)
        self.nodes[nodes[index % len(nodes)].node_id] = self.fresh_node(
            nodes[index % len(nodes)].node_id
        )

    @rule(seconds=st.sampled_from([0.5, 2.0, 6.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def epochs_only_grow(self) -> None:
        record = read_record(self.path)
        epoch = record.epoch if record is not None else 0
        assert epoch >= self.last_record_epoch
        self.last_record_epoch = epoch

    @invariant()
    def at_most_one_node_may_execute(self) -> None:
        # What the HTTP pages report as "serving": never two at one moment.
        serving = [
            node.node_id
            for node in self.nodes.values()
            if node.alive and node.claim is not None and node.claim.may_execute()
        ]
        assert len(serving) <= 1, f"nodes {serving} may all execute"

    @invariant()
    def slots_are_given_back(self) -> None:
        for node in self.nodes.values():
            if node.alive:
                assert node.queue.in_flight == len(node.awaiting_data)


OwnershipModel.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestOwnershipModel = OwnershipModel.TestCase
