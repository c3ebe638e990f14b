"""Login phase state machines (RFC 7143 6.3 and 11.12-11.13), sans-IO.

``TargetLogin`` answers the Login Requests of one connection; ``InitiatorLogin`` drives
one connection's login from the initiator's side. Both consume and produce ``pdu.py``
dataclasses only; the transport moves the PDUs. Peer mistakes end in a login failure
status, never an exception.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, auto

from iscsicore.chap import ChapError, ChapInitiator, ChapSecrets, ChapTarget
from iscsicore.keys import (
    CHAP_KEYS,
    KEY_TABLE,
    NONE,
    REJECT,
    MalformedText,
    NegotiationError,
    Phase,
    SessionParams,
    SessionType,
    TextAssembler,
    TextError,
    TextSplitter,
    decode_text,
    encode_text,
    key_value,
    parse_target_address,
)
from iscsicore.negotiation import Negotiator, Role, respond_value
from iscsicore.pdu import LoginRequest, LoginResponse, LoginStage, LoginStatus
from iscsicore.portal import Portal
from iscsicore.seqnum import SERIAL_MASK, sn_add

ISCSI_VERSION = 0x00
# Until MaxRecvDataSegmentLength is in force, login PDUs carry at most 8192 bytes of data.
LOGIN_DATA_SEGMENT_LENGTH = 8192


# ---------------------------------------------------------------------------------------
# Shared pieces


def _phase(stage: int) -> Phase:
    return Phase.SECURITY if stage == LoginStage.SECURITY else Phase.OPERATIONAL


def _chap_pairs(pairs: list[tuple[str, str]], error: type[TextError]) -> dict[str, str]:
    """The CHAP keys of one text, each at most once."""
    found: dict[str, str] = {}
    for key, value in pairs:
        if key in CHAP_KEYS:
            if key in found:
                raise error(f"{key} sent twice")
            found[key] = value
    return found


def _check_settings(owner: str, pairs: list[tuple[str, str]]) -> None:
    """Refuse a local configuration the RFC would not let us send (a caller's bug)."""
    for key, value in pairs:
        if not KEY_TABLE[key].valid_setting(value):
            raise ValueError(f"{owner}: {key}={value} is not a legal value")


def _first_value(pairs: list[tuple[str, str]], key: str) -> str | None:
    return next((value for name, value in pairs if name == key), None)


@dataclass
class _Outbox:
    """Outgoing text that needs more than one PDU: chunks sent one per round with C=1,
    the stage transition (T, NSG) wanted once the last chunk is out."""

    chunks: list[bytes] = field(default_factory=list)
    transit: bool = False
    nsg: int = LoginStage.SECURITY

    def load(self, data: bytes, max_len: int, transit: bool, nsg: int) -> None:
        self.chunks = TextSplitter(max_len).split(data)
        self.transit, self.nsg = transit, nsg

    def next_chunk(self) -> tuple[bytes, bool]:
        """The next chunk and whether more follow (the C bit)."""
        chunk = self.chunks.pop(0)
        return chunk, bool(self.chunks)

    @property
    def pending(self) -> bool:
        return bool(self.chunks)


# ---------------------------------------------------------------------------------------
# Target side


@dataclass(frozen=True, slots=True)
class Accept:
    """Let the login go on; with ``chap`` set the initiator must authenticate with CHAP,
    ``mutual`` is what the target proves itself with if the initiator asks."""

    chap: ChapSecrets | None = None
    mutual: ChapSecrets | None = None
    target_alias: str | None = None


@dataclass(frozen=True, slots=True)
class Redirect:
    """Send the initiator elsewhere: ``target_address`` is ``host:port,tpgt``
    (``str(Portal(...))`` builds one; an IPv6 host goes in brackets)."""

    target_address: str
    permanent: bool = False

    @classmethod
    def to(cls, host: str, port: int, tpgt: int, *, permanent: bool = False) -> Redirect:
        """A redirect to ``host:port,tpgt``, brackets added around an IPv6 host."""
        return cls(str(Portal(host, port, tpgt)), permanent)


@dataclass(frozen=True, slots=True)
class Refuse:
    status: LoginStatus


Resolution = Accept | Redirect | Refuse


@dataclass(frozen=True, slots=True)
class SessionRequest:
    """What the TSIH allocator is told about the session the login wants."""

    isid: int
    tsih: int  # 0 for a new session, else the session the connection wants to join
    cid: int
    initiator_name: str
    target_name: str | None
    session_type: SessionType


def _random_stat_sn() -> int:
    return secrets.randbelow(1 << 32)


@dataclass
class TargetLoginConfig:
    """Policy of a target portal for login: identity checks, limits, counters."""

    portal_group_tag: int
    resolve: Callable[[str, str | None, SessionType], Resolution]
    # Called when a login completes: returns the TSIH (1..65535) or a Refuse.
    allocate_tsih: Callable[[SessionRequest], int | Refuse]
    max_recv_data_segment_length: int = 262144
    max_burst_length: int = 262144
    first_burst_length: int = 65536
    immediate_data: bool = True
    initial_r2t: bool = False
    max_outstanding_r2t: int = 16
    max_connections: int = 1
    error_recovery_level: int = 0
    default_time2wait: int = 2
    default_time2retain: int = 20
    header_digests: tuple[str, ...] = ("CRC32C", NONE)  # accepted values
    data_digests: tuple[str, ...] = ("CRC32C", NONE)
    initial_stat_sn: Callable[[], int] = _random_stat_sn
    cmd_window: int = 64  # MaxCmdSN - ExpCmdSN + 1 granted at login

    def __post_init__(self) -> None:
        settings = list(self.local_preferences(chap_required=False).items())
        mrdsl = str(self.max_recv_data_segment_length)
        _check_settings("TargetLoginConfig", [*settings, ("MaxRecvDataSegmentLength", mrdsl)])
        if not 0 <= self.portal_group_tag <= 0xFFFF or self.cmd_window < 1:
            raise ValueError("TargetLoginConfig: bad portal_group_tag or cmd_window")

    def local_preferences(self, chap_required: bool) -> dict[str, str]:
        prefs = {
            "AuthMethod": "CHAP" if chap_required else NONE,
            "HeaderDigest": ",".join(self.header_digests),
            "DataDigest": ",".join(self.data_digests),
            "MaxConnections": key_value("MaxConnections", self.max_connections),
            "InitialR2T": key_value("InitialR2T", self.initial_r2t),
            "ImmediateData": key_value("ImmediateData", self.immediate_data),
            "MaxBurstLength": key_value("MaxBurstLength", self.max_burst_length),
            "FirstBurstLength": key_value("FirstBurstLength", self.first_burst_length),
            "DefaultTime2Wait": key_value("DefaultTime2Wait", self.default_time2wait),
            "DefaultTime2Retain": key_value("DefaultTime2Retain", self.default_time2retain),
            "MaxOutstandingR2T": key_value("MaxOutstandingR2T", self.max_outstanding_r2t),
            "ErrorRecoveryLevel": key_value("ErrorRecoveryLevel", self.error_recovery_level),
            # Plain RFC 7143 behaviour: no ResponseFence/FastAbort, protocol level 1.
            "TaskReporting": "RFC3720",
            "iSCSIProtocolLevel": "1",
        }
        return prefs


class TargetLoginState(Enum):
    IN_PROGRESS = auto()
    COMPLETE = auto()
    REDIRECTED = auto()
    FAILED = auto()


class _LoginFailure(Exception):
    """Internal: end the login with ``status``."""

    def __init__(self, status: LoginStatus, message: str):
        super().__init__(message)
        self.status = status


class _AuthState(Enum):
    UNDECIDED = auto()  # AuthMethod not negotiated yet
    CHAP_CHOSEN = auto()  # waiting for CHAP_A
    CHAP_CHALLENGED = auto()  # waiting for CHAP_N/CHAP_R
    DONE = auto()


class TargetLogin:
    """The target's login state machine for one connection.

    Feed every Login Request to ``receive``; send back the response it returns. When
    ``finished`` the login is over: ``complete`` (go to full feature phase with ``params``,
    ``tsih``, ``stat_sn``), or ``redirected``/``failed`` (send the response, then close).
    """

    def __init__(self, config: TargetLoginConfig):
        self.config = config
        self.state = TargetLoginState.IN_PROGRESS
        self.failure_message = ""
        self.failure_status: LoginStatus | None = None
        self.params = SessionParams()
        self.isid = 0
        self.tsih = 0
        self.cid = 0
        self.initiator_name = ""
        self.target_name: str | None = None
        self.session_type = SessionType.NORMAL
        self.resolution: Accept | None = None
        self.stat_sn = config.initial_stat_sn() & SERIAL_MASK  # the next StatSN to send
        self.cmd_sn = 0  # CmdSN of the login requests: the first command's CmdSN
        self._stage: int | None = None  # CSG expected next; None before the first PDU
        self._negotiator = Negotiator(Role.TARGET)
        self._assembler = TextAssembler()
        self._outbox = _Outbox()
        self._auth = _AuthState.UNDECIDED
        self._chap: ChapTarget | None = None
        # The CHAP exchange failed (wrong secret, bad challenge): what login throttling counts.
        self.chap_failed = False
        self._declared_mrdsl = False
        self._offered_limits = False
        self._last_failure: LoginResponse | None = None

    # -- public state ------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return self.state is TargetLoginState.COMPLETE

    @property
    def failed(self) -> bool:
        return self.state is TargetLoginState.FAILED

    @property
    def redirected(self) -> bool:
        return self.state is TargetLoginState.REDIRECTED

    @property
    def finished(self) -> bool:
        return self.state is not TargetLoginState.IN_PROGRESS

    @property
    def max_cmd_sn(self) -> int:
        return sn_add(self.cmd_sn, self.config.cmd_window - 1)

    # -- the machine -------------------------------------------------------------------

    def receive(self, req: LoginRequest) -> LoginResponse:
        """Answer one Login Request."""
        if self.state is not TargetLoginState.IN_PROGRESS:
            if self._last_failure is not None:
                return self._last_failure
            # A Login Request after success: refuse it, the session stays as it is.
            return self._response(
                req, transit=False, nsg=req.csg, status=LoginStatus.INITIATOR_ERROR
            )
        try:
            return self._receive(req)
        except _LoginFailure as failure:
            return self._fail(req, failure.status, str(failure))
        except TextError as error:
            return self._fail(req, error.status, str(error))

    def _receive(self, req: LoginRequest) -> LoginResponse:
        self._check_header(req)
        self.cmd_sn = req.cmd_sn
        if self._outbox.pending:
            if req.data or req.cont:
                raise _LoginFailure(LoginStatus.INITIATOR_ERROR, "text while ours continues")
            return self._send_chunk(req)
        text = self._assembler.feed(req.data, req.cont)
        if text is None:  # C=1: acknowledge with an empty response and wait for the rest
            return self._response(req, transit=False, nsg=req.csg)
        pairs = decode_text(text)
        replies: list[tuple[str, str]] = []
        if self._stage is None:
            early = self._identify(req, pairs)
            if early is not None:
                return early
            replies += self._first_declarations()
        self._stage = req.csg
        if req.csg == LoginStage.SECURITY:
            replies += self._security(req, pairs)
            may_transit = self._auth is _AuthState.DONE
        else:
            self._require_authenticated()
            replies += self._negotiator.receive(pairs, Phase.OPERATIONAL)
            if req.transit and not self._offered_limits:
                replies += self._offer_limits()
                may_transit = not self._negotiator.awaiting
            else:
                # An initiator that asks to move on again without answering our offers
                # (open-iscsi does not answer them) is not kept waiting forever.
                may_transit = True
            replies += self._declare_mrdsl()
        transit = req.transit and may_transit
        straight_to_full_feature = (
            req.csg == LoginStage.SECURITY and transit and req.nsg == LoginStage.FULL_FEATURE
        )
        if straight_to_full_feature and self.config.max_recv_data_segment_length < 8192:
            # open-iscsi refuses operational keys in a security-stage response: declare
            # only a limit below the 8192 bytes the initiator assumes by default.
            replies += self._declare_mrdsl()
        self._outbox.load(
            encode_text(replies),
            LOGIN_DATA_SEGMENT_LENGTH,
            transit,
            req.nsg if transit else req.csg,
        )
        return self._send_chunk(req)

    def _check_header(self, req: LoginRequest) -> None:
        if req.version_min > ISCSI_VERSION:
            raise _LoginFailure(LoginStatus.UNSUPPORTED_VERSION, "unsupported iSCSI version")
        if req.cont and req.transit:
            raise _LoginFailure(LoginStatus.INITIATOR_ERROR, "C and T both set")
        if req.csg not in (LoginStage.SECURITY, LoginStage.OPERATIONAL):
            raise _LoginFailure(LoginStatus.INITIATOR_ERROR, f"bad CSG {req.csg}")
        if req.transit and (
            req.nsg not in (LoginStage.OPERATIONAL, LoginStage.FULL_FEATURE) or req.nsg <= req.csg
        ):
            raise _LoginFailure(
                LoginStatus.INITIATOR_ERROR, f"illegal transition {req.csg}->{req.nsg}"
            )
        if self._stage is None:
            self.isid, self.tsih, self.cid = req.isid, req.tsih, req.cid
            return
        if (req.isid, req.tsih, req.cid) != (self.isid, self.tsih, self.cid):
            raise _LoginFailure(LoginStatus.INITIATOR_ERROR, "ISID/TSIH/CID changed")
        if req.csg != self._stage:
            raise _LoginFailure(
                LoginStatus.INITIATOR_ERROR, f"CSG {req.csg} while in stage {self._stage}"
            )

    def _identify(self, req: LoginRequest, pairs: list[tuple[str, str]]) -> LoginResponse | None:
        """First text of the connection: who logs in to what. A response if it ends here."""
        initiator_name = _first_value(pairs, "InitiatorName")
        if not initiator_name:
            raise _LoginFailure(LoginStatus.MISSING_PARAMETER, "InitiatorName missing")
        session_text = _first_value(pairs, "SessionType") or SessionType.NORMAL.value
        try:
            session_type = SessionType(session_text)
        except ValueError:
            raise _LoginFailure(
                LoginStatus.SESSION_TYPE_NOT_SUPPORTED, f"SessionType={session_text[:40]}"
            ) from None
        target_name = _first_value(pairs, "TargetName")
        if session_type is SessionType.NORMAL and not target_name:
            raise _LoginFailure(LoginStatus.MISSING_PARAMETER, "TargetName missing")
        self.initiator_name, self.target_name = initiator_name, target_name or None
        self.session_type = session_type
        resolution = self.config.resolve(initiator_name, self.target_name, session_type)
        if isinstance(resolution, Refuse):
            raise _LoginFailure(resolution.status, "refused by target policy")
        if isinstance(resolution, Redirect):
            return self._redirect(req, resolution)
        self.resolution = resolution
        if req.csg == LoginStage.OPERATIONAL and resolution.chap is not None:
            raise _LoginFailure(LoginStatus.AUTHENTICATION_FAILURE, "authentication skipped")
        if resolution.chap is None:
            self._auth = _AuthState.DONE if req.csg == LoginStage.OPERATIONAL else self._auth
        else:
            self._chap = ChapTarget(resolution.chap, resolution.mutual)
        self._negotiator = Negotiator(
            Role.TARGET,
            local=self.config.local_preferences(resolution.chap is not None),
            session_type=session_type,
            leading=req.tsih == 0,
        )
        return None

    def _first_declarations(self) -> list[tuple[str, str]]:
        # RFC 7143 13.9: the first response of a Normal session carries the tag; sent in
        # discovery too (as tgt does) so both sides end with the same SessionParams.
        tag = str(self.config.portal_group_tag)
        pairs = [self._negotiator.offer("TargetPortalGroupTag", tag)]
        assert self.resolution is not None
        if self.resolution.target_alias and self.session_type is SessionType.NORMAL:
            pairs.append(self._negotiator.offer("TargetAlias", self.resolution.target_alias))
        return pairs

    def _offer_limits(self) -> list[tuple[str, str]]:
        """Offer the limits of ours that the initiator never brought up and that are
        stricter than the RFC defaults it would otherwise assume (we answer T=0 until it
        has answered them)."""
        self._offered_limits = True
        negotiator = self._negotiator
        pairs: list[tuple[str, str]] = []
        for key, value in negotiator.local.items():
            spec = KEY_TABLE[key]
            if key in negotiator.agreed or key in negotiator.peer_keys or spec.default is None:
                continue
            if spec.leading_only and not negotiator.leading:
                continue
            if spec.irrelevant_in_discovery and self.session_type is SessionType.DISCOVERY:
                continue
            if not spec.phases & Phase.OPERATIONAL:
                continue
            if respond_value(spec, spec.default, value) != spec.default:
                pairs.append(negotiator.offer(key, value))
        return pairs

    def _declare_mrdsl(self) -> list[tuple[str, str]]:
        if self._declared_mrdsl:
            return []
        self._declared_mrdsl = True
        value = str(self.config.max_recv_data_segment_length)
        return [self._negotiator.offer("MaxRecvDataSegmentLength", value)]

    def _security(self, req: LoginRequest, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        assert self.resolution is not None
        chap_pairs = _chap_pairs(pairs, NegotiationError)
        replies = self._negotiator.receive(pairs, Phase.SECURITY)
        chap_required = self.resolution.chap is not None
        if self._auth is _AuthState.UNDECIDED:
            method = self._negotiator.agreed.get("AuthMethod")
            if dict(replies).get("AuthMethod") == REJECT:
                raise _LoginFailure(LoginStatus.AUTHENTICATION_FAILURE, "no acceptable AuthMethod")
            if method == "CHAP":
                self._auth = _AuthState.CHAP_CHOSEN
            elif method == NONE or (method is None and not chap_required and req.transit):
                self._auth = _AuthState.DONE
            elif method is None and chap_required and req.transit:
                raise _LoginFailure(LoginStatus.AUTHENTICATION_FAILURE, "AuthMethod not offered")
        if chap_pairs:
            replies += self._chap_step(chap_pairs)
        return replies

    def _chap_step(self, chap_pairs: dict[str, str]) -> list[tuple[str, str]]:
        if self._chap is None or self._auth in (_AuthState.UNDECIDED, _AuthState.DONE):
            raise _LoginFailure(LoginStatus.INITIATOR_ERROR, "CHAP keys outside a CHAP exchange")
        try:
            if self._auth is _AuthState.CHAP_CHOSEN:
                if "CHAP_A" not in chap_pairs:
                    raise ChapError("CHAP_A expected")
                self._auth = _AuthState.CHAP_CHALLENGED
                return self._chap.on_algorithms(chap_pairs)
            replies = self._chap.on_response(chap_pairs)
        except ChapError as error:
            self.chap_failed = True
            raise _LoginFailure(LoginStatus.AUTHENTICATION_FAILURE, str(error)) from None
        self._auth = _AuthState.DONE
        return replies

    def _require_authenticated(self) -> None:
        if self._auth is not _AuthState.DONE:
            raise _LoginFailure(LoginStatus.AUTHENTICATION_FAILURE, "not authenticated")

    # -- responses ---------------------------------------------------------------------

    def _send_chunk(self, req: LoginRequest) -> LoginResponse:
        chunk, more = self._outbox.next_chunk()
        if more:
            return self._response(req, transit=False, nsg=req.csg, data=chunk, cont=True)
        transit, nsg = self._outbox.transit, self._outbox.nsg
        if transit and nsg == LoginStage.FULL_FEATURE:
            self._complete()
        response = self._response(req, transit=transit, nsg=nsg, data=chunk)
        if transit:
            self._stage = nsg
        return response

    def _complete(self) -> None:
        self._require_authenticated()
        request = SessionRequest(
            self.isid, self.tsih, self.cid, self.initiator_name, self.target_name, self.session_type
        )
        allocated = self.config.allocate_tsih(request)
        if isinstance(allocated, Refuse):
            raise _LoginFailure(allocated.status, "session refused")
        if not 0 < allocated <= 0xFFFF:
            raise _LoginFailure(LoginStatus.TARGET_ERROR, f"TSIH allocator gave {allocated}")
        self.tsih = allocated
        base = SessionParams(
            session_type=self.session_type,
            initiator_name=self.initiator_name,
            target_name=self.target_name,
            initiator_alias=self._negotiator.declared_by_peer.get("InitiatorAlias"),
            target_alias=self._negotiator.declared_by_us.get("TargetAlias"),
            target_portal_group_tag=self.config.portal_group_tag,
        )
        params = self._negotiator.session_params(base)
        for key, required, agreed in (
            ("HeaderDigest", self.config.header_digests, params.header_digest),
            ("DataDigest", self.config.data_digests, params.data_digest),
        ):
            if NONE not in required and not agreed:
                raise _LoginFailure(LoginStatus.INITIATOR_ERROR, f"{key}=CRC32C is required")
        self.params = params
        self.state = TargetLoginState.COMPLETE

    def _redirect(self, req: LoginRequest, redirect: Redirect) -> LoginResponse:
        status = (
            LoginStatus.TARGET_MOVED_PERMANENTLY
            if redirect.permanent
            else LoginStatus.TARGET_MOVED_TEMPORARILY
        )
        self.state = TargetLoginState.REDIRECTED
        data = encode_text([("TargetAddress", redirect.target_address)])
        response = self._response(req, transit=False, nsg=req.csg, data=data, status=status)
        self._last_failure = response
        return response

    def _fail(self, req: LoginRequest, status: LoginStatus, message: str) -> LoginResponse:
        self.state = TargetLoginState.FAILED
        self.failure_status, self.failure_message = status, message
        response = self._response(req, transit=False, nsg=req.csg, status=status)
        self._last_failure = response
        return response

    def _response(
        self,
        req: LoginRequest,
        *,
        transit: bool,
        nsg: int,
        data: bytes = b"",
        cont: bool = False,
        status: LoginStatus = LoginStatus.SUCCESS,
    ) -> LoginResponse:
        stage = req.csg if req.csg in (LoginStage.SECURITY, LoginStage.OPERATIONAL) else 0
        response = LoginResponse(
            transit=transit,
            cont=cont,
            csg=stage,
            nsg=nsg if transit else stage,
            version_max=ISCSI_VERSION,
            version_active=ISCSI_VERSION,
            isid=req.isid,
            tsih=self.tsih if self.complete else req.tsih,
            itt=req.itt,
            stat_sn=self.stat_sn,
            exp_cmd_sn=req.cmd_sn,
            max_cmd_sn=sn_add(req.cmd_sn, self.config.cmd_window - 1),
            status_class=status.status_class,
            status_detail=status.status_detail,
            data=data,
        )
        # RFC 7143 11.13.4: every login response, the last included, uses up one StatSN.
        self.stat_sn = sn_add(self.stat_sn, 1)
        return response


# ---------------------------------------------------------------------------------------
# Initiator side


@dataclass(frozen=True, slots=True)
class LoginProposals:
    """Operational values the initiator offers (digest lists in preference order)."""

    header_digest: tuple[str, ...] = (NONE,)
    data_digest: tuple[str, ...] = (NONE,)
    max_recv_data_segment_length: int = 262144
    max_burst_length: int = 262144
    first_burst_length: int = 65536
    immediate_data: bool = True
    initial_r2t: bool = False
    max_outstanding_r2t: int = 1
    max_connections: int = 1
    default_time2wait: int = 2
    default_time2retain: int = 20
    data_pdu_in_order: bool = True
    data_sequence_in_order: bool = True
    error_recovery_level: int = 0
    initiator_alias: str | None = None

    def __post_init__(self) -> None:
        mrdsl = ("MaxRecvDataSegmentLength", str(self.max_recv_data_segment_length))
        _check_settings("LoginProposals", [*self.offers(SessionType.NORMAL), mrdsl])

    def offers(self, session_type: SessionType) -> list[tuple[str, str]]:
        """Negotiated keys to offer; a discovery session offers only digests."""
        pairs = [
            ("HeaderDigest", ",".join(self.header_digest)),
            ("DataDigest", ",".join(self.data_digest)),
        ]
        if session_type is SessionType.DISCOVERY:
            return pairs
        numeric = {
            "InitialR2T": self.initial_r2t,
            "ImmediateData": self.immediate_data,
            "MaxBurstLength": self.max_burst_length,
            "FirstBurstLength": min(self.first_burst_length, self.max_burst_length),
            "MaxOutstandingR2T": self.max_outstanding_r2t,
            "MaxConnections": self.max_connections,
            "DefaultTime2Wait": self.default_time2wait,
            "DefaultTime2Retain": self.default_time2retain,
            "DataPDUInOrder": self.data_pdu_in_order,
            "DataSequenceInOrder": self.data_sequence_in_order,
            "ErrorRecoveryLevel": self.error_recovery_level,
        }
        return pairs + [(key, key_value(key, value)) for key, value in numeric.items()]


@dataclass(frozen=True, slots=True)
class LoginDone:
    """Login succeeded: go to the full feature phase. The first command carries
    ``exp_cmd_sn`` as CmdSN and ``stat_sn + 1`` as ExpStatSN."""

    params: SessionParams
    tsih: int
    stat_sn: int
    exp_cmd_sn: int
    max_cmd_sn: int


@dataclass(frozen=True, slots=True)
class LoginRedirect:
    host: str
    port: int
    tpgt: int | None
    permanent: bool

    @property
    def address(self) -> Portal:
        return Portal(self.host, self.port, self.tpgt)


@dataclass(frozen=True, slots=True)
class LoginFailed:
    """The target refused, or something broke; ``raw_status`` is the status on the wire
    (0 when the failure was detected locally)."""

    status: LoginStatus
    message: str
    raw_status: int = 0


LoginOutcome = LoginRequest | LoginDone | LoginRedirect | LoginFailed


def _status_of(raw: int) -> LoginStatus:
    try:
        return LoginStatus(raw)
    except ValueError:
        return LoginStatus.INITIATOR_ERROR if raw >> 8 == 2 else LoginStatus.TARGET_ERROR


class _InitiatorAuth(Enum):
    AWAIT_METHOD = auto()
    AWAIT_CHALLENGE = auto()
    AWAIT_RESULT = auto()
    DONE = auto()


class InitiatorLogin:
    """The initiator's login state machine for one connection.

    ``start()`` gives the first Login Request; each Login Response goes to ``receive``,
    which returns the next request or the outcome (LoginDone / LoginRedirect / LoginFailed).
    ``target_name=None`` makes a discovery session.
    """

    def __init__(
        self,
        initiator_name: str,
        target_name: str | None,
        isid: int,
        *,
        tsih: int = 0,
        chap: ChapSecrets | None = None,
        mutual_chap: ChapSecrets | None = None,
        proposals: LoginProposals | None = None,
        itt: int = 0,
        cmd_sn: int = 0,
        cid: int = 0,
        exp_stat_sn: int = 0,
    ):
        if mutual_chap is not None and chap is None:
            raise ValueError("mutual CHAP needs the initiator's own CHAP secrets")
        self.initiator_name = initiator_name
        self.target_name = target_name
        self.session_type = SessionType.NORMAL if target_name else SessionType.DISCOVERY
        self.isid, self.tsih, self.itt, self.cid = isid, tsih, itt, cid
        self.cmd_sn = cmd_sn
        self.exp_stat_sn = exp_stat_sn
        self.proposals = proposals or LoginProposals()
        self._chap = ChapInitiator(chap, mutual_chap) if chap is not None else None
        self._mutual = mutual_chap is not None
        self._negotiator = Negotiator(
            Role.INITIATOR,
            # Our own offers double as our preferences when the target offers first.
            local=dict(self.proposals.offers(SessionType.NORMAL)),
            session_type=self.session_type,
            leading=tsih == 0,
        )
        self._stage: int = LoginStage.SECURITY
        self._auth = _InitiatorAuth.AWAIT_METHOD
        self._assembler = TextAssembler()
        self._outbox = _Outbox()
        self._requested_nsg: int = LoginStage.OPERATIONAL
        self._started = False
        self.outcome: LoginDone | LoginRedirect | LoginFailed | None = None

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    def start(self) -> LoginRequest:
        """The first Login Request: names, session type and AuthMethod, asking to move on."""
        if self._started:
            raise RuntimeError("InitiatorLogin.start() called twice")
        self._started = True
        offer = self._negotiator.offer
        pairs = [offer("InitiatorName", self.initiator_name)]
        if self.proposals.initiator_alias:
            pairs.append(offer("InitiatorAlias", self.proposals.initiator_alias))
        pairs.append(offer("SessionType", self.session_type.value))
        if self.target_name:
            pairs.append(offer("TargetName", self.target_name))
        pairs.append(offer("AuthMethod", "CHAP,None" if self._chap else NONE))
        return self._send(pairs, transit=True, nsg=LoginStage.OPERATIONAL)

    def receive(self, resp: LoginResponse) -> LoginOutcome:
        """Take one Login Response; the next request or the final outcome."""
        if self.outcome is not None:
            return self.outcome
        try:
            return self._receive(resp)
        except TextError as error:
            # The peer is the target: an "initiator error" status would blame ourselves.
            status = error.status
            if status is LoginStatus.INITIATOR_ERROR:
                status = LoginStatus.TARGET_ERROR
            return self._finish(LoginFailed(status, str(error)))

    def _receive(self, resp: LoginResponse) -> LoginOutcome:
        raw_status = (resp.status_class << 8) | resp.status_detail
        if resp.status_class == 1:
            return self._finish(self._redirect(resp, raw_status))
        if resp.status_class != 0:
            message = f"target answered login status 0x{raw_status:04x}"
            return self._finish(LoginFailed(_status_of(raw_status), message, raw_status))
        self._check_header(resp)
        self.exp_stat_sn = sn_add(resp.stat_sn, 1)
        if self._outbox.pending:
            if resp.data or resp.cont or resp.transit:
                return self._protocol_error("target spoke while our text continued")
            return self._send_chunk()
        text = self._assembler.feed(resp.data, resp.cont)
        if text is None:  # the target has more: ask for it with an empty request
            return self._request(b"", transit=False, cont=False, nsg=self._stage)
        pairs = decode_text(text, terminated=False)
        replies = self._negotiator.receive(pairs, _phase(self._stage))
        if self._stage == LoginStage.SECURITY:
            return self._security(resp, pairs, replies)
        return self._operational(resp, replies)

    def _check_header(self, resp: LoginResponse) -> None:
        if resp.version_active != ISCSI_VERSION:
            raise NegotiationError("unsupported active version", LoginStatus.UNSUPPORTED_VERSION)
        if resp.isid != self.isid or resp.itt != self.itt:
            raise NegotiationError("response for another login", LoginStatus.TARGET_ERROR)
        if resp.cont and resp.transit:
            raise NegotiationError("response with C and T set", LoginStatus.TARGET_ERROR)
        if resp.csg != self._stage:
            raise NegotiationError(f"response in stage {resp.csg}", LoginStatus.TARGET_ERROR)
        if resp.transit and not self._stage < resp.nsg <= self._requested_nsg:
            raise NegotiationError(f"target moved to stage {resp.nsg}", LoginStatus.TARGET_ERROR)

    def _security(
        self, resp: LoginResponse, pairs: list[tuple[str, str]], replies: list[tuple[str, str]]
    ) -> LoginOutcome:
        chap_pairs = _chap_pairs(pairs, NegotiationError)
        try:
            replies = replies + self._auth_step(chap_pairs)
        except ChapError as error:
            return self._finish(LoginFailed(LoginStatus.AUTHENTICATION_FAILURE, str(error)))
        if resp.transit:
            if self._auth is not _InitiatorAuth.DONE:
                if self._chap is not None and self._mutual:
                    return self._finish(
                        LoginFailed(
                            LoginStatus.AUTHENTICATION_FAILURE, "target skipped mutual CHAP"
                        )
                    )
                self._auth = _InitiatorAuth.DONE
            return self._enter(resp.nsg, resp, replies)
        ready = self._auth in (_InitiatorAuth.DONE, _InitiatorAuth.AWAIT_RESULT)
        return self._send(replies, transit=ready, nsg=LoginStage.OPERATIONAL)

    def _auth_step(self, chap_pairs: dict[str, str]) -> list[tuple[str, str]]:
        """Advance authentication with the target's CHAP keys; pairs to send back."""
        if self._auth is _InitiatorAuth.AWAIT_METHOD:
            refused = self._negotiator.refused.get("AuthMethod")
            if refused is not None:
                raise ChapError(f"target answered AuthMethod={refused}")
            method = self._negotiator.agreed.get("AuthMethod")
            if method is None:
                if chap_pairs:
                    raise ChapError("CHAP keys before AuthMethod was agreed")
                return []
            if method == NONE:
                if self._mutual:
                    raise ChapError("target offers no authentication; mutual CHAP required")
                self._auth = _InitiatorAuth.DONE
                return self._no_chap(chap_pairs)
            assert self._chap is not None  # answer_is_legal: CHAP only if we offered it
            self._auth = _InitiatorAuth.AWAIT_CHALLENGE
            if "CHAP_C" not in chap_pairs:
                return self._chap.algorithms()
        if self._auth is _InitiatorAuth.AWAIT_CHALLENGE:
            assert self._chap is not None
            if "CHAP_C" not in chap_pairs:
                return self._no_chap(chap_pairs)
            self._auth = _InitiatorAuth.AWAIT_RESULT
            return self._chap.on_challenge(chap_pairs)
        if self._auth is _InitiatorAuth.AWAIT_RESULT:
            assert self._chap is not None
            if self._mutual:
                if not chap_pairs:
                    return []  # the target may still be working on it (a T=0 round)
                self._chap.on_target_response(chap_pairs)
            else:
                self._no_chap(chap_pairs)
            self._auth = _InitiatorAuth.DONE
            return []
        return self._no_chap(chap_pairs)

    @staticmethod
    def _no_chap(chap_pairs: dict[str, str]) -> list[tuple[str, str]]:
        if chap_pairs:
            raise ChapError(f"unexpected CHAP keys {sorted(chap_pairs)}")
        return []

    def _enter(
        self, stage: int, resp: LoginResponse, replies: list[tuple[str, str]]
    ) -> LoginOutcome:
        if stage == LoginStage.FULL_FEATURE:
            return self._done(resp)
        self._stage = LoginStage.OPERATIONAL
        offer = self._negotiator.offer
        pairs = replies + [
            offer(key, value) for key, value in self.proposals.offers(self.session_type)
        ]
        mrdsl = str(self.proposals.max_recv_data_segment_length)
        pairs.append(offer("MaxRecvDataSegmentLength", mrdsl))
        return self._send(pairs, transit=True, nsg=LoginStage.FULL_FEATURE)

    def _operational(self, resp: LoginResponse, replies: list[tuple[str, str]]) -> LoginOutcome:
        if resp.transit:
            return self._done(resp)
        return self._send(replies, transit=True, nsg=LoginStage.FULL_FEATURE)

    def _done(self, resp: LoginResponse) -> LoginOutcome:
        if resp.tsih == 0 or (self.tsih and resp.tsih != self.tsih):
            return self._protocol_error(f"final response with TSIH {resp.tsih}")
        for key in ("HeaderDigest", "DataDigest"):
            if self._negotiator.refused.get(key) == REJECT:
                # No digest choice in common: going on with the default (None) could
                # drop the integrity the caller asked for or the target requires.
                return self._protocol_error(f"target refused every {key} we offered")
        declared = self._negotiator.declared_by_peer
        tag = declared.get("TargetPortalGroupTag")
        base = SessionParams(
            session_type=self.session_type,
            initiator_name=self.initiator_name,
            target_name=self.target_name,
            initiator_alias=self.proposals.initiator_alias,
            target_alias=declared.get("TargetAlias"),
            target_portal_group_tag=int(tag) if tag is not None else None,
        )
        params = self._negotiator.session_params(base)
        self.tsih = resp.tsih
        return self._finish(
            LoginDone(params, resp.tsih, resp.stat_sn, resp.exp_cmd_sn, resp.max_cmd_sn)
        )

    def _redirect(self, resp: LoginResponse, raw_status: int) -> LoginRedirect | LoginFailed:
        if raw_status not in (
            LoginStatus.TARGET_MOVED_TEMPORARILY,
            LoginStatus.TARGET_MOVED_PERMANENTLY,
        ):
            return LoginFailed(
                _status_of(raw_status), f"redirect status 0x{raw_status:04x}", raw_status
            )
        try:
            address = _first_value(decode_text(resp.data, terminated=False), "TargetAddress")
            if address is None:
                raise MalformedText("redirect without TargetAddress")
            portal = parse_target_address(address)
        except TextError as error:
            return LoginFailed(LoginStatus.TARGET_ERROR, str(error), raw_status)
        permanent = raw_status == LoginStatus.TARGET_MOVED_PERMANENTLY
        return LoginRedirect(portal.host, portal.port, portal.tpgt, permanent)

    # -- requests ----------------------------------------------------------------------

    def _send(self, pairs: list[tuple[str, str]], *, transit: bool, nsg: int) -> LoginRequest:
        self._outbox.load(encode_text(pairs), LOGIN_DATA_SEGMENT_LENGTH, transit, nsg)
        return self._send_chunk()

    def _send_chunk(self) -> LoginRequest:
        chunk, more = self._outbox.next_chunk()
        if more:
            return self._request(chunk, transit=False, cont=True, nsg=self._stage)
        if self._outbox.transit:
            self._requested_nsg = self._outbox.nsg
        return self._request(chunk, transit=self._outbox.transit, cont=False, nsg=self._outbox.nsg)

    def _request(self, data: bytes, *, transit: bool, cont: bool, nsg: int) -> LoginRequest:
        return LoginRequest(
            transit=transit,
            cont=cont,
            csg=self._stage,
            nsg=nsg if transit else self._stage,
            version_max=ISCSI_VERSION,
            version_min=ISCSI_VERSION,
            isid=self.isid,
            tsih=self.tsih,
            itt=self.itt,
            cid=self.cid,
            cmd_sn=self.cmd_sn,
            exp_stat_sn=self.exp_stat_sn,
            data=data,
        )

    def _protocol_error(self, message: str) -> LoginFailed:
        failed = LoginFailed(LoginStatus.TARGET_ERROR, message)
        self.outcome = failed
        return failed

    def _finish(self, outcome: LoginDone | LoginRedirect | LoginFailed) -> LoginOutcome:
        self.outcome = outcome
        return outcome
