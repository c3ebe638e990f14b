"""The one native-SCSI command queue shared by every connection of a stargate.

A command holds one of ``depth`` slots from its arrival until its status is queued for
sending: while it waits for Data-Out, while it runs, and while its fdatasync runs. When a
slot is free and nobody waits, admission is a counter increment and the caller runs the
command inline: no task switch, no allocation. Only when the queue is full do commands wait,
in per-vDisk FIFO sub-queues served round-robin, so one busy vDisk cannot starve another. The
waiting room is bounded too; beyond it the answer is TASK SET FULL.

Isolation: a command is charged to its *tenant*, the session that sent it and the vDisk it
is for. Neither may hold more than its `ShareLimits` of the slots, of the write-buffer bytes
or of the waiting room, so one session (or every session of one vDisk) cannot capture the
queue: its excess waits (in its vDisk's sub-queue), or gets TASK SET FULL, while the others'
commands still find free slots. A waiting command that does not fit (its tenant's limits, or the
buffer bytes of the whole queue) is passed by the ones behind it that do, in its vDisk and in
the others'.

The queue also computes each session's share of the free slots, from which the session
advertises MaxCmdSN, and tells sessions whose window it closed when slots free up again.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

DEFAULT_MAX_BUFFERED_BYTES = 256 * 1024 * 1024


@dataclass(slots=True, eq=False)
class Share:
    """What one session, or one vDisk, holds of the queue right now."""

    slots: int = 0
    buffered_bytes: int = 0
    waiting: int = 0


@dataclass(frozen=True, slots=True)
class ShareLimits:
    """The most one session, or one vDisk, may hold of the queue."""

    slots: int
    buffered_bytes: int
    waiting: int

    def __post_init__(self) -> None:
        if min(self.slots, self.buffered_bytes, self.waiting) < 1:
            raise ValueError(f"share limits must be positive: {self}")

    @classmethod
    def fair(cls, depth: int, max_waiting: int, max_buffered_bytes: int) -> ShareLimits:
        """The default: three quarters of the slots, a quarter of the buffer bytes and of
        the waiting room; the rest stays for the others."""
        return cls(
            slots=max(1, depth - depth // 4),
            buffered_bytes=max(1, max_buffered_bytes // 4),
            waiting=max(1, max_waiting // 4),
        )


@dataclass(frozen=True, slots=True, eq=False)
class Tenant:
    """Who a command is charged to: its session's share, and its vDisk's (one `Share`
    for all the sessions of that vDisk)."""

    session: Share
    vdisk: Share


class Admission(Enum):
    RUN = "run"  # a slot is held: run now, then `release()`
    QUEUED = "queued"  # `dispatch()` will be called when a slot frees up
    FULL = "full"  # no slot, no room to wait: answer TASK SET FULL


class QueuedCommand(Protocol):
    """A command waiting for a slot."""

    @property
    def cancelled(self) -> bool: ...

    @property
    def buffer_bytes(self) -> int:
        """Data-Out bytes it will hold in memory once running (its write buffer)."""

    @property
    def tenant(self) -> Tenant | None:
        """Whom it is charged to (None: nobody but the queue as a whole)."""

    def dispatch(self) -> None:
        """Called with a slot held for it; it must eventually `release()` that slot."""


class AdmissionGate(Protocol):
    """What may enter the queue, decided before the queue's own rules (the cluster admits a
    vDisk's commands only while this stargate owns it: cluster/admission.py)."""

    def is_open(self, vdisk: str) -> bool:
        """May commands of ``vdisk`` take slots now? The inline path asks only this."""

    def hold(self, vdisk: str, command: QueuedCommand) -> None:
        """The gate is closed for ``vdisk``: keep ``command`` until it opens (then
        `CommandQueue.admit_held`) or answer it otherwise."""

    def forget_cancelled(self) -> None:
        """Drop held commands that were cancelled (after an abort)."""


class WindowListener(Protocol):
    def window_opened(self) -> None:
        """Slots are free again: advertise the new MaxCmdSN (e.g. with a NOP-In)."""


class CommandQueue:
    def __init__(
        self,
        depth: int,
        *,
        max_waiting: int | None = None,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
        session_limits: ShareLimits | None = None,
        vdisk_limits: ShareLimits | None = None,
        gate: AdmissionGate | None = None,
    ) -> None:
        if depth < 1:
            raise ValueError("queue depth must be at least 1")
        self.depth = depth
        self.max_waiting = depth if max_waiting is None else max_waiting
        # Write buffers of running commands, all connections together: a slot is not
        # enough to run a write whose buffer would take the total past this.
        self.max_buffered_bytes = max_buffered_bytes
        fair = ShareLimits.fair(depth, self.max_waiting, max_buffered_bytes)
        self.session_limits = session_limits or fair
        self.vdisk_limits = vdisk_limits or fair
        self._vdisk_shares: dict[str, Share] = {}
        self.buffered_bytes = 0
        self.in_flight = 0
        self.waiting = 0
        self.task_set_full_count = 0
        self._sub_queues: dict[str, deque[QueuedCommand]] = {}
        self._round_robin: deque[str] = deque()  # vDisks with waiting commands, next first
        # True while every waiting command waits for its tenant's share or for buffer
        # bytes, not for a slot: new commands that fit may then pass them.
        self._may_overtake = False
        self._dispatching = False
        self.sessions = 0  # sessions sharing the slots (read on every response)
        self._closed_windows: dict[int, WindowListener] = {}
        self._gate = gate

    # -- sessions and their command windows -----------------------------------------

    def session_opened(self) -> None:
        self.sessions += 1

    def session_closed(
        self, listener: WindowListener | None = None, *, counted: bool = True
    ) -> None:
        """A session ended (``counted``: it had called `session_opened`)."""
        if counted:
            self.sessions = max(0, self.sessions - 1)
        if listener is not None:
            self._closed_windows.pop(id(listener), None)

    @property
    def free_slots(self) -> int:
        if self._may_overtake:  # the waiters wait for their own share: not for these slots
            return max(0, self.depth - self.in_flight)
        return max(0, self.depth - self.in_flight - self.waiting)

    def window_share(self, listener: WindowListener | None = None) -> int:
        """How many more commands one session may send: its share of the free slots.

        A share of 0 closes the session's window; the listener is then told when slots free.
        Every session gets at least one slot while any is free, so none is locked out.
        """
        free = self.free_slots
        if free == 0:
            if listener is not None:
                self._closed_windows[id(listener)] = listener
            return 0
        return max(1, free // max(1, self.sessions))

    # -- tenants ----------------------------------------------------------------------

    def tenant(self, vdisk: str) -> Tenant:
        """A new session's tenant on ``vdisk``: its own share, and the vDisk's."""
        share = self._vdisk_shares.get(vdisk)
        if share is None:
            share = self._vdisk_shares[vdisk] = Share()
        return Tenant(Share(), share)

    def tenants(self, vdisks: list[str]) -> list[Tenant]:
        """A new session's tenants on several vDisks (the LUNs of its target): one share
        of its own for all of them, and each vDisk's."""
        session = Share()
        return [Tenant(session, self.tenant(vdisk).vdisk) for vdisk in vdisks]

    # -- admission --------------------------------------------------------------------

    def _fits(self, buffer_bytes: int, tenant: Tenant | None) -> bool:
        if tenant is not None and not (
            _share_fits(tenant.session, self.session_limits, buffer_bytes)
            and _share_fits(tenant.vdisk, self.vdisk_limits, buffer_bytes)
        ):
            return False
        # An idle queue takes any one command, however large: no deadlock on a huge write.
        return (
            buffer_bytes == 0
            or self.buffered_bytes == 0
            or self.buffered_bytes + buffer_bytes <= self.max_buffered_bytes
        )

    def admit(self, vdisk: str, command: QueuedCommand) -> Admission:
        gate = self._gate
        if gate is not None and not gate.is_open(vdisk):
            gate.hold(vdisk, command)
            return Admission.QUEUED
        return self._enter(vdisk, command)

    def admit_held(self, vdisk: str, command: QueuedCommand) -> None:
        """A command the gate held enters now, in the order held: it runs, or waits for a
        slot. A full queue runs it over depth (accounted as `admit` would, so that its
        `release` balances): its initiator was told nothing yet, better late than failed."""
        admission = self._enter(vdisk, command)
        if admission is Admission.FULL:
            self._charge(command.buffer_bytes, command.tenant)
        if admission is not Admission.QUEUED:
            command.dispatch()

    def _enter(self, vdisk: str, command: QueuedCommand) -> Admission:
        tenant = command.tenant
        if self._take_free_slot(command.buffer_bytes, tenant):
            return Admission.RUN
        if self.waiting < self.max_waiting and (
            tenant is None
            or (
                tenant.session.waiting < self.session_limits.waiting
                and tenant.vdisk.waiting < self.vdisk_limits.waiting
            )
        ):
            # Kept out only by what it would hold (not by a full queue or earlier waiters)?
            self._may_overtake = self.in_flight < self.depth and (
                self.waiting == 0 or self._may_overtake
            )
            sub_queue = self._sub_queues.get(vdisk)
            if sub_queue is None:
                sub_queue = self._sub_queues[vdisk] = deque()
                self._round_robin.append(vdisk)
            sub_queue.append(command)
            self.waiting += 1
            if tenant is not None:
                tenant.session.waiting += 1
                tenant.vdisk.waiting += 1
            return Admission.QUEUED
        self.task_set_full_count += 1
        return Admission.FULL

    def admit_now(self, vdisk: str, buffer_bytes: int = 0, tenant: Tenant | None = None) -> bool:
        """A slot for a command of ``vdisk`` that will run to completion right now and never
        wait: True (the slot is held, `release()` it) when `admit` would say RUN; False:
        call `admit`. The inline path, without a queued-command object.

        A closed gate says False here, and `admit` hands the command to it.
        """
        gate = self._gate
        if gate is not None and not gate.is_open(vdisk):
            return False
        return self._take_free_slot(buffer_bytes, tenant)

    def _take_free_slot(self, buffer_bytes: int, tenant: Tenant | None = None) -> bool:
        # The inline path of every command: `_fits` and `_charge` written out, no calls.
        if self.in_flight >= self.depth or (self.waiting and not self._may_overtake):
            return False
        if (
            buffer_bytes
            and self.buffered_bytes
            and self.buffered_bytes + buffer_bytes > self.max_buffered_bytes
        ):
            return False
        if tenant is not None:
            session, vdisk = tenant.session, tenant.vdisk
            if session.slots >= self.session_limits.slots or vdisk.slots >= self.vdisk_limits.slots:
                return False
            if buffer_bytes and not (
                _bytes_fit(session, self.session_limits, buffer_bytes)
                and _bytes_fit(vdisk, self.vdisk_limits, buffer_bytes)
            ):
                return False
            session.slots += 1
            session.buffered_bytes += buffer_bytes
            vdisk.slots += 1
            vdisk.buffered_bytes += buffer_bytes
        self.in_flight += 1
        self.buffered_bytes += buffer_bytes
        return True

    def _charge(self, buffer_bytes: int, tenant: Tenant | None) -> None:
        """Account a slot (and its buffer bytes) as held, to the queue and the tenant."""
        self.in_flight += 1
        self.buffered_bytes += buffer_bytes
        if tenant is not None:
            session, vdisk = tenant.session, tenant.vdisk
            session.slots += 1
            session.buffered_bytes += buffer_bytes
            vdisk.slots += 1
            vdisk.buffered_bytes += buffer_bytes

    def release(self, buffer_bytes: int = 0, tenant: Tenant | None = None) -> None:
        """Give back a slot (and the command's buffer bytes, charged to ``tenant`` as at
        admission); hand free slots to waiting commands, fairly across vDisks."""
        self.in_flight -= 1
        self.buffered_bytes -= buffer_bytes
        if tenant is not None:
            session, vdisk = tenant.session, tenant.vdisk
            session.slots -= 1
            session.buffered_bytes -= buffer_bytes
            vdisk.slots -= 1
            vdisk.buffered_bytes -= buffer_bytes
        if self._dispatching:
            return  # the dispatch loop below is on the stack and will use the slot
        if self.waiting:
            self._dispatch_waiting()
        if self._closed_windows and self.free_slots:
            listeners = list(self._closed_windows.values())
            self._closed_windows.clear()
            for listener in listeners:
                listener.window_opened()

    def forget_cancelled(self) -> None:
        """Drop cancelled commands from the waiting room and the gate (after an abort)."""
        if self._gate is not None:
            self._gate.forget_cancelled()
        for vdisk, sub_queue in list(self._sub_queues.items()):
            kept: deque[QueuedCommand] = deque()
            for command in sub_queue:
                if command.cancelled:
                    self._stop_waiting(command)
                else:
                    kept.append(command)
            if kept:
                self._sub_queues[vdisk] = kept
            else:
                del self._sub_queues[vdisk]
                self._round_robin.remove(vdisk)

    def _stop_waiting(self, command: QueuedCommand) -> None:
        self.waiting -= 1
        tenant = command.tenant
        if tenant is not None:
            tenant.session.waiting -= 1
            tenant.vdisk.waiting -= 1

    def _take_runnable(self, sub_queue: deque[QueuedCommand]) -> QueuedCommand | None:
        """Remove and return the first command of a vDisk that may run now (or that was
        cancelled: the caller skips it); None if none fits yet."""
        for index, command in enumerate(sub_queue):
            if command.cancelled or self._fits(command.buffer_bytes, command.tenant):
                del sub_queue[index]
                self._stop_waiting(command)
                return command
        return None

    def _dispatch_waiting(self) -> None:
        self._dispatching = True
        round_robin = self._round_robin
        try:
            misses = 0  # vDisks in a row with nothing that fits yet: a full turn ends it
            while self.in_flight < self.depth and misses < len(round_robin):
                vdisk = round_robin[0]
                sub_queue = self._sub_queues[vdisk]
                command = self._take_runnable(sub_queue)
                round_robin.rotate(-1)  # to the back of the line: round-robin
                if not sub_queue:
                    del self._sub_queues[vdisk]
                    round_robin.pop()
                if command is None:
                    misses += 1
                    continue
                misses = 0
                if command.cancelled:
                    continue
                self._charge(command.buffer_bytes, command.tenant)
                command.dispatch()
            self._may_overtake = bool(round_robin) and self.in_flight < self.depth
        finally:
            self._dispatching = False

    def waiting_for(self, vdisk: str) -> int:
        sub_queue = self._sub_queues.get(vdisk)
        return len(sub_queue) if sub_queue else 0


def _share_fits(share: Share, limits: ShareLimits, buffer_bytes: int) -> bool:
    return share.slots < limits.slots and (
        buffer_bytes == 0 or _bytes_fit(share, limits, buffer_bytes)
    )


def _bytes_fit(share: Share, limits: ShareLimits, buffer_bytes: int) -> bool:
    # A share holding no bytes takes any one write (as the queue does): no deadlock.
    return share.buffered_bytes == 0 or share.buffered_bytes + buffer_bytes <= limits.buffered_bytes
