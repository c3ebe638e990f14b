"""iSCSI PDUs (RFC 7143 section 11): opcodes, enums and one dataclass per PDU.

The wire layout of every Basic Header Segment is declared once, with construct, in
``iscsicore.wire``; these dataclasses are the in-memory form that the codec produces and
consumes. Field names follow the RFC, in snake case. Sequence numbers and tags are plain
unsigned 32-bit ints; ``lun`` is the raw 8-byte LUN field as an unsigned 64-bit int (see
``lun_from_number`` / ``lun_number``); ``isid`` is the 6-byte ISID as a 48-bit int.

Every PDU carries ``ahs`` (additional header segments, decoded) and ``data`` (the data
segment without padding or digest).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

BHS_LENGTH = 48
RESERVED_TAG = 0xFFFFFFFF


class Opcode(IntEnum):
    # Initiator opcodes
    NOP_OUT = 0x00
    SCSI_COMMAND = 0x01
    TASK_MGMT_REQUEST = 0x02
    LOGIN_REQUEST = 0x03
    TEXT_REQUEST = 0x04
    DATA_OUT = 0x05
    LOGOUT_REQUEST = 0x06
    SNACK_REQUEST = 0x10
    # Target opcodes
    NOP_IN = 0x20
    SCSI_RESPONSE = 0x21
    TASK_MGMT_RESPONSE = 0x22
    LOGIN_RESPONSE = 0x23
    TEXT_RESPONSE = 0x24
    DATA_IN = 0x25
    LOGOUT_RESPONSE = 0x26
    R2T = 0x31
    ASYNC_MESSAGE = 0x32
    REJECT = 0x3F

    @property
    def from_initiator(self) -> bool:
        return self.value < 0x20


class TaskAttribute(IntEnum):
    UNTAGGED = 0
    SIMPLE = 1
    ORDERED = 2
    HEAD_OF_QUEUE = 3
    ACA = 4


class AhsType(IntEnum):
    EXTENDED_CDB = 1
    BIDI_READ_LENGTH = 2


class TmfFunction(IntEnum):
    """Function codes of the Task Management Function Request (RFC 7143 11.5.1)."""

    ABORT_TASK = 1
    ABORT_TASK_SET = 2
    CLEAR_ACA = 3
    CLEAR_TASK_SET = 4
    LOGICAL_UNIT_RESET = 5
    TARGET_WARM_RESET = 6
    TARGET_COLD_RESET = 7
    TASK_REASSIGN = 8


class TmfResponse(IntEnum):
    """Response codes of the Task Management Function Response (RFC 7143 11.6.1)."""

    COMPLETE = 0
    TASK_DOES_NOT_EXIST = 1
    LUN_DOES_NOT_EXIST = 2
    TASK_STILL_ALLEGIANT = 3
    REASSIGNMENT_NOT_SUPPORTED = 4
    NOT_SUPPORTED = 5
    AUTHORIZATION_FAILED = 6
    REJECTED = 255


class ScsiResponseCode(IntEnum):
    COMPLETED = 0x00
    TARGET_FAILURE = 0x01


class LoginStage(IntEnum):
    SECURITY = 0
    OPERATIONAL = 1
    FULL_FEATURE = 3


class LoginStatusClass(IntEnum):
    SUCCESS = 0x00
    REDIRECTION = 0x01
    INITIATOR_ERROR = 0x02
    TARGET_ERROR = 0x03


class LoginStatus(IntEnum):
    """Status class and detail as one 16-bit value, e.g. 0x0101 = moved temporarily."""

    SUCCESS = 0x0000
    TARGET_MOVED_TEMPORARILY = 0x0101
    TARGET_MOVED_PERMANENTLY = 0x0102
    INITIATOR_ERROR = 0x0200
    AUTHENTICATION_FAILURE = 0x0201
    AUTHORIZATION_FAILURE = 0x0202
    NOT_FOUND = 0x0203
    TARGET_REMOVED = 0x0204
    UNSUPPORTED_VERSION = 0x0205
    TOO_MANY_CONNECTIONS = 0x0206
    MISSING_PARAMETER = 0x0207
    CANT_INCLUDE_IN_SESSION = 0x0208
    SESSION_TYPE_NOT_SUPPORTED = 0x0209
    SESSION_DOES_NOT_EXIST = 0x020A
    INVALID_DURING_LOGIN = 0x020B
    TARGET_ERROR = 0x0300
    SERVICE_UNAVAILABLE = 0x0301
    OUT_OF_RESOURCES = 0x0302

    @property
    def status_class(self) -> int:
        return self.value >> 8

    @property
    def status_detail(self) -> int:
        return self.value & 0xFF


class LogoutReason(IntEnum):
    CLOSE_SESSION = 0
    CLOSE_CONNECTION = 1
    REMOVE_CONNECTION_FOR_RECOVERY = 2


class LogoutResponseCode(IntEnum):
    SUCCESS = 0
    CID_NOT_FOUND = 1
    RECOVERY_NOT_SUPPORTED = 2
    CLEANUP_FAILED = 3


class AsyncEvent(IntEnum):
    SCSI_ASYNC_EVENT = 0
    LOGOUT_REQUEST = 1
    DROP_CONNECTION = 2
    DROP_ALL_CONNECTIONS = 3
    NEGOTIATION_REQUEST = 4
    TASK_TERMINATION = 5
    VENDOR_SPECIFIC = 255


class RejectReason(IntEnum):
    DATA_DIGEST_ERROR = 0x02
    SNACK_REJECT = 0x03
    PROTOCOL_ERROR = 0x04
    COMMAND_NOT_SUPPORTED = 0x05
    IMMEDIATE_COMMAND_REJECT = 0x06
    TASK_IN_PROGRESS = 0x07
    INVALID_DATA_ACK = 0x08
    INVALID_PDU_FIELD = 0x09
    LONG_OPERATION_REJECT = 0x0A
    DEPRECATED_NEGOTIATION_RESET = 0x0B
    WAITING_FOR_LOGOUT = 0x0C


class SnackType(IntEnum):
    DATA_R2T = 0
    STATUS = 1
    DATA_ACK = 2
    R_DATA = 3


def lun_from_number(number: int) -> int:
    """The raw 8-byte LUN field for a LUN number (SAM peripheral/flat addressing)."""
    if number < 256:
        return number << 48
    if number < 0x4000:
        return (0x4000 | number) << 48
    raise ValueError(f"LUN {number} needs an addressing method not supported here")


def lun_number(raw: int) -> int:
    """The LUN number in a raw 8-byte LUN field (peripheral or flat addressing)."""
    return (raw >> 48) & 0x3FFF


MAX_LUN = 0x3FFF


def encode_lun(number: int) -> int:
    """The raw 8-byte LUN field of ``number`` (SAM-5 4.7): peripheral device addressing
    below 256, flat space addressing up to 16383 (as Linux and libiscsi send them)."""
    if not 0 <= number <= MAX_LUN:
        raise ValueError(f"LUN {number} is out of range 0..{MAX_LUN}")
    return (number if number < 256 else 0x4000 | number) << 48


@dataclass(slots=True, frozen=True)
class Ahs:
    """One additional header segment: its type and the bytes that follow the type byte
    (the type-specific byte included), ``AHSLength`` long, without padding."""

    ahs_type: int
    payload: bytes


@dataclass(slots=True)
class Pdu:
    """Fields every PDU has besides its opcode-specific ones.

    Not frozen: a frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``, about 6x the cost of a plain one (a 12-field PDU: ~1.3 µs
    against ~0.2 µs), paid for every PDU decoded on the hot path; and the decoders set
    ``ahs`` after construction (see `fastpath`). Code that builds a PDU to send builds it
    whole and does not change it after (`dataclasses.replace` for a variant).
    """

    ahs: list[Ahs] = field(default_factory=list, kw_only=True)
    data: bytes | bytearray | memoryview = field(default=b"", kw_only=True)

    OPCODE = Opcode.NOP_OUT  # overridden by each subclass

    @property
    def opcode(self) -> Opcode:
        return self.OPCODE


# ---------------------------------------------------------------------------------------
# Initiator PDUs


@dataclass(slots=True)
class NopOut(Pdu):
    OPCODE = Opcode.NOP_OUT
    immediate: bool = False
    lun: int = 0
    itt: int = RESERVED_TAG
    ttt: int = RESERVED_TAG
    cmd_sn: int = 0
    exp_stat_sn: int = 0


@dataclass(slots=True)
class ScsiCommand(Pdu):
    OPCODE = Opcode.SCSI_COMMAND
    immediate: bool = False
    final: bool = True
    read: bool = False
    write: bool = False
    attr: int = TaskAttribute.SIMPLE
    lun: int = 0
    itt: int = 0
    expected_data_transfer_length: int = 0
    cmd_sn: int = 0
    exp_stat_sn: int = 0
    cdb: bytes = bytes(16)  # the 16 CDB bytes of the BHS; longer CDBs continue in an AHS


@dataclass(slots=True)
class TaskMgmtRequest(Pdu):
    OPCODE = Opcode.TASK_MGMT_REQUEST
    immediate: bool = True
    function: int = TmfFunction.ABORT_TASK
    lun: int = 0
    itt: int = 0
    referenced_task_tag: int = RESERVED_TAG
    cmd_sn: int = 0
    exp_stat_sn: int = 0
    ref_cmd_sn: int = 0
    exp_data_sn: int = 0


@dataclass(slots=True)
class LoginRequest(Pdu):
    OPCODE = Opcode.LOGIN_REQUEST
    transit: bool = False
    cont: bool = False
    csg: int = LoginStage.SECURITY
    nsg: int = LoginStage.SECURITY
    version_max: int = 0
    version_min: int = 0
    isid: int = 0
    tsih: int = 0
    itt: int = 0
    cid: int = 0
    cmd_sn: int = 0
    exp_stat_sn: int = 0


@dataclass(slots=True)
class TextRequest(Pdu):
    OPCODE = Opcode.TEXT_REQUEST
    immediate: bool = False
    final: bool = True
    cont: bool = False
    lun: int = 0
    itt: int = 0
    ttt: int = RESERVED_TAG
    cmd_sn: int = 0
    exp_stat_sn: int = 0


@dataclass(slots=True)
class DataOut(Pdu):
    OPCODE = Opcode.DATA_OUT
    final: bool = False
    lun: int = 0
    itt: int = 0
    ttt: int = RESERVED_TAG
    exp_stat_sn: int = 0
    data_sn: int = 0
    buffer_offset: int = 0


@dataclass(slots=True)
class LogoutRequest(Pdu):
    OPCODE = Opcode.LOGOUT_REQUEST
    immediate: bool = False
    reason: int = LogoutReason.CLOSE_SESSION
    itt: int = 0
    cid: int = 0
    cmd_sn: int = 0
    exp_stat_sn: int = 0


@dataclass(slots=True)
class SnackRequest(Pdu):
    OPCODE = Opcode.SNACK_REQUEST
    snack_type: int = SnackType.DATA_R2T
    lun: int = 0
    itt: int = RESERVED_TAG
    ttt: int = RESERVED_TAG
    exp_stat_sn: int = 0
    beg_run: int = 0
    run_length: int = 0


# ---------------------------------------------------------------------------------------
# Target PDUs


@dataclass(slots=True)
class NopIn(Pdu):
    OPCODE = Opcode.NOP_IN
    lun: int = 0
    itt: int = RESERVED_TAG
    ttt: int = RESERVED_TAG
    stat_sn: int = 0
    exp_cmd_sn: int = 0
    max_cmd_sn: int = 0


@dataclass(slots=True)
class ScsiResponse(Pdu):
    """``data`` holds the sense data as sent: a 2-byte SenseLength, then the sense bytes."""

    OPCODE = Opcode.SCSI_RESPONSE
    bidi_overflow: bool = False
    bidi_underflow: bool = False
    overflow: bool = False
    underflow: bool = False
    response: int = ScsiResponseCode.COMPLETED
    status: int = 0
    itt: int = 0
    snack_tag: int = 0
    stat_sn: int = 0
    exp_cmd_sn: int = 0
    max_cmd_sn: int = 0
    exp_data_sn: int = 0
    bidi_residual_count: int = 0
    residual_count: int = 0


@dataclass(slots=True)
class TaskMgmtResponse(Pdu):
    OPCODE = Opcode.TASK_MGMT_RESPONSE
    response: int = TmfResponse.COMPLETE
    itt: int = 0
    stat_sn: int = 0
    exp_cmd_sn: int = 0
    max_cmd_sn: int = 0


@dataclass(slots=True)
class LoginResponse(Pdu):
    OPCODE = Opcode.LOGIN_RESPONSE
    transit: bool = False
    cont: bool = False
    csg: int = LoginStage.SECURITY
    nsg: int = LoginStage.SECURITY
    version_max: int = 0
    version_active: int = 0
    isid: int = 0
    tsih: int = 0
    itt: int = 0
    stat_sn: int = 0
    exp_cmd_sn: int = 0
    max_cmd_sn: int = 0
    status_class: int = 0
    status_detail: int = 0


@dataclass(slots=True)
class TextResponse(Pdu):
    OPCODE = Opcode.TEXT_RESPONSE
    final: bool = True
    cont: bool = False
    lun: int = 0
    itt: int = 0
    ttt: int = RESERVED_TAG
    stat_sn: int = 0
    exp_cmd_sn: int = 0
    max_cmd_sn: int = 0


@dataclass(slots=True)
class DataIn(Pdu):
    OPCODE = Opcode.DATA_IN
    final: bool = False
    acknowledge: bool = False
    overflow: bool = False
    underflow: bool = False
    status_present: bool = False
    status: int = 0
    lun: int = 0
    itt: int = 0
    ttt: int = RESERVED_TAG
    stat_sn: int = 0
    exp_cmd_sn: int = 0
    max_cmd_sn: int = 0
    data_sn: int = 0
    buffer_offset: int = 0
    residual_count: int = 0


@dataclass(slots=True)
class LogoutResponse(Pdu):
    OPCODE = Opcode.LOGOUT_RESPONSE
    response: int = LogoutResponseCode.SUCCESS
    itt: int = 0
    stat_sn: int = 0
    exp_cmd_sn: int = 0
    max_cmd_sn: int = 0
    time2wait: int = 0
    time2retain: int = 0


@dataclass(slots=True)
class R2T(Pdu):
    OPCODE = Opcode.R2T
    lun: int = 0
    itt: int = 0
    ttt: int = 0
    stat_sn: int = 0
    exp_cmd_sn: int = 0
    max_cmd_sn: int = 0
    r2t_sn: int = 0
    buffer_offset: int = 0
    desired_data_transfer_length: int = 0


@dataclass(slots=True)
class AsyncMessage(Pdu):
    OPCODE = Opcode.ASYNC_MESSAGE
    lun: int = 0
    stat_sn: int = 0
    exp_cmd_sn: int = 0
    max_cmd_sn: int = 0
    async_event: int = AsyncEvent.LOGOUT_REQUEST
    async_vcode: int = 0
    parameter1: int = 0
    parameter2: int = 0
    parameter3: int = 0


@dataclass(slots=True)
class Reject(Pdu):
    """``data`` holds the complete header (BHS) of the rejected PDU."""

    OPCODE = Opcode.REJECT
    reason: int = RejectReason.PROTOCOL_ERROR
    stat_sn: int = 0
    exp_cmd_sn: int = 0
    max_cmd_sn: int = 0
    data_sn_or_r2t_sn: int = 0


PDU_CLASSES: dict[Opcode, type[Pdu]] = {
    cls.OPCODE: cls
    for cls in (
        NopOut,
        ScsiCommand,
        TaskMgmtRequest,
        LoginRequest,
        TextRequest,
        DataOut,
        LogoutRequest,
        SnackRequest,
        NopIn,
        ScsiResponse,
        TaskMgmtResponse,
        LoginResponse,
        TextResponse,
        DataIn,
        LogoutResponse,
        R2T,
        AsyncMessage,
        Reject,
    )
}
