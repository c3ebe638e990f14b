"""Output: the one buffer responses are serialized into, its sending, and the sequence
numbers stamped on every response (StatSN, ExpCmdSN, MaxCmdSN)."""

from __future__ import annotations

import trio

from iscsicore import fastpath
from iscsicore.framing import append_pdu, append_segments
from iscsicore.pdu import NopIn, Pdu, Reject
from stargate.transport.state import ConnectionState, DigestTamper


class Outbox(ConnectionState):
    def _append(self, pdu: Pdu) -> None:
        """Serialize ``pdu`` into the output buffer (BHS, digests, data, padding)."""
        if self._digest_tamper is not None:
            self._append_tampered(fastpath.encode_bhs(pdu, 0), pdu.data)
            return
        append_pdu(self._out, pdu, self._header_digest, self._data_digest)

    def _append_bhs(self, bhs: bytes, data: bytes | bytearray | memoryview) -> None:
        """Serialize an encoded BHS (no AHS: the target sends none) and its data segment.
        The plain path calls `append_segments` itself (it never runs while a fault tampers
        with digests)."""
        if self._digest_tamper is not None:
            self._append_tampered(bhs, data)
            return
        append_segments(self._out, bhs, b"", data, self._header_digest, self._data_digest)

    def _append_tampered(self, bhs: bytes, data: bytes | bytearray | memoryview) -> None:
        """Serialize with one bit of the negotiated header or data digest flipped (a fault);
        only this PDU: the tamper is used up."""
        tamper, self._digest_tamper = self._digest_tamper, None
        out = self._out
        start = len(out)
        append_segments(out, bhs, b"", data, self._header_digest, self._data_digest)
        if tamper is DigestTamper.HEADER:
            if self._header_digest:
                out[start + len(bhs)] ^= 0x01
        elif self._data_digest and len(data):
            out[-4] ^= 0x01  # the data digest ends the PDU

    def _wake_writer(self) -> None:
        if not self._in_batch:
            self._writer_wakeup.set()

    async def _flush(self) -> None:
        """Send the output; if another task is sending, wait until it has sent everything
        (it drains whatever is appended meanwhile)."""
        while self._sending:
            if self._send_finished is None:
                self._send_finished = trio.Event()
            await self._send_finished.wait()
        self._sending = True
        try:
            while self._out:
                chunk = self._out
                self._out = bytearray()
                self._unsent = len(chunk)
                await self._io.send_all(chunk)
        finally:
            self._sending = False
            self._unsent = 0
            if self._send_finished is not None:
                self._send_finished.set()
                self._send_finished = None

    @property
    def buffered_output(self) -> int:
        """Response bytes held in memory: queued, or handed to a send not yet finished."""
        return len(self._out) + self._unsent

    async def _writer(self) -> None:
        while True:
            await self._writer_wakeup.wait()
            self._writer_wakeup = trio.Event()
            await self._flush()
            if self._closing_reason is not None:
                self.close(self._closing_reason)
                return

    def _window(self) -> tuple[int, int]:
        """(ExpCmdSN, MaxCmdSN) to put in the next PDU."""
        window = self._cmd_sn_window
        if self._frozen_max_cmd_sn is not None:
            return window.exp_cmd_sn, self._frozen_max_cmd_sn  # a fault: MaxCmdSN held
        queue = self.queue
        if queue.waiting == 0 and queue.in_flight < queue.depth // 2:
            # Plenty of room: the share formula without the calls (hot path).
            sessions = queue.sessions
            share = (queue.depth - queue.in_flight) // (sessions if sessions > 1 else 1) or 1
        else:
            share = queue.window_share(self)
        return window.exp_cmd_sn, window.advertise(share)

    def window_opened(self) -> None:
        """Queue slots are free again: tell the initiator with a NOP-In (no reply wanted)."""
        exp_cmd_sn, max_cmd_sn = self._window()
        self._append(
            NopIn(stat_sn=self._stat_sn.next, exp_cmd_sn=exp_cmd_sn, max_cmd_sn=max_cmd_sn)
        )
        self._wake_writer()

    def _queue_reject(self, header: bytes, reason: int) -> None:
        exp_cmd_sn, max_cmd_sn = self._window()
        self._append(
            Reject(
                reason=reason,
                stat_sn=self._stat_sn.take(),
                exp_cmd_sn=exp_cmd_sn,
                max_cmd_sn=max_cmd_sn,
                data_sn_or_r2t_sn=0,
                data=header[:48],
            )
        )

    def _reject(self, pdu: Pdu, reason: int) -> None:
        self._queue_reject(fastpath.encode_bhs(pdu), reason)
