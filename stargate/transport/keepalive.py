"""Liveness: NOP-Out echoes, NOP-In pings of an idle initiator, and the watchdog that drops
a connection whose PDU or Data-Out stays overdue (error recovery level 0)."""

from __future__ import annotations

import logging

import trio

from iscsicore.fullfeature.exchanges import nop_in_reply
from iscsicore.pdu import RESERVED_TAG, NopIn, NopOut
from stargate.tasks import TaskPhase
from stargate.transport.commands import Commands

log = logging.getLogger(__name__)


class Keepalive(Commands):
    def _on_nop_out(self, pdu: NopOut) -> None:
        """Echo a NOP-Out that asks for an answer (`dispatch` passes no ping answers)."""
        exp_cmd_sn, max_cmd_sn = self._window()
        self._append(
            nop_in_reply(
                pdu,
                stat_sn=self._stat_sn.take(),
                exp_cmd_sn=exp_cmd_sn,
                max_cmd_sn=max_cmd_sn,
                max_data=self._max_send_segment,
            )
        )

    async def _keepalive(self) -> None:
        """Ping an idle initiator; drop the connection when it stays silent."""
        with trio.CancelScope() as self._keepalive_scope:
            await self._keepalive_loop()

    async def _keepalive_loop(self) -> None:
        interval = self.timers.nop_interval
        while True:
            await trio.sleep(interval)
            if self._pending_logout_deadline is not None and (
                trio.current_time() >= self._pending_logout_deadline
            ):
                self.close("the initiator did not log out when asked to")
                return
            if trio.current_time() - self._last_receive < interval:
                continue
            pinged_at = trio.current_time()
            exp_cmd_sn, max_cmd_sn = self._window()
            self._append(
                NopIn(
                    lun=0,
                    itt=RESERVED_TAG,
                    ttt=self._new_ttt(),
                    stat_sn=self._stat_sn.next,
                    exp_cmd_sn=exp_cmd_sn,
                    max_cmd_sn=max_cmd_sn,
                )
            )
            await self._flush()
            deadline = pinged_at + self.timers.nop_timeout
            while self._last_receive < pinged_at:
                now = trio.current_time()
                if now >= deadline:
                    self.close("no answer to NOP-In: connection presumed dead")
                    return
                await trio.sleep(min(0.5, deadline - now))

    async def _watchdog(self) -> None:
        """Drop the connection when a PDU stays incomplete, or a command holding a slot
        gets no Data-Out, past its deadline (`ConnectionTimers`): at ErrorRecoveryLevel 0
        that is the answer, and it gives back the slots and buffers the peer held."""
        timers = self.timers
        with trio.CancelScope() as self._watchdog_scope:
            while True:
                await trio.sleep(timers.watchdog_tick)
                now = trio.current_time()
                partial_since = self._partial_since
                if partial_since is not None and now - partial_since > timers.pdu_timeout:
                    self._drop_overdue(
                        f"a PDU stayed incomplete for {timers.pdu_timeout:g} s "
                        f"({self.framer.buffered} bytes)"
                    )
                    return
                for task in self._tasks.values():
                    if (
                        task.has_slot
                        and task.phase is TaskPhase.RECEIVING
                        # data asked for (R2Ts withheld by a fault are our own doing)
                        and (task.r2ts or task.unsolicited is not None)
                        and now - task.data_since > timers.data_out_timeout
                    ):
                        self._drop_overdue(
                            f"no Data-Out for ITT {task.itt:#x} within "
                            f"{timers.data_out_timeout:g} s ({task.received} of "
                            f"{task.needed} bytes)"
                        )
                        return

    def _drop_overdue(self, reason: str) -> None:
        log.warning("dropping a connection of %s: %s", self.session.initiator_name, reason)
        self.close(reason)
