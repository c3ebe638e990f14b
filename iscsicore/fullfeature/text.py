"""Text Request/Response exchanges in the full feature phase (RFC 7143 6.2, 11.10, 11.11
and appendix C), sans-IO: SendTargets discovery on both sides, C-bit continuation with a
Target Transfer Tag, and plain answers to every other key (no renegotiation).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from iscsicore.keys import (
    KEY_TABLE,
    NOT_UNDERSTOOD,
    REJECT,
    MalformedText,
    NegotiationError,
    SessionType,
    TextAssembler,
    TextError,
    TextSplitter,
    decode_text,
    encode_text,
    parse_target_address,
)
from iscsicore.pdu import RESERVED_TAG, TextRequest, TextResponse
from iscsicore.portal import Portal

SEND_TARGETS = "SendTargets"
ALL = "All"


class DiscoveredTarget(NamedTuple):
    """One target of a SendTargets answer; unpacks as ``(name, addresses)``."""

    name: str
    addresses: list[Portal]


@dataclass(frozen=True, slots=True)
class TargetRecord:
    """A target the responder may announce; ``addresses`` as sent, ``host:port,tpgt``."""

    name: str
    addresses: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------
# SendTargets answers


def send_targets_pairs(targets: Iterable[TargetRecord]) -> list[tuple[str, str]]:
    """TargetName, then its TargetAddress lines, for each target (RFC 7143 appendix C)."""
    pairs: list[tuple[str, str]] = []
    for target in targets:
        pairs.append(("TargetName", target.name))
        pairs.extend(("TargetAddress", address) for address in target.addresses)
    return pairs


def parse_send_targets(pairs: Sequence[tuple[str, str]]) -> list[DiscoveredTarget]:
    """Group a SendTargets answer into targets. Other keys are ignored; a TargetAddress
    before any TargetName or a malformed address raises MalformedText."""
    targets: list[DiscoveredTarget] = []
    for key, value in pairs:
        if key == "TargetName":
            targets.append(DiscoveredTarget(value, []))
        elif key == "TargetAddress":
            if not targets:
                raise MalformedText("TargetAddress before any TargetName")
            targets[-1].addresses.append(parse_target_address(value))
    return targets


# ---------------------------------------------------------------------------------------
# Initiator side


@dataclass(frozen=True, slots=True)
class TextReply:
    """The complete answer of a text exchange."""

    pairs: list[tuple[str, str]]

    def send_targets(self) -> list[DiscoveredTarget]:
        return parse_send_targets(self.pairs)


class TextExchange:
    """One text exchange from the initiator's side.

    ``start()`` gives the first Text Request; feed each Text Response to ``receive()``,
    which returns the next request to send (continuations) or the TextReply. CmdSN and
    ExpStatSN are the caller's counters, passed in for every request it sends.
    Garbage from the target raises a TextError subclass.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[str, str]],
        itt: int,
        *,
        max_send_length: int = 8192,
        immediate: bool = False,
    ):
        self.itt = itt
        self.immediate = immediate
        self._chunks = TextSplitter(max_send_length).split(encode_text(pairs))
        self._assembler = TextAssembler()
        self.reply: TextReply | None = None

    @classmethod
    def send_targets(
        cls, itt: int, target: str = ALL, *, max_send_length: int = 8192
    ) -> TextExchange:
        """``SendTargets=All`` (discovery) or ``SendTargets=<iqn>``; empty for the
        session's own target in a Normal session."""
        return cls([(SEND_TARGETS, target)], itt, max_send_length=max_send_length)

    def start(self, cmd_sn: int, exp_stat_sn: int) -> TextRequest:
        return self._next_request(RESERVED_TAG, cmd_sn, exp_stat_sn)

    def receive(self, resp: TextResponse, cmd_sn: int, exp_stat_sn: int) -> TextRequest | TextReply:
        if resp.itt != self.itt:
            raise NegotiationError(f"Text Response for ITT {resp.itt:#x}, not ours")
        if self.reply is not None:
            raise NegotiationError("Text Response after the exchange ended")
        if resp.cont and resp.final:
            raise NegotiationError("Text Response with both C and F")
        if self._chunks:  # our request continues: the target acknowledged a chunk
            if resp.data or resp.final or resp.ttt == RESERVED_TAG:
                raise NegotiationError("target answered before our text was complete")
            return self._next_request(resp.ttt, cmd_sn, exp_stat_sn)
        text = self._assembler.feed(resp.data, resp.cont)
        if text is not None and resp.final:
            self.reply = TextReply(decode_text(text, terminated=False))
            return self.reply
        if resp.ttt == RESERVED_TAG:
            raise NegotiationError("Text Response continues without a Target Transfer Tag")
        if text is not None:
            # F=0, C=0: the target negotiates on; we have nothing to add, so ask for more.
            self._assembler.feed(text, True)
        return self._request(b"", resp.ttt, cmd_sn, exp_stat_sn, cont=False)

    def _next_request(self, ttt: int, cmd_sn: int, exp_stat_sn: int) -> TextRequest:
        chunk = self._chunks.pop(0)
        return self._request(chunk, ttt, cmd_sn, exp_stat_sn, cont=bool(self._chunks))

    def _request(
        self, data: bytes, ttt: int, cmd_sn: int, exp_stat_sn: int, *, cont: bool
    ) -> TextRequest:
        return TextRequest(
            immediate=self.immediate,
            final=not cont,
            cont=cont,
            itt=self.itt,
            ttt=ttt,
            cmd_sn=cmd_sn,
            exp_stat_sn=exp_stat_sn,
            data=data,
        )


# ---------------------------------------------------------------------------------------
# Target side


class TextResponder:
    """The target's side of text exchanges on one connection.

    ``targets`` lists what SendTargets may announce (called per request, so it can follow
    a changing cluster). ``max_send_length`` is the initiator's MaxRecvDataSegmentLength.
    A malformed or out-of-sequence request raises a TextError: answer it with a Reject.
    """

    def __init__(
        self,
        *,
        session_type: SessionType,
        targets: Callable[[], Sequence[TargetRecord]],
        max_send_length: int,
        session_target: str | None = None,
        first_ttt: int = 1,
    ):
        self.session_type = session_type
        self.session_target = session_target
        self.targets = targets
        self.max_send_length = max_send_length
        self._ttts = (tag for tag in itertools.count(first_ttt) if tag & 0xFFFFFFFF != RESERVED_TAG)
        self._assembler = TextAssembler()
        self._itt: int | None = None
        self._ttt = RESERVED_TAG
        self._chunks: list[bytes] = []

    def receive(
        self, req: TextRequest, *, stat_sn: int, exp_cmd_sn: int, max_cmd_sn: int
    ) -> TextResponse:
        """Answer one Text Request (StatSN and windows are the session's to give)."""
        counters = (stat_sn, exp_cmd_sn, max_cmd_sn)
        if req.cont and req.final:
            raise NegotiationError("Text Request with both C and F")
        if req.ttt == RESERVED_TAG:
            self._reset()  # a new exchange; any unfinished one is abandoned (RFC 7143 11.10.4)
            self._itt = req.itt
        elif req.itt != self._itt or req.ttt != self._ttt:
            raise NegotiationError(f"Text Request with unknown TTT {req.ttt:#x}")
        if self._chunks:
            if req.data:
                raise NegotiationError("text sent while our answer continues")
            return self._send_chunk(req.itt, counters)
        text = self._assembler.feed(req.data, req.cont)
        if text is None:  # the initiator continues: acknowledge and hand it a TTT
            self._ttt = self._new_ttt()
            return self._response(req.itt, b"", self._ttt, counters, final=False, cont=False)
        answer = encode_text(self._answer(decode_text(text)))
        self._chunks = TextSplitter(self.max_send_length).split(answer)
        return self._send_chunk(req.itt, counters)

    def _answer(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        replies: list[tuple[str, str]] = []
        seen: set[str] = set()
        for key, value in pairs:
            if key in seen:
                raise NegotiationError(f"{key} sent twice")
            seen.add(key)
            if key == SEND_TARGETS:
                replies += self._send_targets(value)
            elif key in KEY_TABLE:
                replies.append((key, REJECT))  # no renegotiation in the full feature phase
            else:
                replies.append((key, NOT_UNDERSTOOD))
        return replies

    def _send_targets(self, value: str) -> list[tuple[str, str]]:
        if self.session_type is SessionType.DISCOVERY:
            if value == ALL:
                return send_targets_pairs(self.targets())
            if not value:
                return [(SEND_TARGETS, REJECT)]
            return send_targets_pairs(t for t in self.targets() if t.name == value)
        # A Normal session may ask only about its own target (RFC 7143 appendix C).
        if value == ALL:
            return [(SEND_TARGETS, REJECT)]
        wanted = value or self.session_target
        if wanted != self.session_target:
            return []
        return send_targets_pairs(t for t in self.targets() if t.name == wanted)

    def _send_chunk(self, itt: int, counters: tuple[int, int, int]) -> TextResponse:
        chunk = self._chunks.pop(0)
        if self._chunks:
            self._ttt = self._new_ttt()
            return self._response(itt, chunk, self._ttt, counters, final=False, cont=True)
        self._reset()
        return self._response(itt, chunk, RESERVED_TAG, counters, final=True, cont=False)

    def _new_ttt(self) -> int:
        return next(self._ttts) & 0xFFFFFFFF

    def _reset(self) -> None:
        self._assembler.reset()
        self._chunks = []
        self._itt = None
        self._ttt = RESERVED_TAG

    @staticmethod
    def _response(
        itt: int,
        data: bytes,
        ttt: int,
        counters: tuple[int, int, int],
        *,
        final: bool,
        cont: bool,
    ) -> TextResponse:
        stat_sn, exp_cmd_sn, max_cmd_sn = counters
        return TextResponse(
            final=final,
            cont=cont,
            itt=itt,
            ttt=ttt,
            stat_sn=stat_sn,
            exp_cmd_sn=exp_cmd_sn,
            max_cmd_sn=max_cmd_sn,
            data=data,
        )


__all__ = [
    "ALL",
    "SEND_TARGETS",
    "DiscoveredTarget",
    "TargetRecord",
    "TextError",
    "TextExchange",
    "TextReply",
    "TextResponder",
    "parse_send_targets",
    "send_targets_pairs",
]
