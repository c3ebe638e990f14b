"""A one-waiter completion slot: what a command's caller waits on until its status comes.

``trio.Event`` keeps a set of waiting tasks and is created anew for every command; a
command has exactly one waiter, so this slot holds that task and reschedules it directly.
It is reusable (`reset`) across the re-issues of one command.
"""

from __future__ import annotations

import trio


class Completion:
    __slots__ = ("_done", "_waiter")

    def __init__(self) -> None:
        self._done = False
        self._waiter: trio.lowlevel.Task | None = None

    def is_set(self) -> bool:
        return self._done

    def set(self) -> None:
        if self._done:
            return
        self._done = True
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            trio.lowlevel.reschedule(waiter)

    def reset(self) -> None:
        self._done = False

    async def wait(self) -> None:
        """Until `set`; a checkpoint (cancellable) either way. One waiter at a time."""
        if self._done:
            await trio.lowlevel.checkpoint()
            return
        if self._waiter is not None:
            raise RuntimeError("a Completion has one waiter at a time")
        self._waiter = trio.lowlevel.current_task()

        def abort(_raise_cancel: object) -> trio.lowlevel.Abort:
            self._waiter = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
