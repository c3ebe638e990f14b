"""The one native-SCSI command queue shared by every connection of a stargate.

A command holds one of ``depth`` slots from its arrival until its status is queued for
sending: while it waits for Data-Out, while it runs, and while its fdatasync runs. When a
slot is free and nobody waits, admission is a counter increment and the caller runs the
command inline: no task switch, no allocation. Only when the queue is full do commands wait,
in per-vDisk FIFO sub-queues served round-robin, so one busy vDisk cannot starve another. The
waiting room is bounded too; beyond it the answer is TASK SET FULL.

The queue also computes each session's share of the free slots, from which the session
advertises MaxCmdSN, and tells sessions whose window it closed when slots free up again.
"""

from __future__ import annotations

from collections import deque
from enum import Enum
from typing import Protocol

DEFAULT_MAX_BUFFERED_BYTES = 256 * 1024 * 1024


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

    def dispatch(self) -> None:
        """Called with a slot held for it; it must eventually `release()` that slot."""


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
    ) -> None:
        if depth < 1:
            raise ValueError("queue depth must be at least 1")
        self.depth = depth
        self.max_waiting = depth if max_waiting is None else max_waiting
        # Write buffers of running commands, all connections together: a slot is not
        # enough to run a write whose buffer would take the total past this.
        self.max_buffered_bytes = max_buffered_bytes
        self.buffered_bytes = 0
        self.in_flight = 0
        self.waiting = 0
        self.task_set_full_count = 0
        self._sub_queues: dict[str, deque[QueuedCommand]] = {}
        self._round_robin: deque[str] = deque()  # vDisks with waiting commands, next first
        self._dispatching = False
        self.sessions = 0  # sessions sharing the slots (read on every response)
        self._closed_windows: dict[int, WindowListener] = {}
        self._admit_now_allowed = (
            type(self).admit is CommandQueue.admit
            or type(self).admit_now is not CommandQueue.admit_now
        )

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

    # -- admission --------------------------------------------------------------------

    def _fits(self, buffer_bytes: int) -> bool:
        # An idle queue takes any one command, however large: no deadlock on a huge write.
        return (
            buffer_bytes == 0
            or self.buffered_bytes == 0
            or self.buffered_bytes + buffer_bytes <= self.max_buffered_bytes
        )

    def admit(self, vdisk: str, command: QueuedCommand) -> Admission:
        if self._take_free_slot(command.buffer_bytes):
            return Admission.RUN
        if self.waiting < self.max_waiting:
            sub_queue = self._sub_queues.get(vdisk)
            if sub_queue is None:
                sub_queue = self._sub_queues[vdisk] = deque()
                self._round_robin.append(vdisk)
            sub_queue.append(command)
            self.waiting += 1
            return Admission.QUEUED
        self.task_set_full_count += 1
        return Admission.FULL

    def admit_now(self, vdisk: str, buffer_bytes: int = 0) -> bool:
        """A slot for a command of ``vdisk`` that will run to completion right now and never
        wait: True (the slot is held, `release()` it) when `admit` would say RUN; False:
        call `admit`. The inline path, without a queued-command object.

        A subclass that decides admission itself (overrides `admit`) gets False here unless
        it overrides this too, applying its own rules before `_take_free_slot`.
        """
        return self._admit_now_allowed and self._take_free_slot(buffer_bytes)

    def _take_free_slot(self, buffer_bytes: int) -> bool:
        if self.in_flight < self.depth and self.waiting == 0 and self._fits(buffer_bytes):
            self.in_flight += 1
            self.buffered_bytes += buffer_bytes
            return True
        return False

    def release(self, buffer_bytes: int = 0) -> None:
        """Give back a slot (and the command's buffer bytes); hand free slots to waiting
        commands, fairly across vDisks."""
        self.in_flight -= 1
        self.buffered_bytes -= buffer_bytes
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
        """Drop cancelled commands from the waiting room (after an abort)."""
        for vdisk, sub_queue in list(self._sub_queues.items()):
            kept = deque(command for command in sub_queue if not command.cancelled)
            self.waiting -= len(sub_queue) - len(kept)
            if kept:
                self._sub_queues[vdisk] = kept
            else:
                del self._sub_queues[vdisk]
                self._round_robin.remove(vdisk)

    def _dispatch_waiting(self) -> None:
        self._dispatching = True
        try:
            while self.in_flight < self.depth and self._round_robin:
                vdisk = self._round_robin[0]
                sub_queue = self._sub_queues[vdisk]
                command = sub_queue[0]
                if not command.cancelled and not self._fits(command.buffer_bytes):
                    break  # wait for buffer bytes to come back (FIFO: no overtaking)
                sub_queue.popleft()
                self._round_robin.popleft()
                if sub_queue:
                    self._round_robin.append(vdisk)  # back of the line: round-robin
                else:
                    del self._sub_queues[vdisk]
                self.waiting -= 1
                if command.cancelled:
                    continue
                self.in_flight += 1
                self.buffered_bytes += command.buffer_bytes
                command.dispatch()
        finally:
            self._dispatching = False

    def waiting_for(self, vdisk: str) -> int:
        sub_queue = self._sub_queues.get(vdisk)
        return len(sub_queue) if sub_queue else 0
