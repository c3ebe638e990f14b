"""SendTargets (RFC 7143 appendix C): which targets an initiator may see, and where.

Answers Text Requests in discovery sessions (and SendTargets in normal sessions). Long
answers are split into data segments of the initiator's MaxRecvDataSegmentLength with the
C bit; the initiator fetches the rest with empty requests carrying our Target Transfer Tag.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from iscsicore.keys import TextAssembler, TextError, TextSplitter, decode_text, encode_text
from iscsicore.pdu import RESERVED_TAG, RejectReason, TextRequest, TextResponse
from stargate.target import TargetRegistry, VDiskTarget

_ALL = "All"


def send_targets_pairs(
    targets: Iterable[VDiskTarget], addresses: list[str]
) -> list[tuple[str, str]]:
    """TargetName / TargetAddress pairs, one group per target."""
    pairs: list[tuple[str, str]] = []
    for target in targets:
        pairs.append(("TargetName", target.name))
        pairs.extend(("TargetAddress", address) for address in addresses)
    return pairs


class SendTargetsResponder:
    """The text exchange of one connection (one per connection: it keeps continuation
    state)."""

    def __init__(
        self,
        registry: TargetRegistry,
        initiator_name: str,
        max_send_segment: int,
        *,
        current_target: str | None = None,
    ) -> None:
        self.registry = registry
        self.initiator_name = initiator_name
        self.current_target = current_target  # None in a discovery session
        self._splitter = TextSplitter(max(512, max_send_segment))
        self._assembler = TextAssembler()
        self._pending: list[bytes] = []
        self._pending_ttt = RESERVED_TAG
        self._ttts = itertools.count(1)

    def respond(self, request: TextRequest) -> TextResponse | RejectReason:
        if request.ttt != RESERVED_TAG:
            if request.ttt != self._pending_ttt or not self._pending:
                return RejectReason.INVALID_PDU_FIELD
            return self._next_chunk(request)
        self._pending = []
        try:
            text = self._assembler.feed(request.data, request.cont)
            if text is None:  # more of the request follows: acknowledge, ask for it
                return TextResponse(final=False, itt=request.itt, ttt=self._new_ttt())
            pairs = decode_text(text)
        except TextError:
            self._assembler.reset()
            return RejectReason.PROTOCOL_ERROR
        self._pending = self._splitter.split(encode_text(self._answer(pairs)))
        return self._next_chunk(request)

    def _answer(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        answer: list[tuple[str, str]] = []
        addresses = self.registry.portal_group.target_address_values()
        for key, value in pairs:
            if key != "SendTargets":
                answer.append((key, "NotUnderstood"))
                continue
            visible = self.registry.visible_to(self.initiator_name)
            if value == _ALL and self.current_target is None:
                chosen = visible
            elif value == "" and self.current_target is not None:
                chosen = [t for t in visible if t.name == self.current_target]
            else:
                chosen = [t for t in visible if t.name == value]
            answer += send_targets_pairs(chosen, addresses)
        return answer

    def _next_chunk(self, request: TextRequest) -> TextResponse:
        chunk = self._pending.pop(0) if self._pending else b""
        more = bool(self._pending)
        self._pending_ttt = self._new_ttt() if more else RESERVED_TAG
        return TextResponse(
            final=not more,
            cont=more,
            lun=request.lun,
            itt=request.itt,
            ttt=self._pending_ttt,
            data=chunk,
        )

    def _new_ttt(self) -> int:
        return next(self._ttts) & 0x7FFFFFFF or 1
