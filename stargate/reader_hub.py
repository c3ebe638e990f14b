"""One reader for every connection of a server.

A trio task waiting on its own socket pays, per wait, a trip through the scheduler and an
``epoll_ctl`` (trio registers each wait one-shot). At a high queue depth that is shared by
many commands; with many connections at queue depth 1 it is paid by every command (64
connections at QD 1 cost ~40 µs of target CPU per I/O against ~12 for one connection at
QD 64). Here a connection with nothing to do *parks* with the hub: its socket is
registered, once, in one level-triggered epoll; one task waits on that epoll's descriptor
and, when it wakes, serves every ready connection in one pass, synchronously, each for one
turn (the connection's own turn budget), then yields to the rest of the server.

A connection returns to its own task only when it has to wait for something other than
input: output the socket would not take, a close, a fault that replaced its channel. The
hub knows nothing of iSCSI: a client is anything with a descriptor and a `serve_turn`.

After a pass, the hub polls the epoll for up to ``spin_seconds`` before it sleeps: at low
queue depth the next command follows each response within tens of µs, sooner than a sleep
and a wake-up would take. One reader spinning for all connections is fair to all of them
(a connection spinning on its own socket would make the others wait).
"""

from __future__ import annotations

import contextlib
import enum
import select
import time
from dataclasses import dataclass
from typing import Protocol

import outcome
import trio

# How long the hub polls for the next command before it sleeps, by default
# (`stargate target --busy-poll-us`).
DEFAULT_BUSY_POLL_SECONDS = 50e-6


class Turn(enum.Enum):
    """What a client's turn left to do."""

    IDLE = enum.auto()  # all input handled: wait for more
    MORE = enum.auto()  # its budget ran out with input still buffered: serve it next pass
    TASK = enum.auto()  # it needs its own task (output to wait for, a close, a new channel)
    EOF = enum.auto()  # the peer closed


class HubClient(Protocol):
    def fileno(self) -> int: ...

    def serve_turn(self, receive: bool) -> Turn:
        """Handle input: receive first (``receive``: the socket is readable), else only
        what is buffered. Must not block; may raise (the client's task gets the error)."""
        ...


@dataclass(slots=True)
class _Parked:
    client: HubClient
    task: trio.lowlevel.Task


class ReaderHub:
    """``await nursery.start(hub.run)``; then connections ``await hub.park(client)`` when
    they have nothing to do."""

    def __init__(self, spin_seconds: float = 0.0) -> None:
        self._epoll: select.epoll | None = None  # while `run` runs
        self._parked: dict[int, _Parked] = {}
        # Clients whose turn ended with input buffered, in the order they are to be served.
        self._backlog: dict[int, None] = {}
        self._spin_seconds = spin_seconds
        # Statistics: passes over ready clients, and input the spin caught before a sleep.
        self.passes = 0
        self.spin_hits = 0

    @property
    def spin_seconds(self) -> float:
        return self._spin_seconds

    @spin_seconds.setter
    def spin_seconds(self, seconds: float) -> None:
        self._spin_seconds = seconds  # read at each pass: a live change

    @property
    def parked(self) -> int:
        return len(self._parked)

    @property
    def running(self) -> bool:
        return self._epoll is not None

    async def park(self, client: HubClient) -> Turn:
        """Hand the connection's input to the hub until its task is needed again: returns
        `Turn.TASK` or `Turn.EOF`, or raises what the client's `serve_turn` raised."""
        epoll = self._epoll
        if epoll is None:
            raise trio.ClosedResourceError("the reader hub is not running")
        fd = client.fileno()
        self._parked[fd] = _Parked(client, trio.lowlevel.current_task())
        try:
            epoll.register(fd, select.EPOLLIN)
        except OSError:
            del self._parked[fd]
            raise

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            self._forget(fd)
            return trio.lowlevel.Abort.SUCCEEDED

        turn: Turn = await trio.lowlevel.wait_task_rescheduled(abort)
        return turn

    def _forget(self, fd: int) -> None:
        del self._parked[fd]
        self._backlog.pop(fd, None)
        if self._epoll is not None:
            with contextlib.suppress(OSError):  # closed meanwhile: the kernel dropped it
                self._epoll.unregister(fd)

    def _release(self, fd: int, parked: _Parked, result: outcome.Outcome[Turn]) -> None:
        if self._parked.get(fd) is not parked:
            return  # cancelled during its own turn: its task has already been told
        self._forget(fd)
        trio.lowlevel.reschedule(parked.task, result)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve parked clients until cancelled (``await nursery.start(hub.run)``: clients
        may park once it has started)."""
        if self._epoll is not None:
            raise RuntimeError("this ReaderHub is already running")
        self._epoll = epoll = select.epoll()
        task_status.started()
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                while True:
                    ready = epoll.poll(0)
                    if not ready and not self._backlog:
                        ready = self._spin(epoll)
                        if not ready:
                            break
                    self._serve_pass(ready)
                    # The rest of the server (logins, timers, connections in their own
                    # task) runs between passes.
                    await trio.lowlevel.checkpoint()
        finally:
            for fd, parked in list(self._parked.items()):
                self._release(fd, parked, outcome.Error(trio.ClosedResourceError("hub stopped")))
            epoll.close()
            self._epoll = None

    def _spin(self, epoll: select.epoll) -> list[tuple[int, int]]:
        seconds = self._spin_seconds
        if not seconds or not self._parked:
            return []
        poll = epoll.poll
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            ready = poll(0)
            if ready:
                self.spin_hits += 1
                return ready
        return []

    def _serve_pass(self, ready: list[tuple[int, int]]) -> None:
        self.passes += 1
        backlog = self._backlog
        self._backlog = {}
        for fd, _events in ready:
            # A client with input left handles it before it receives more (its buffer must
            # not grow by a receive per turn); its socket stays ready meanwhile.
            backlogged = fd in backlog
            if backlogged:
                del backlog[fd]
            self._serve(fd, receive=not backlogged)
        for fd in backlog:
            self._serve(fd, receive=False)

    def _serve(self, fd: int, *, receive: bool) -> None:
        parked = self._parked.get(fd)
        if parked is None:
            return  # left during this pass (cancelled by another connection's turn)
        try:
            turn = parked.client.serve_turn(receive)
        except Exception as error:  # the connection's task deals with it, not the hub
            self._release(fd, parked, outcome.Error(error))
            return
        if turn is Turn.IDLE:
            return
        if turn is Turn.MORE:
            if self._parked.get(fd) is parked:
                self._backlog[fd] = None
            return
        self._release(fd, parked, outcome.Value(turn))
