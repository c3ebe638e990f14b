"""Asynchronous messages the target sends on its own: logout requests and drops."""

from __future__ import annotations

import time

import trio

from iscsicore.pdu import AsyncEvent, AsyncMessage
from stargate.transport.outbox import Outbox


class AsyncEvents(Outbox):
    def send_async_event(
        self,
        event: AsyncEvent,
        *,
        parameter1: int = 0,
        parameter2: int = 0,
        parameter3: int = 0,
    ) -> None:
        exp_cmd_sn, max_cmd_sn = self._window()
        self._append(
            AsyncMessage(
                lun=0,
                stat_sn=self._stat_sn.take(),
                exp_cmd_sn=exp_cmd_sn,
                max_cmd_sn=max_cmd_sn,
                async_event=event,
                parameter1=parameter1,
                parameter2=parameter2,
                parameter3=parameter3,
            )
        )
        self._wake_writer()

    def request_logout(self, seconds: int) -> None:
        """AsyncEvent 1: ask the initiator to log out within ``seconds``; drop it if not."""
        self.send_async_event(AsyncEvent.LOGOUT_REQUEST, parameter3=seconds)
        self.logout_requested_at = time.time()
        self._pending_logout_deadline = trio.current_time() + seconds

    def drop(self, *, all_connections: bool, time2wait: int = 2, time2retain: int = 0) -> None:
        """AsyncEvent 2 (this connection) or 3 (the whole session), then close."""
        event = AsyncEvent.DROP_ALL_CONNECTIONS if all_connections else AsyncEvent.DROP_CONNECTION
        self.send_async_event(
            event,
            parameter1=self.cid if not all_connections else 0,
            parameter2=time2wait,
            parameter3=time2retain,
        )
        self._closing_reason = "dropped by the target"
        self._writer_wakeup.set()
