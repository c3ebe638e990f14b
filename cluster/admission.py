"""What may run for a vDisk at this stargate now: claims, the fenced LU, the parking gate.

A `Claim` is this stargate's standing on one vDisk it has open. Commands are admitted only
while the claim is OWNED and its fence holds:

- `OwnershipGate` (the admission gate of the server's shared command queue) parks a
  vDisk's commands while its claim is being acquired (the previous owner is releasing it)
  and lets them into the queue once it is owned; commands of a vDisk being released or
  lost stay parked and never run (their connections are being dropped, the initiator
  re-issues them elsewhere). Nothing parked
  outlives its connection (an aborted command is skipped) or its bound: a command parked
  longer than `park_limit` is answered BUSY instead of run, whether the claim was won
  since or not. Its initiator may have given up on it long ago (a connection whose close
  this stargate has not read yet, e.g. it was stopped), and running it now could put old
  data over writes acknowledged meanwhile through another stargate.
- `FencedLogicalUnit` checks the fence right before executing: a command admitted before a
  take-over (e.g. one that waited for Data-Out while this process was stopped) is answered
  BUSY instead of touching the vDisk. BUSY, because initiators retry it (QEMU, Linux and
  ours alike) where NOT READY would reach the VM as an I/O error; the retry lands at the
  new owner once the connection, dropped right after, is re-established. A command during
  which the fence broke is answered BUSY too, whatever it did.
- `FencedStore` checks it again right before each write, hole punch or resize: the window
  a stopped process could resume into shrinks to the few bytecodes before the system call,
  and work that runs beside the commands (a SANITIZE's worker thread) stops at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from cluster.evidence import EpochSlot
from iscsicore.scsi.opcodes import ScsiStatus
from stargate.queue import CommandQueue, QueuedCommand
from stargate.scsi.command import Nexus, ScsiResult
from stargate.scsi.lu import UnitAttentions
from stargate.stores.base import BlockStore
from stargate.target import (
    BlockStoreLike,
    LogicalUnitLike,
    ScsiResultLike,
    target_of_queue_key,
)
from stargate.tasks import ScsiTask
from topology.ownership import Fence, RecordView

# How long a command may wait, parked, for its vDisk to be acquired: a little more than an
# acquisition whose owner does not answer (the release timeout, 5 s) takes.
DEFAULT_PARK_LIMIT = 7.0


class ClaimState(Enum):
    IDLE = "idle"  # opened (a login named it), not asked for yet
    ACQUIRING = "acquiring"  # asking the previous owner to release it
    OWNED = "owned"  # serving its I/O
    RELEASING = "releasing"  # draining for another stargate
    GONE = "gone"  # released or taken over: nothing more runs here


@dataclass(slots=True)
class Parked:
    command: QueuedCommand
    since: float  # the queue's clock when it was parked
    key: str  # its queue key (its LUN's sub-queue)


@dataclass(eq=False)
class Claim:
    vdisk_id: str
    target_name: str
    file: RecordView  # the record (an ownership cell of the coordinator)
    state: ClaimState = ClaimState.IDLE
    fence: Fence | None = None
    parked: list[Parked] = field(default_factory=list)
    evidence: EpochSlot | None = None  # set once owned: the writes executed under its epoch

    def serving(self) -> bool:
        """Owned by this stargate and its fence still holds: new commands may start."""
        return self.state is ClaimState.OWNED and self.fence is not None and self.fence.holds()

    def may_execute(self) -> bool:
        # RELEASING: commands admitted before the release began still run (the drain).
        return (
            self.state in (ClaimState.OWNED, ClaimState.RELEASING)
            and self.fence is not None
            and self.fence.holds()
        )

    def live_parked(self) -> int:
        return sum(1 for entry in self.parked if not entry.command.cancelled)


# Called when a command finds its claim no longer valid: the owner drops the vDisk.
LostCallback = Callable[[Claim], None]
# Called when a command arrives for a claim nobody started acquiring yet.
AcquireCallback = Callable[[Claim], None]


_BUSY = ScsiResult(ScsiStatus.BUSY)


class StaleOwnerError(OSError):
    """A write reached the store after this stargate lost the vDisk: refused."""


class FencedStore:
    """A block store that refuses to change the vDisk unless the claim may execute."""

    def __init__(self, inner: BlockStore, claim: Claim) -> None:
        self.inner = inner
        self.claim = claim
        # Bound once: reads are the hot path, one call straight to the store's method.
        self.read = inner.read
        self.sync = inner.sync
        self.allocated_extents = inner.allocated_extents
        self.close = inner.close

    @property
    def size(self) -> int:
        return self.inner.size

    @property
    def block_size(self) -> int:
        return self.inner.block_size

    def _check(self) -> None:
        if not self.claim.may_execute():
            raise StaleOwnerError(f"vDisk {self.claim.vdisk_id} is no longer served here")

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        started = time.time()  # before the check: see cluster/evidence.py
        self._check()
        self.inner.write(offset, data)
        if self.claim.evidence is not None:
            self.claim.evidence.note_write(started)

    def punch_hole(self, offset: int, length: int) -> None:
        self._check()
        self.inner.punch_hole(offset, length)

    def resize(self, size: int) -> None:
        self._check()
        self.inner.resize(size)


class FencedLogicalUnit:
    """A logical unit that executes only while this stargate holds the vDisk."""

    def __init__(self, inner: LogicalUnitLike, claim: Claim, on_lost: LostCallback) -> None:
        self.inner = inner
        self.claim = claim
        self._on_lost = on_lost
        # Not fenced: they change the unit's state (unit attentions, SPC-2 holds), not blocks.
        self.nexus_lost = inner.nexus_lost
        self.logical_unit_reset = inner.logical_unit_reset

    @property
    def store(self) -> BlockStoreLike:
        # Read through every time: SANITIZE swaps the unit's store for one whose sync()
        # waits for the erase, and the transport must sync that one before status.
        return self.inner.store

    @property
    def unit_attentions(self) -> UnitAttentions:
        return self.inner.unit_attentions

    def execute(
        self, cdb: bytes, data_out: bytes | bytearray | memoryview, nexus: Nexus
    ) -> ScsiResultLike:
        if self.claim.may_execute():
            result = self.inner.execute(cdb, data_out, nexus)
            if self.claim.may_execute():
                return result
        self._on_lost(self.claim)
        return _BUSY


class OwnershipGate:
    """The shared command queue's gate: a vDisk's commands enter only while it is owned."""

    def __init__(
        self,
        claims: dict[str, Claim],
        *,
        on_lost: LostCallback,
        on_unclaimed: AcquireCallback,
        park_limit: float = DEFAULT_PARK_LIMIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._claims = claims  # by target name, shared with the CVM
        self._on_lost = on_lost
        self._on_unclaimed = on_unclaimed
        self.park_limit = park_limit
        self._clock = clock  # monotonic: it keeps counting while the process is stopped
        self.refused_stale = 0  # parked commands answered BUSY for waiting too long

    def is_open(self, vdisk: str) -> bool:
        """Owned and fenced, or not a cluster vDisk (tests): the queue's own rules. The
        claim is the target's: every LUN of a target is owned with it."""
        claim = self._claims.get(target_of_queue_key(vdisk))
        return claim is None or claim.serving()

    def hold(self, vdisk: str, command: QueuedCommand) -> None:
        """Park the command and start the claim's hand-over (or report it lost)."""
        claim = self._claims[target_of_queue_key(vdisk)]
        if claim.state is ClaimState.OWNED:
            self._on_lost(claim)
        elif claim.state is ClaimState.IDLE:
            self._on_unclaimed(claim)
        claim.parked.append(Parked(command, self._clock(), vdisk))

    def resume(self, claim: Claim, queue: CommandQueue) -> None:
        """The claim is owned now: its parked commands enter the queue, in arrival order,
        except those whose connection went (never run) and those parked too long (BUSY)."""
        now = self._clock()
        parked, claim.parked = claim.parked, []
        for entry in parked:
            command = entry.command
            if command.cancelled:
                continue
            if now - entry.since > self.park_limit:
                self._refuse(command)
                continue
            queue.admit_held(entry.key, command)

    def expire_parked(self, claim: Claim) -> None:
        """Answer BUSY the commands parked longer than the bound (the claim still waits)."""
        now = self._clock()
        kept: list[Parked] = []
        for entry in claim.parked:
            if entry.command.cancelled:
                continue
            if now - entry.since > self.park_limit:
                self._refuse(entry.command)
            else:
                kept.append(entry)
        claim.parked = kept

    def refuse_parked(self, claim: Claim) -> None:
        """The claim will not be owned (acquisition gave up): BUSY to all its parked ones."""
        parked, claim.parked = claim.parked, []
        for entry in parked:
            if not entry.command.cancelled:
                self._refuse(entry.command)

    def _refuse(self, command: QueuedCommand) -> None:
        self.refused_stale += 1
        if isinstance(command, ScsiTask):
            command.refuse(ScsiStatus.BUSY)  # initiators retry BUSY
        # Anything else (tests' commands) holds no slot and has nobody to answer.

    def forget_cancelled(self) -> None:
        for claim in self._claims.values():
            if claim.parked:
                claim.parked = [entry for entry in claim.parked if not entry.command.cancelled]
