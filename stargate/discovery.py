"""SendTargets for stargate: which vDisk targets an initiator may see, and where.

The text exchange itself (C-bit continuation, TTTs, answers to other keys) is the shared
`iscsicore.fullfeature.text.TextResponder`; this module decides the target list: only
targets whose ACL admits the initiator, each at the portal group's advertised addresses
(the cluster sets an advertised address per stargate).
"""

from __future__ import annotations

from iscsicore.fullfeature.text import TargetRecord, TextResponder
from iscsicore.keys import SessionType, TextError
from iscsicore.pdu import RejectReason, TextRequest, TextResponse
from stargate.target import TargetRegistry


class SendTargetsResponder:
    """Text Requests of one connection (it keeps the continuation state)."""

    def __init__(
        self,
        registry: TargetRegistry,
        initiator_name: str,
        max_send_segment: int,
        *,
        current_target: str | None = None,  # None in a discovery session
    ) -> None:
        self.registry = registry
        self.initiator_name = initiator_name
        self._responder = TextResponder(
            session_type=SessionType.DISCOVERY if current_target is None else SessionType.NORMAL,
            targets=self.visible_targets,
            max_send_length=max_send_segment,
            session_target=current_target,
        )

    def visible_targets(self) -> list[TargetRecord]:
        addresses = tuple(self.registry.portal_group.target_address_values())
        return [
            TargetRecord(target.name, addresses)
            for target in self.registry.visible_to(self.initiator_name)
        ]

    def respond(self, request: TextRequest) -> TextResponse | RejectReason:
        """The answer (sequence numbers are the connection's to fill in), or why to Reject."""
        try:
            return self._responder.receive(request, stat_sn=0, exp_cmd_sn=0, max_cmd_sn=0)
        except TextError:
            return RejectReason.PROTOCOL_ERROR
