"""Typed errors of the initiator: what a caller can catch and what the CLI prints.

Transport trouble that the session recovers from (a dropped connection, a logout request)
never reaches the caller; only what survives recovery does.
"""

from __future__ import annotations

from iscsicore.pdu import LoginStatus
from iscsicore.scsi.opcodes import ScsiStatus
from iscsicore.scsi.sense import SenseData, SenseKey


class InitiatorError(Exception):
    """Base of every error the initiator library raises on purpose."""


class UrlError(InitiatorError, ValueError):
    """A malformed iscsi:// URL or portal address."""


class ConnectError(InitiatorError):
    """TCP connection to a portal failed or timed out."""


class LoginError(InitiatorError):
    """The target refused the login (status class 2 or 3) or the login exchange broke."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def status_name(self) -> str:
        if self.status is None:
            return "no status"
        try:
            return LoginStatus(self.status).name
        except ValueError:
            return f"{self.status:#06x}"


class AuthenticationError(LoginError):
    """CHAP failed in either direction (wrong secret, or the target failed mutual CHAP)."""


class RedirectError(LoginError):
    """Too many redirect hops, a redirect loop, or an unusable TargetAddress."""


class TargetProtocolError(InitiatorError):
    """The target sent something RFC 7143 does not allow (a malformed or unexpected PDU)."""


class ConnectionLost(InitiatorError):
    """The connection broke. Internal: the session reconnects and retries."""


class TargetUnreachable(InitiatorError):
    """The target stayed unreachable past the replacement timeout; commands fail."""


class SessionClosed(InitiatorError):
    """The session was closed by its owner while a command waited."""


class CommandRetriesExhausted(InitiatorError):
    """A command was re-issued after reconnects more times than allowed."""


class TaskAborted(InitiatorError):
    """The command was aborted by task management (ABORT TASK, LUN RESET) or the target."""


class ScsiError(InitiatorError):
    """A command completed with a status other than GOOD (and no sense to decode)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status

    @property
    def status_name(self) -> str:
        try:
            return ScsiStatus(self.status).name
        except ValueError:
            return f"{self.status:#04x}"


class CheckCondition(ScsiError):
    """CHECK CONDITION with decoded sense: key, ASC and ASCQ."""

    def __init__(self, sense: SenseData | None, raw_sense: bytes) -> None:
        self.sense = sense
        self.raw_sense = raw_sense
        super().__init__(self._describe(), ScsiStatus.CHECK_CONDITION)

    @property
    def sense_key(self) -> int:
        return int(self.sense.key) if self.sense else -1

    @property
    def asc(self) -> int:
        return self.sense.asc if self.sense else -1

    @property
    def ascq(self) -> int:
        return self.sense.ascq if self.sense else -1

    def _describe(self) -> str:
        if self.sense is None:
            return f"CHECK CONDITION with undecodable sense {self.raw_sense.hex()}"
        try:
            key_name = SenseKey(self.sense.key).name
        except ValueError:
            key_name = f"{int(self.sense.key):#x}"
        code = self.sense.code
        code_name = code.name if code is not None else "unnamed"
        return (
            f"CHECK CONDITION: {key_name}, ASC/ASCQ {self.sense.asc:#04x}/"
            f"{self.sense.ascq:#04x} ({code_name})"
        )


class TaskManagementError(InitiatorError):
    """A task management function was answered with a response other than COMPLETE."""

    def __init__(self, message: str, response: int) -> None:
        super().__init__(message)
        self.response = response
