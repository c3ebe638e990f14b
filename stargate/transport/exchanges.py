"""Text (SendTargets), Logout and SNACK: exchanges that carry no SCSI work."""

from __future__ import annotations

import dataclasses

from iscsicore.fullfeature.exchanges import logout_outcome, logout_response
from iscsicore.pdu import (
    LogoutRequest,
    LogoutResponseCode,
    RejectReason,
    SnackRequest,
    TextRequest,
)
from stargate.transport.keepalive import Keepalive
from stargate.transport.state import StopBatch


class Exchanges(Keepalive):
    def _on_text(self, pdu: TextRequest) -> None:
        if self.text_responder is None:
            self._reject(pdu, RejectReason.COMMAND_NOT_SUPPORTED)
            return
        answer = self.text_responder.respond(pdu)
        if isinstance(answer, RejectReason):
            self._reject(pdu, answer)
            return
        exp_cmd_sn, max_cmd_sn = self._window()
        self._append(
            dataclasses.replace(
                answer,
                stat_sn=self._stat_sn.take(),
                exp_cmd_sn=exp_cmd_sn,
                max_cmd_sn=max_cmd_sn,
            )
        )

    def _on_logout(self, pdu: LogoutRequest) -> None:
        response = logout_outcome(pdu, self.cid)
        if response is LogoutResponseCode.SUCCESS and self.routes is not None:
            # The I_T nexus ends here (one connection per session): its SPC-2 reservation
            # and the like must be gone before the initiator reads the response and sends
            # its next command on another session (libiscsi's Sanitize.Reset does). The
            # server's own call when the connection ends is then a no-op.
            for route in self.routes.routes:
                route.lu.nexus_lost(self.nexus)
        exp_cmd_sn, max_cmd_sn = self._window()
        self._append(
            logout_response(
                pdu,
                response,
                stat_sn=self._stat_sn.take(),
                exp_cmd_sn=exp_cmd_sn,
                max_cmd_sn=max_cmd_sn,
            )
        )
        if response is LogoutResponseCode.SUCCESS:
            self._closing_reason = "logged out"
            raise StopBatch

    def _on_snack(self, pdu: SnackRequest) -> None:
        # ErrorRecoveryLevel 0: there is nothing to retransmit from.
        self._reject(pdu, RejectReason.PROTOCOL_ERROR)
