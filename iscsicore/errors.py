"""Typed protocol errors raised by the codec and the framer.

Each error carries the Reject reason a target would answer with and, when known, the
offending 48-byte header (a Reject PDU's data segment). ``fatal`` tells the connection
owner whether the byte stream can still be trusted: after a fatal error the connection
must be dropped (RFC 7143 section 7.8); after a non-fatal one framing continues.
"""

from __future__ import annotations

from .pdu import RejectReason


class IscsiProtocolError(Exception):
    """A peer sent something the protocol does not allow."""

    fatal: bool = True
    default_reason: RejectReason = RejectReason.PROTOCOL_ERROR

    def __init__(
        self,
        message: str,
        *,
        header: bytes | None = None,
        reject_reason: RejectReason | None = None,
    ) -> None:
        super().__init__(message)
        self.header = header
        self.reject_reason = reject_reason if reject_reason is not None else self.default_reason


class HeaderDigestError(IscsiProtocolError):
    """The header digest did not match: the lengths in the header cannot be trusted."""


class DataDigestError(IscsiProtocolError):
    """The data digest did not match. The PDU was consumed; answer Reject 0x02."""

    fatal = False
    default_reason = RejectReason.DATA_DIGEST_ERROR


class DataSegmentTooLong(IscsiProtocolError):
    """DataSegmentLength exceeds the MaxRecvDataSegmentLength this side declared."""


class UnknownOpcode(IscsiProtocolError):
    """A reserved or unknown opcode."""

    default_reason = RejectReason.COMMAND_NOT_SUPPORTED


class WrongDirection(UnknownOpcode):
    """A target opcode sent to a target, or an initiator opcode sent to an initiator."""

    default_reason = RejectReason.PROTOCOL_ERROR


class TruncatedAhs(IscsiProtocolError):
    """The AHS lengths are inconsistent with TotalAHSLength."""

    default_reason = RejectReason.INVALID_PDU_FIELD


class MalformedPdu(IscsiProtocolError):
    """A defined field holds a reserved or contradictory value."""


class PduEncodeError(ValueError):
    """A PDU dataclass holds a value its wire field cannot carry (a local bug, not a peer's)."""
