"""The table-driven negotiation engine (RFC 7143 6.2 and 12): one ``Negotiator`` per
connection at login (or per text exchange), on either side, in either role per key.

A side *offers* a key and later reads the peer's *answer*; or it receives the peer's offer
and *answers* it with the result function of the key's table row. Declarative keys are
recorded and never answered. CHAP keys are left to ``iscsicore.chap``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum, auto

from iscsicore.keys import (
    CHAP_KEYS,
    IRRELEVANT,
    KEY_TABLE,
    NO,
    NOT_UNDERSTOOD,
    OBSOLETE_KEYS,
    PARAM_FIELDS,
    REJECT,
    RESERVED_ANSWERS,
    YES,
    KeyKind,
    KeySpec,
    NegotiationError,
    Phase,
    Sender,
    SessionParams,
    SessionType,
    field_value,
    parse_numeric,
)
from iscsicore.pdu import LoginStatus


class Role(Enum):
    INITIATOR = auto()
    TARGET = auto()

    @property
    def sender(self) -> Sender:
        return Sender.INITIATOR if self is Role.INITIATOR else Sender.TARGET


def respond_value(spec: KeySpec, offered: str, local: str | None) -> str:
    """What a responder answers to ``offered`` given its own preference ``local``
    (None: no preference, take the offer). ``Reject`` when the offer is not legal."""
    if spec.kind is KeyKind.LIST:
        supported = set(local.split(",")) if local is not None else set(spec.choices)
        for candidate in offered.split(","):
            if candidate in supported and spec.valid(candidate):
                return candidate
        return REJECT
    if not spec.valid(offered):
        return REJECT
    if local is None:
        return offered
    match spec.kind:
        case KeyKind.BOOLEAN_AND:
            return YES if offered == YES and local == YES else NO
        case KeyKind.BOOLEAN_OR:
            return YES if YES in (offered, local) else NO
        case KeyKind.NUMERIC_MIN | KeyKind.NUMERIC_MAX:
            ours, theirs = parse_numeric(local), parse_numeric(offered)
            assert ours is not None and theirs is not None
            pick = min if spec.kind is KeyKind.NUMERIC_MIN else max
            return str(pick(ours, theirs))
    return offered


def answer_is_legal(spec: KeySpec, offered: str, answer: str) -> bool:
    """Whether ``answer`` is a result the key's function could give for ``offered``."""
    if spec.kind is KeyKind.LIST:
        return answer in offered.split(",") and spec.valid(answer)
    if not spec.valid(answer):
        return False
    match spec.kind:
        case KeyKind.BOOLEAN_AND:
            return not (offered == NO and answer == YES)
        case KeyKind.BOOLEAN_OR:
            return not (offered == YES and answer == NO)
        case KeyKind.NUMERIC_MIN | KeyKind.NUMERIC_MAX:
            mine, theirs = parse_numeric(offered), parse_numeric(answer)
            assert mine is not None and theirs is not None
            return theirs <= mine if spec.kind is KeyKind.NUMERIC_MIN else theirs >= mine
    return True


def answer_optional(spec: KeySpec, offered: str) -> bool:
    """RFC 7143 6.2.2: AND offered No and OR offered Yes need no answer: the result is known."""
    return (spec.kind is KeyKind.BOOLEAN_AND and offered == NO) or (
        spec.kind is KeyKind.BOOLEAN_OR and offered == YES
    )


def _number(value: str) -> int:
    """A numeric value already validated against the table."""
    number = parse_numeric(value)
    if number is None:
        raise ValueError(f"not a number: {value!r}")
    return number


@dataclass
class Negotiator:
    """Negotiation state of one side of one connection.

    ``local`` holds this side's preference per key, used when answering the peer: a limit
    for numeric keys, Yes/No for booleans, the comma-separated supported values for lists.
    """

    role: Role
    local: dict[str, str] = field(default_factory=dict)
    session_type: SessionType = SessionType.NORMAL
    leading: bool = True
    agreed: dict[str, str] = field(default_factory=dict)
    declared_by_peer: dict[str, str] = field(default_factory=dict)
    declared_by_us: dict[str, str] = field(default_factory=dict)
    # Keys whose answer was Reject / Irrelevant / NotUnderstood, with that answer.
    refused: dict[str, str] = field(default_factory=dict)
    _offered: dict[str, str] = field(default_factory=dict)
    _answered: set[str] = field(default_factory=set)
    _peer_keys: set[str] = field(default_factory=set)

    # -- this side speaks first --------------------------------------------------------

    def offer(self, key: str, value: str) -> tuple[str, str]:
        """Register an offer (or a declaration) of ours and return the pair to send."""
        spec = KEY_TABLE.get(key)
        if key in self._offered or key in self.declared_by_us:
            raise ValueError(f"{key} already sent on this connection")
        if spec is not None and not spec.negotiated:
            self.declared_by_us[key] = value
        else:
            self._offered[key] = value
        return key, value

    @property
    def awaiting(self) -> list[str]:
        """Our offers still needing an answer (optional answers excluded)."""
        return [
            key
            for key, value in self._offered.items()
            if key not in self._answered
            and not (key in KEY_TABLE and answer_optional(KEY_TABLE[key], value))
        ]

    # -- the peer speaks ---------------------------------------------------------------

    def receive(self, pairs: list[tuple[str, str]], phase: Phase) -> list[tuple[str, str]]:
        """Process the peer's pairs: answers to our offers, its offers and declarations.

        Returns the answers to send back. CHAP keys are skipped (see iscsicore.chap).
        Raises NegotiationError when the peer breaks a rule that fails the login.
        """
        replies: list[tuple[str, str]] = []
        for key, value in pairs:
            if key in CHAP_KEYS:
                continue
            if key in self._offered:
                self._take_answer(key, value)
            else:
                reply = self._answer_offer(key, value, phase)
                if reply is not None:
                    replies.append((key, reply))
        return replies

    def _peer_error(self, message: str) -> NegotiationError:
        status = (
            LoginStatus.INITIATOR_ERROR if self.role is Role.TARGET else LoginStatus.TARGET_ERROR
        )
        return NegotiationError(message, status)

    def _take_answer(self, key: str, value: str) -> None:
        if key in self._answered:
            raise self._peer_error(f"{key} answered twice")
        self._answered.add(key)
        offered = self._offered[key]
        if value in RESERVED_ANSWERS:
            self.refused[key] = value
            return
        spec = KEY_TABLE.get(key)
        if spec is None:  # a private key of ours: the value is the peer's business
            self.agreed[key] = value
            return
        if not answer_is_legal(spec, offered, value):
            raise self._peer_error(f"illegal answer {key}={value} to our {offered}")
        self.agreed[key] = value

    def _answer_offer(self, key: str, value: str, phase: Phase) -> str | None:
        if key in self._peer_keys:
            raise self._peer_error(f"{key} sent twice")
        self._peer_keys.add(key)
        spec = KEY_TABLE.get(key)
        if spec is None:
            return NOT_UNDERSTOOD
        if value in RESERVED_ANSWERS:
            if key in self.declared_by_us:  # the peer refused one of our declarations
                self.refused[key] = value
                return None
            raise self._peer_error(f"{key}={value} answers nothing we offered")
        if key in OBSOLETE_KEYS:
            # RFC 7143 13.26: IFMarker/OFMarker may be answered No; the *MarkInt keys Reject.
            return NO if spec.boolean else REJECT
        if not spec.phases & phase:
            if Phase.SECURITY in spec.phases:
                raise self._peer_error(f"{key} outside the security stage")
            # Operational keys sent early, in the security stage, are negotiated as if in
            # the next stage; anything else out of its stage is refused.
            if not (phase is Phase.SECURITY and Phase.OPERATIONAL in spec.phases):
                return REJECT
        if not spec.senders & self.role_of_peer:
            raise self._peer_error(f"{key} may not be sent by the {self.role_of_peer.name}")
        if spec.leading_only and not self.leading:
            return IRRELEVANT
        if spec.irrelevant_in_discovery and self.session_type is SessionType.DISCOVERY:
            return IRRELEVANT
        if not spec.negotiated:
            if not spec.valid(value):
                return REJECT
            self.declared_by_peer[key] = value
            return None
        answer = respond_value(spec, value, self._local_for(key))
        if answer not in RESERVED_ANSWERS:
            self.agreed[key] = answer
        return answer

    @property
    def peer_keys(self) -> frozenset[str]:
        """Keys the peer has sent on its own initiative."""
        return frozenset(self._peer_keys)

    @property
    def role_of_peer(self) -> Sender:
        return Sender.TARGET if self.role is Role.INITIATOR else Sender.INITIATOR

    def _local_for(self, key: str) -> str | None:
        local = self.local.get(key)
        if key == "FirstBurstLength":
            # FirstBurstLength must not exceed MaxBurstLength (RFC 7143 13.14).
            max_burst = self.result("MaxBurstLength")
            assert max_burst is not None
            if local is None or _number(local) > _number(max_burst):
                return max_burst
        return local

    # -- the outcome -------------------------------------------------------------------

    def result(self, key: str) -> str | None:
        """The value in force for a negotiated key: agreed, implied, or the default."""
        if key in self.agreed:
            return self.agreed[key]
        offered = self._offered.get(key)
        spec = KEY_TABLE.get(key)
        if spec is None:
            return offered
        if offered is not None and key not in self._answered and answer_optional(spec, offered):
            return offered
        return spec.default

    def session_params(self, base: SessionParams | None = None) -> SessionParams:
        """SessionParams from ``base`` (RFC defaults) updated with everything negotiated."""
        params = replace(base) if base is not None else SessionParams()
        for key, attribute in PARAM_FIELDS.items():
            value = self.result(key)
            if value is not None:
                setattr(params, attribute, field_value(key, value))
        ours = self.declared_by_us.get("MaxRecvDataSegmentLength")
        theirs = self.declared_by_peer.get("MaxRecvDataSegmentLength")
        initiator_mrdsl, target_mrdsl = (
            (ours, theirs) if self.role is Role.INITIATOR else (theirs, ours)
        )
        if initiator_mrdsl is not None:
            params.initiator_max_recv_data_segment_length = _number(initiator_mrdsl)
        if target_mrdsl is not None:
            params.target_max_recv_data_segment_length = _number(target_mrdsl)
        # Both sides clamp the same way, so they agree even if the peer did not.
        params.first_burst_length = min(params.first_burst_length, params.max_burst_length)
        return params
