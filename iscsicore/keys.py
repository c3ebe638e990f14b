"""iSCSI text keys (RFC 7143 sections 6, 12 and 13): the key=value codec, the table of
every standard key, the negotiated ``SessionParams`` and the C-bit text split/reassembly.

The negotiation engine that applies the table lives in ``iscsicore.negotiation``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum, Flag, StrEnum, auto

from iscsicore.pdu import LoginStatus
from iscsicore.portal import Portal, PortalError

KEY_NAME_MAX = 63
VALUE_MAX = 255
LONG_VALUE_MAX = 8192
# Upper bound for one reassembled text (login or text exchange); SendTargets answers of a
# big cluster fit comfortably, a peer that never clears the C bit does not exhaust memory.
ASSEMBLED_TEXT_MAX = 1 << 20

# RFC 7143 6.1: letters, digits, '.', '-', '+', '@', '_' and, for the X# extension form, '#';
# a key name starts with a capital letter.
_KEY_NAME = re.compile(r"[A-Z][A-Za-z0-9.\-+@_#]*")

YES, NO = "Yes", "No"
# Reserved answer constants (RFC 7143 6.2).
REJECT = "Reject"
IRRELEVANT = "Irrelevant"
NOT_UNDERSTOOD = "NotUnderstood"
NONE = "None"
RESERVED_ANSWERS = frozenset({REJECT, IRRELEVANT, NOT_UNDERSTOOD})


class TextError(Exception):
    """Bad text from a peer. ``status`` is the login status it earns during login;
    in the full-feature phase the PDU is answered with a Reject."""

    status: LoginStatus = LoginStatus.INITIATOR_ERROR


class MalformedText(TextError):
    """The data segment is not a sequence of well-formed key=value pairs."""


class TextTooLong(TextError):
    """Continued text exceeded the reassembly limit."""


class NegotiationError(TextError):
    """A negotiation breaks the RFC rules (repeated key, missing key, illegal answer)."""

    def __init__(self, message: str, status: LoginStatus = LoginStatus.INITIATOR_ERROR):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------------------
# Codec


def decode_text(
    data: bytes | bytearray | memoryview, *, terminated: bool = True
) -> list[tuple[str, str]]:
    """Split a data segment into (key, value) pairs, checking RFC 7143 6.1 syntax.

    Every key=value pair ends with a NUL (RFC 7143 6.1): text whose last byte is not one
    was cut short, and is malformed. ``terminated=False`` accepts it anyway (what our
    initiator does with a target's text: lenient in what it accepts from a peer it cannot
    fix). Empty strings between NULs are skipped: some peers pad the segment with zeros.
    """
    raw_text = bytes(data)
    if terminated and raw_text and raw_text[-1] != 0:
        raise MalformedText(f"text without its terminating NUL: ...{raw_text[-40:]!r}")
    pairs: list[tuple[str, str]] = []
    for raw in raw_text.split(b"\0"):
        if not raw:
            continue
        key_bytes, sep, value_bytes = raw.partition(b"=")
        if not sep:
            raise MalformedText(f"text item without '=': {raw[:80]!r}")
        try:
            key = key_bytes.decode("ascii")
            value = value_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedText(f"text item is not UTF-8: {raw[:80]!r}") from exc
        check_pair(key, value)
        pairs.append((key, value))
    return pairs


def check_pair(key: str, value: str) -> None:
    """Raise MalformedText unless key and value respect the RFC's syntax and size limits."""
    if len(key) > KEY_NAME_MAX or not _KEY_NAME.fullmatch(key):
        raise MalformedText(f"bad key name {key[:80]!r}")
    spec = KEY_TABLE.get(key)
    limit = value_limit(key)
    # The limit applies to each value of a comma-separated list (RFC 7143 6.1).
    items = value.split(",") if spec and spec.kind is KeyKind.LIST else [value]
    for item in items:
        if len(item.encode()) > limit:
            raise MalformedText(f"value of {key} longer than {limit} bytes")
    if "\0" in value:
        raise MalformedText(f"NUL inside the value of {key}")


def encode_text(pairs: Iterable[tuple[str, str]]) -> bytes:
    """NUL-terminated key=value pairs, in order."""
    out = bytearray()
    for key, value in pairs:
        check_pair(key, value)
        out += f"{key}={value}".encode() + b"\0"
    return bytes(out)


# ---------------------------------------------------------------------------------------
# The key table


class KeyKind(Enum):
    """How a key's value is typed and how the result is computed."""

    BOOLEAN_AND = auto()
    BOOLEAN_OR = auto()
    NUMERIC_MIN = auto()
    NUMERIC_MAX = auto()
    LIST = auto()  # first value in the offerer's list that the responder supports
    DECLARATIVE = auto()  # a statement, never answered
    NUMERIC_DECLARATIVE = auto()  # a statement with a legal numeric range


class Scope(Enum):
    SESSION = auto()
    CONNECTION = auto()


class Phase(Flag):
    """Where a key may be sent."""

    SECURITY = auto()
    OPERATIONAL = auto()
    FULL_FEATURE = auto()
    LOGIN = SECURITY | OPERATIONAL


class Sender(Flag):
    INITIATOR = auto()
    TARGET = auto()
    BOTH = INITIATOR | TARGET


@dataclass(frozen=True, slots=True)
class KeySpec:
    """One row of the negotiation table (RFC 7143 section 13)."""

    name: str
    kind: KeyKind
    default: str | None
    scope: Scope = Scope.SESSION
    phases: Phase = Phase.OPERATIONAL
    senders: Sender = Sender.BOTH
    leading_only: bool = False
    irrelevant_in_discovery: bool = False
    minimum: int = 0
    maximum: int = 0
    choices: tuple[str, ...] = ()
    max_value_length: int = VALUE_MAX

    @property
    def numeric(self) -> bool:
        return self.kind in (
            KeyKind.NUMERIC_MIN,
            KeyKind.NUMERIC_MAX,
            KeyKind.NUMERIC_DECLARATIVE,
        )

    @property
    def boolean(self) -> bool:
        return self.kind in (KeyKind.BOOLEAN_AND, KeyKind.BOOLEAN_OR)

    @property
    def negotiated(self) -> bool:
        return self.kind not in (KeyKind.DECLARATIVE, KeyKind.NUMERIC_DECLARATIVE)

    def parse_number(self, value: str) -> int | None:
        """The value as a number inside the legal range, or None."""
        number = parse_numeric(value)
        if number is None or not self.minimum <= number <= self.maximum:
            return None
        return number

    def valid_setting(self, value: str) -> bool:
        """Whether a locally configured value (a whole list for list keys) is legal."""
        if self.kind is KeyKind.LIST:
            return all(self.valid(item) for item in value.split(","))
        return self.valid(value)

    def valid(self, value: str) -> bool:
        """Whether a single (non-list) value is legal for this key."""
        if self.numeric:
            return self.parse_number(value) is not None
        if self.boolean:
            return value in (YES, NO)
        if self.choices:
            return value in self.choices
        return value != ""


def parse_numeric(value: str) -> int | None:
    """RFC 7143 5.1 numeric values: decimal, or 0x hex. None when not a number."""
    if value[:2] in ("0x", "0X"):
        digits, base = value[2:], 16
        if not digits or not all(c in "0123456789abcdefABCDEF" for c in digits):
            return None
    else:
        digits, base = value, 10
        if not digits.isascii() or not digits.isdigit():
            return None
    if len(digits) > 16:  # anything this long is out of every range anyway
        return None
    return int(digits, base)


_U24 = (1 << 24) - 1
_DIGESTS = ("CRC32C", NONE)
_AUTH_METHODS = ("CHAP", NONE, "KRB5", "SRP", "SPKM1", "SPKM2")

_TABLE_ROWS = (
    # Security stage
    KeySpec("AuthMethod", KeyKind.LIST, NONE, phases=Phase.SECURITY, choices=_AUTH_METHODS),
    # Declarations about the session, sent in either login stage
    KeySpec(
        "InitiatorName",
        KeyKind.DECLARATIVE,
        None,
        phases=Phase.LOGIN,
        senders=Sender.INITIATOR,
        max_value_length=223,
    ),
    KeySpec(
        "TargetName",
        KeyKind.DECLARATIVE,
        None,
        phases=Phase.LOGIN,
        senders=Sender.INITIATOR,
        max_value_length=223,
    ),
    KeySpec(
        "SessionType",
        KeyKind.DECLARATIVE,
        "Normal",
        phases=Phase.LOGIN,
        senders=Sender.INITIATOR,
        choices=("Normal", "Discovery"),
    ),
    KeySpec(
        "InitiatorAlias", KeyKind.DECLARATIVE, None, phases=Phase.LOGIN, senders=Sender.INITIATOR
    ),
    KeySpec("TargetAlias", KeyKind.DECLARATIVE, None, phases=Phase.LOGIN, senders=Sender.TARGET),
    KeySpec("TargetAddress", KeyKind.DECLARATIVE, None, phases=Phase.LOGIN, senders=Sender.TARGET),
    KeySpec(
        "TargetPortalGroupTag",
        KeyKind.NUMERIC_DECLARATIVE,
        None,
        phases=Phase.LOGIN,
        senders=Sender.TARGET,
        maximum=65535,
    ),
    # Operational keys
    KeySpec(
        "HeaderDigest",
        KeyKind.LIST,
        NONE,
        scope=Scope.CONNECTION,
        choices=_DIGESTS,
    ),
    KeySpec("DataDigest", KeyKind.LIST, NONE, scope=Scope.CONNECTION, choices=_DIGESTS),
    KeySpec(
        "MaxRecvDataSegmentLength",
        KeyKind.NUMERIC_DECLARATIVE,
        "8192",
        scope=Scope.CONNECTION,
        phases=Phase.OPERATIONAL | Phase.FULL_FEATURE,
        minimum=512,
        maximum=_U24,
    ),
    KeySpec(
        "MaxConnections",
        KeyKind.NUMERIC_MIN,
        "1",
        leading_only=True,
        irrelevant_in_discovery=True,
        minimum=1,
        maximum=65535,
    ),
    KeySpec("InitialR2T", KeyKind.BOOLEAN_OR, YES, leading_only=True, irrelevant_in_discovery=True),
    KeySpec(
        "ImmediateData", KeyKind.BOOLEAN_AND, YES, leading_only=True, irrelevant_in_discovery=True
    ),
    KeySpec(
        "MaxBurstLength",
        KeyKind.NUMERIC_MIN,
        "262144",
        leading_only=True,
        irrelevant_in_discovery=True,
        minimum=512,
        maximum=_U24,
    ),
    KeySpec(
        "FirstBurstLength",
        KeyKind.NUMERIC_MIN,
        "65536",
        leading_only=True,
        irrelevant_in_discovery=True,
        minimum=512,
        maximum=_U24,
    ),
    KeySpec(
        "DefaultTime2Wait", KeyKind.NUMERIC_MAX, "2", leading_only=True, minimum=0, maximum=3600
    ),
    KeySpec(
        "DefaultTime2Retain", KeyKind.NUMERIC_MIN, "20", leading_only=True, minimum=0, maximum=3600
    ),
    KeySpec(
        "MaxOutstandingR2T",
        KeyKind.NUMERIC_MIN,
        "1",
        leading_only=True,
        irrelevant_in_discovery=True,
        minimum=1,
        maximum=65535,
    ),
    KeySpec(
        "DataPDUInOrder", KeyKind.BOOLEAN_OR, YES, leading_only=True, irrelevant_in_discovery=True
    ),
    KeySpec(
        "DataSequenceInOrder",
        KeyKind.BOOLEAN_OR,
        YES,
        leading_only=True,
        irrelevant_in_discovery=True,
    ),
    KeySpec(
        "ErrorRecoveryLevel", KeyKind.NUMERIC_MIN, "0", leading_only=True, minimum=0, maximum=2
    ),
    KeySpec(
        "TaskReporting",
        KeyKind.LIST,
        "RFC3720",
        leading_only=True,
        irrelevant_in_discovery=True,
        choices=("RFC3720", "ResponseFence", "FastAbort"),
    ),
    KeySpec(  # RFC 7144
        "iSCSIProtocolLevel",
        KeyKind.NUMERIC_MIN,
        "1",
        leading_only=True,
        irrelevant_in_discovery=True,
        minimum=0,
        maximum=31,
    ),
    # Obsoleted by RFC 7143 (section 13.26): answered by the engine, never negotiated.
    KeySpec("IFMarker", KeyKind.BOOLEAN_AND, NO, scope=Scope.CONNECTION),
    KeySpec("OFMarker", KeyKind.BOOLEAN_AND, NO, scope=Scope.CONNECTION),
    KeySpec("IFMarkInt", KeyKind.DECLARATIVE, None, scope=Scope.CONNECTION),
    KeySpec("OFMarkInt", KeyKind.DECLARATIVE, None, scope=Scope.CONNECTION),
    # Full feature phase only
    KeySpec(
        "SendTargets",
        KeyKind.DECLARATIVE,
        None,
        phases=Phase.FULL_FEATURE,
        senders=Sender.INITIATOR,
    ),
)

KEY_TABLE: dict[str, KeySpec] = {spec.name: spec for spec in _TABLE_ROWS}
OBSOLETE_KEYS = frozenset({"IFMarker", "OFMarker", "IFMarkInt", "OFMarkInt"})
# CHAP keys are carried in the security stage but driven by iscsicore.chap, not the table.
CHAP_KEYS = frozenset({"CHAP_A", "CHAP_I", "CHAP_C", "CHAP_N", "CHAP_R"})
_CHAP_LONG = frozenset({"CHAP_C", "CHAP_R"})


def value_limit(key: str) -> int:
    """Longest legal value of ``key`` in bytes (CHAP binaries may be long)."""
    if key in _CHAP_LONG:
        return LONG_VALUE_MAX
    spec = KEY_TABLE.get(key)
    return spec.max_value_length if spec else VALUE_MAX


# ---------------------------------------------------------------------------------------
# Negotiated values


class SessionType(StrEnum):
    NORMAL = "Normal"
    DISCOVERY = "Discovery"


@dataclass(slots=True)
class SessionParams:
    """Values in force after login; RFC 7143 defaults until negotiated otherwise."""

    header_digest: bool = False
    data_digest: bool = False
    max_connections: int = 1
    initial_r2t: bool = True
    immediate_data: bool = True
    max_burst_length: int = 262144
    first_burst_length: int = 65536
    default_time2wait: int = 2
    default_time2retain: int = 20
    max_outstanding_r2t: int = 1
    data_pdu_in_order: bool = True
    data_sequence_in_order: bool = True
    error_recovery_level: int = 0
    # Declared per direction: what each side can receive in one data segment.
    initiator_max_recv_data_segment_length: int = 8192  # the target must not send more
    target_max_recv_data_segment_length: int = 8192  # the initiator must not send more
    session_type: SessionType = SessionType.NORMAL
    initiator_name: str = ""
    target_name: str | None = None
    initiator_alias: str | None = None
    target_alias: str | None = None
    target_portal_group_tag: int | None = None


# SessionParams field, by negotiated key: a boolean field takes Yes/No, digests CRC32C/None.
PARAM_FIELDS: dict[str, str] = {
    "HeaderDigest": "header_digest",
    "DataDigest": "data_digest",
    "MaxConnections": "max_connections",
    "InitialR2T": "initial_r2t",
    "ImmediateData": "immediate_data",
    "MaxBurstLength": "max_burst_length",
    "FirstBurstLength": "first_burst_length",
    "DefaultTime2Wait": "default_time2wait",
    "DefaultTime2Retain": "default_time2retain",
    "MaxOutstandingR2T": "max_outstanding_r2t",
    "DataPDUInOrder": "data_pdu_in_order",
    "DataSequenceInOrder": "data_sequence_in_order",
    "ErrorRecoveryLevel": "error_recovery_level",
}


def field_value(key: str, value: str) -> bool | int:
    """A negotiated key's string value in its SessionParams form."""
    spec = KEY_TABLE[key]
    if spec.boolean:
        return value == YES
    if spec.kind is KeyKind.LIST:
        return value == "CRC32C"
    number = parse_numeric(value)
    assert number is not None  # only validated values reach here
    return number


def key_value(key: str, field_value: bool | int) -> str:
    """A SessionParams value in its text form, for offering it."""
    spec = KEY_TABLE[key]
    if spec.boolean:
        return YES if field_value else NO
    if spec.kind is KeyKind.LIST:
        return "CRC32C" if field_value else NONE
    return str(int(field_value))


# ---------------------------------------------------------------------------------------
# TargetAddress


def parse_target_address(value: str) -> Portal:
    """Parse ``1.2.3.4:3260,1``, ``[::1]:3260,1``, ``host`` (port 3260) and the like."""
    try:
        return Portal.parse(value, what="TargetAddress")
    except PortalError as error:
        raise MalformedText(str(error)) from None


# ---------------------------------------------------------------------------------------
# Text spanning several PDUs (the C bit)


class TextSplitter:
    """Cut encoded text into data segments of at most ``max_len`` bytes.

    Every chunk but the last goes out with C=1. A key=value pair may be cut anywhere:
    the receiver reassembles before decoding (RFC 7143 6.3 / 11.10.2).
    """

    def __init__(self, max_len: int):
        if max_len < 1:
            raise ValueError("max_len must be positive")
        self.max_len = max_len

    def split(self, data: bytes) -> list[bytes]:
        if not data:
            return [b""]
        return [data[i : i + self.max_len] for i in range(0, len(data), self.max_len)]

    def chunks(self, data: bytes) -> Iterator[tuple[bytes, bool]]:
        """(chunk, continues) pairs; ``continues`` is the C bit of that PDU."""
        parts = self.split(data)
        for index, part in enumerate(parts):
            yield part, index < len(parts) - 1


class TextAssembler:
    """Gather data segments sent with C=1 until the one with C=0 completes the text."""

    def __init__(self, limit: int = ASSEMBLED_TEXT_MAX):
        self.limit = limit
        self._parts = bytearray()

    @property
    def pending(self) -> bool:
        return bool(self._parts)

    def feed(self, data: bytes | bytearray | memoryview, continues: bool) -> bytes | None:
        """Add one PDU's data; the complete text once ``continues`` is False, else None."""
        if len(self._parts) + len(data) > self.limit:
            self._parts.clear()
            raise TextTooLong(f"continued text longer than {self.limit} bytes")
        self._parts += data
        if continues:
            return None
        text = bytes(self._parts)
        self._parts.clear()
        return text

    def reset(self) -> None:
        self._parts.clear()
