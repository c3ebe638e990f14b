"""What the kit's listeners saw: every PDU each connection carried, with the time it came.

`RecordingStream` sits between a connection's socket and whoever serves it (the kit's
scripted login, then a stargate session) and decodes a copy of both directions with its
own framers. Those framers accept any segment length (an initiator that sends more than
the target declared must be seen doing it) and switch to the negotiated digests where the
login ends: the initiator's direction pauses after a Login Request that asks for the full
feature phase until the login loop says how the target answered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import trio

from iscsicore.errors import DataDigestError, IscsiProtocolError
from iscsicore.framing import PduFramer
from iscsicore.keys import TextError, decode_text
from iscsicore.pdu import LoginRequest, LoginResponse, LoginStage, Pdu

Direction = Literal["in", "out"]  # in: initiator -> target
# The taps decode whatever comes: far above any segment length a target may declare.
TAP_SEGMENT_LIMIT = 1 << 24
# Header fields worth showing as evidence, where a PDU has them.
_FIELDS = (
    "transit",
    "cont",
    "csg",
    "nsg",
    "isid",
    "tsih",
    "cid",
    "itt",
    "ttt",
    "cmd_sn",
    "exp_stat_sn",
    "stat_sn",
    "exp_cmd_sn",
    "max_cmd_sn",
    "data_sn",
    "buffer_offset",
    "final",
    "immediate",
    "expected_data_transfer_length",
    "async_event",
    "parameter1",
    "parameter2",
    "parameter3",
    "reason",
    "time2wait",
    "time2retain",
)


@dataclass(frozen=True, slots=True)
class Seen:
    """One PDU on one connection: ``at`` seconds since the test started."""

    at: float
    direction: Direction
    pdu: Pdu

    @property
    def name(self) -> str:
        return type(self.pdu).__name__

    @property
    def data_length(self) -> int:
        return len(self.pdu.data)

    @property
    def status(self) -> int:
        """A Login Response's status (class << 8 | detail); 0 for other PDUs."""
        pdu = self.pdu
        if isinstance(pdu, LoginResponse):
            return (pdu.status_class << 8) | pdu.status_detail
        return 0

    def text(self) -> list[tuple[str, str]]:
        """The key=value pairs of a login PDU's data ([] if not text or incomplete)."""
        if not isinstance(self.pdu, LoginRequest | LoginResponse) or self.pdu.cont:
            return []
        try:
            return decode_text(bytes(self.pdu.data), terminated=False)
        except TextError:
            return []

    def summary(self) -> dict[str, object]:
        fields: dict[str, object] = {"at": round(self.at, 4), "dir": self.direction}
        fields["pdu"] = self.name
        for name in _FIELDS:
            value = getattr(self.pdu, name, None)
            if value is not None:
                fields[name] = f"0x{value:012x}" if name == "isid" else value
        if isinstance(self.pdu, LoginResponse):
            fields["status"] = f"0x{self.status:04x}"
        fields["data_length"] = self.data_length
        if text := self.text():
            fields["text"] = [f"{key}={value}" for key, value in text]
        return fields


@dataclass
class ConnectionLog:
    """One TCP connection a kit listener accepted."""

    listener: str
    opened_at: float
    pdus: list[Seen] = field(default_factory=list)
    closed_at: float | None = None
    undecodable: str = ""  # why the tap stopped decoding, if it had to

    def received(self) -> list[Seen]:
        return [seen for seen in self.pdus if seen.direction == "in"]

    def sent(self) -> list[Seen]:
        return [seen for seen in self.pdus if seen.direction == "out"]

    def login_requests(self) -> list[LoginRequest]:
        return [seen.pdu for seen in self.pdus if isinstance(seen.pdu, LoginRequest)]

    def login_responses(self) -> list[LoginResponse]:
        return [seen.pdu for seen in self.pdus if isinstance(seen.pdu, LoginResponse)]

    @property
    def logged_in(self) -> bool:
        """The target's last login answer took the connection to the full feature phase."""
        return any(
            pdu.transit and pdu.nsg == LoginStage.FULL_FEATURE and pdu.status_class == 0
            for pdu in self.login_responses()
        )

    def full_feature(self) -> list[Seen]:
        """What the initiator sent after its login."""
        if not self.logged_in:
            return []
        return [seen for seen in self.received() if not isinstance(seen.pdu, LoginRequest)]

    def summary(self) -> dict[str, object]:
        return {
            "listener": self.listener,
            "opened_at": round(self.opened_at, 4),
            "closed_at": None if self.closed_at is None else round(self.closed_at, 4),
            "undecodable": self.undecodable or None,
            "pdus": [seen.summary() for seen in self.pdus],
        }


@dataclass
class Evidence:
    """Every connection of one conformance test, in the order they were accepted."""

    started: float
    connections: list[ConnectionLog] = field(default_factory=list)

    def now(self) -> float:
        return trio.current_time() - self.started

    def on(self, listener: str) -> list[ConnectionLog]:
        return [conn for conn in self.connections if conn.listener == listener]

    def open(self, listener: str) -> ConnectionLog:
        log = ConnectionLog(listener, self.now())
        self.connections.append(log)
        return log


class RecordingStream(trio.abc.Stream):
    """A connection's stream whose PDUs, both ways, are added to a `ConnectionLog`."""

    def __init__(self, inner: trio.abc.Stream, log: ConnectionLog, evidence: Evidence) -> None:
        self._inner = inner
        self.log = log
        self._evidence = evidence
        self._in = PduFramer(
            receiving_from="initiator", max_recv_data_segment_length=TAP_SEGMENT_LIMIT
        )
        self._out = PduFramer(
            receiving_from="target", max_recv_data_segment_length=TAP_SEGMENT_LIMIT
        )
        self._paused = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self._inner.receive_some(max_bytes)
        if not data:
            self.log.closed_at = self._evidence.now()
        elif not self.log.undecodable:
            self._in.feed(data)
            self._drain(self._in, "in")
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        # Stamped before they go: the initiator's reaction must never come out earlier.
        if not self.log.undecodable:
            self._out.feed(bytes(data))
            self._drain(self._out, "out")
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        if self.log.closed_at is None:
            self.log.closed_at = self._evidence.now()
        await self._inner.aclose()

    def login_answered(self, *, complete: bool, header_digest: bool, data_digest: bool) -> None:
        """The login loop sent its answer: decode on, with the session's digests once the
        login is complete (nothing of the initiator's needs decoding after a failure)."""
        if complete:
            for framer in (self._in, self._out):
                framer.header_digest = header_digest
                framer.data_digest = data_digest
        self._paused = False
        self._drain(self._in, "in")

    def _drain(self, framer: PduFramer, direction: Direction) -> None:
        while not (direction == "in" and self._paused) and not self.log.undecodable:
            try:
                pdu = framer.next_pdu()
            except DataDigestError as error:
                self.log.undecodable = f"data digest error: {error}"
                return
            except IscsiProtocolError as error:
                self.log.undecodable = f"{direction}: {error}"
                return
            if pdu is None:
                return
            self.log.pdus.append(Seen(self._evidence.now(), direction, pdu))
            if isinstance(pdu, LoginRequest) and pdu.transit and pdu.nsg == LoginStage.FULL_FEATURE:
                self._paused = True
