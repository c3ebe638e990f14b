"""Connect and log in, following redirects: the login phase as an initiator drives it.

``establish`` dials a portal, runs the login exchange and, on a 0x0101/0x0102 redirect,
dials the TargetAddress it names, up to ``max_redirects`` hops and never the same portal
twice in one attempt (a loop). The login exchange itself (security stage with CHAP,
operational negotiation) is driven by ``LoginExchange`` over the shared negotiation
engine (``iscsicore.negotiation``) and CHAP helpers (``iscsicore.chap``).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import trio

from iscsicore.chap import ChapError, ChapInitiator, ChapSecrets
from iscsicore.keys import (
    MalformedText,
    Phase,
    SessionParams,
    SessionType,
    TextError,
    decode_text,
    encode_text,
    parse_target_address,
)
from iscsicore.negotiation import Negotiator, Role
from iscsicore.pdu import (
    LoginRequest,
    LoginResponse,
    LoginStage,
    LoginStatus,
    LoginStatusClass,
)

from .connection import Connection
from .errors import (
    AuthenticationError,
    LoginError,
    RedirectError,
    TargetProtocolError,
)
from .url import ChapCredentials, Portal

DEFAULT_INITIATOR_NAME = "iqn.2026-11.org.stargate-emu:initiator"
_MAX_LOGIN_ROUNDS = 16  # a target that never lets us transit is broken, not slow


@dataclass(slots=True)
class LoginOptions:
    """What the initiator offers at login (QEMU/libiscsi-like defaults)."""

    initiator_name: str = DEFAULT_INITIATOR_NAME
    chap: ChapCredentials | None = None
    header_digest: bool = False  # offer CRC32C (preferred) instead of None only
    data_digest: bool = False
    max_recv_data_segment_length: int = 262144
    max_burst_length: int = 16776192
    first_burst_length: int = 262144
    initial_r2t: bool = False  # ask for unsolicited data, as libiscsi does
    immediate_data: bool = True
    default_time2wait: int = 2
    default_time2retain: int = 0  # ERL 0: nothing to retain
    max_redirects: int = 8
    connect_timeout: float = 5.0
    login_timeout: float = 10.0
    isid: int = field(default_factory=lambda: (0x80 << 40) | (secrets.randbits(24) << 16))


@dataclass(slots=True)
class Established:
    """A logged-in connection, ready for the full-feature phase."""

    connection: Connection
    params: SessionParams
    tsih: int
    stat_sn: int
    exp_cmd_sn: int
    max_cmd_sn: int
    redirects: int = 0


async def establish(
    portal: Portal,
    target: str | None,
    options: LoginOptions,
    *,
    session_type: SessionType = SessionType.NORMAL,
) -> Established:
    """Dial ``portal`` and log in to ``target`` (None: a discovery session)."""
    visited = {(portal.connect_host, portal.port)}
    current = portal
    for hops in range(options.max_redirects + 1):
        connection = await Connection.open(current, timeout=options.connect_timeout)
        try:
            with trio.fail_after(options.login_timeout):
                outcome = await LoginExchange(options, target, session_type).run(connection)
        except trio.TooSlowError:
            await connection.aclose()
            raise LoginError(f"login to {current} timed out") from None
        except BaseException:
            await connection.aclose()
            raise
        if isinstance(outcome, Established):
            outcome.redirects = hops
            return outcome
        await connection.aclose()
        key = (outcome.connect_host, outcome.port)
        if key in visited:
            raise RedirectError(f"redirect loop: {current} sent us back to {outcome}")
        visited.add(key)
        current = outcome
    raise RedirectError(f"more than {options.max_redirects} redirects, last to {current}")


class LoginExchange:
    """One connection's login: the security stage (AuthMethod, CHAP), then operational
    negotiation, until the target transits to full feature. Returns ``Established`` or,
    for a redirect, the ``Portal`` to go to."""

    def __init__(self, options: LoginOptions, target: str | None, session_type: SessionType):
        self.options = options
        self.target = target
        self.session_type = session_type
        self.negotiator = Negotiator(Role.INITIATOR, session_type=session_type)
        credentials = options.chap
        self.chap: ChapInitiator | None = None
        if credentials is not None:
            mutual = None
            if credentials.mutual:
                assert credentials.target_user is not None
                assert credentials.target_secret is not None
                mutual = ChapSecrets(credentials.target_user, credentials.target_secret)
            self.chap = ChapInitiator(ChapSecrets(credentials.user, credentials.secret), mutual)
        self.cmd_sn = 1
        self.exp_stat_sn = 0
        self.stage = LoginStage.SECURITY
        self.tsih = 0
        self.chap_answered = False  # we answered the target's challenge

    async def run(self, connection: Connection) -> Established | Portal:
        request = self._first_request()
        for _round in range(_MAX_LOGIN_ROUNDS):
            await connection.send([request])
            response = await connection.receive()
            if not isinstance(response, LoginResponse):
                raise TargetProtocolError(f"expected a Login Response, got {response.opcode.name}")
            outcome = self._on_response(response)
            if isinstance(outcome, LoginRequest):
                request = outcome
                continue
            if isinstance(outcome, Portal):
                return outcome
            params = outcome
            connection.enable_full_feature(
                header_digest=params.header_digest,
                data_digest=params.data_digest,
                max_recv_data_segment_length=params.initiator_max_recv_data_segment_length,
            )
            return Established(
                connection,
                params,
                response.tsih,
                response.stat_sn,
                response.exp_cmd_sn,
                response.max_cmd_sn,
            )
        raise LoginError(f"login did not complete in {_MAX_LOGIN_ROUNDS} rounds")

    # ------------------------------------------------------------------ requests

    def _request(
        self, pairs: list[tuple[str, str]], *, transit: bool, nsg: LoginStage
    ) -> LoginRequest:
        return LoginRequest(
            transit=transit,
            csg=self.stage,
            nsg=nsg if transit else LoginStage.SECURITY,
            isid=self.options.isid,
            tsih=self.tsih,
            itt=0,
            cid=0,
            cmd_sn=self.cmd_sn,
            exp_stat_sn=self.exp_stat_sn,
            data=encode_text(pairs),
        )

    def _first_request(self) -> LoginRequest:
        offer = self.negotiator.offer
        pairs = [
            offer("InitiatorName", self.options.initiator_name),
            offer("SessionType", self.session_type.value),
        ]
        if self.target is not None:
            pairs.append(offer("TargetName", self.target))
        if self.chap is not None:
            pairs.append(offer("AuthMethod", "CHAP"))
            # Stay in the security stage until CHAP is done.
            return self._request(pairs, transit=False, nsg=LoginStage.OPERATIONAL)
        pairs.append(offer("AuthMethod", "None"))
        return self._request(pairs, transit=True, nsg=LoginStage.OPERATIONAL)

    def _operational_offers(self) -> list[tuple[str, str]]:
        o = self.options
        offer = self.negotiator.offer

        def yes_no(flag: bool) -> str:
            return "Yes" if flag else "No"

        def digest(flag: bool) -> str:
            return "CRC32C,None" if flag else "None"

        pairs = [
            offer("HeaderDigest", digest(o.header_digest)),
            offer("DataDigest", digest(o.data_digest)),
            offer("MaxRecvDataSegmentLength", str(o.max_recv_data_segment_length)),
        ]
        if self.session_type is SessionType.NORMAL:
            pairs += [
                offer("InitialR2T", yes_no(o.initial_r2t)),
                offer("ImmediateData", yes_no(o.immediate_data)),
                offer("MaxBurstLength", str(o.max_burst_length)),
                offer("FirstBurstLength", str(o.first_burst_length)),
                offer("MaxOutstandingR2T", "1"),
                offer("MaxConnections", "1"),
                offer("ErrorRecoveryLevel", "0"),
                offer("DefaultTime2Wait", str(o.default_time2wait)),
                offer("DefaultTime2Retain", str(o.default_time2retain)),
                offer("DataPDUInOrder", "Yes"),
                offer("DataSequenceInOrder", "Yes"),
            ]
        return pairs

    # ------------------------------------------------------------------ responses

    def _on_response(self, response: LoginResponse) -> LoginRequest | Portal | SessionParams:
        status = (response.status_class << 8) | response.status_detail
        pairs = self._decode(response)
        if response.status_class == LoginStatusClass.REDIRECTION:
            return self._redirect(status, pairs)
        if response.status_class != LoginStatusClass.SUCCESS:
            raise _login_failure(status)
        self.exp_stat_sn = (response.stat_sn + 1) & 0xFFFFFFFF
        self.tsih = response.tsih
        if response.csg != self.stage:
            raise TargetProtocolError(
                f"login response for stage {response.csg}, we are in {self.stage}"
            )
        phase = Phase.SECURITY if self.stage == LoginStage.SECURITY else Phase.OPERATIONAL
        try:
            replies = self.negotiator.receive(pairs, phase)
            replies += self._chap_step(dict(pairs))
        except ChapError as error:
            raise AuthenticationError(
                f"CHAP: {error}", LoginStatus.AUTHENTICATION_FAILURE
            ) from None
        except TextError as error:
            raise LoginError(f"negotiation failed: {error}", int(error.status)) from None
        if response.transit:
            if response.nsg == LoginStage.FULL_FEATURE:
                if self.chap is not None and self.chap.mutual is not None:
                    if not self.chap.target_verified:
                        raise AuthenticationError("target skipped mutual CHAP", 0x0201)
                return self.negotiator.session_params()
            if response.nsg == LoginStage.OPERATIONAL and self.stage == LoginStage.SECURITY:
                self.stage = LoginStage.OPERATIONAL
                return self._request(
                    replies + self._operational_offers(),
                    transit=True,
                    nsg=LoginStage.FULL_FEATURE,
                )
            raise TargetProtocolError(f"target transits to unexpected stage {response.nsg}")
        # Same stage: answer, and ask to move on when we have nothing left to say.
        if self.stage == LoginStage.SECURITY:
            done = self.chap is None or self.chap_answered
            return self._request(replies, transit=done, nsg=LoginStage.OPERATIONAL)
        return self._request(replies, transit=True, nsg=LoginStage.FULL_FEATURE)

    def _chap_step(self, pairs: dict[str, str]) -> list[tuple[str, str]]:
        if self.chap is None or self.stage != LoginStage.SECURITY:
            return []
        if "CHAP_C" in pairs:
            self.chap_answered = True
            return self.chap.on_challenge(pairs)
        if "CHAP_R" in pairs:
            self.chap.on_target_response(pairs)
            return []
        if pairs.get("AuthMethod") == "CHAP" and not self.chap_answered:
            return self.chap.algorithms()
        if "AuthMethod" in pairs and pairs["AuthMethod"] != "CHAP":
            raise AuthenticationError(f"target refused CHAP (AuthMethod={pairs['AuthMethod']})")
        return []

    def _decode(self, response: LoginResponse) -> list[tuple[str, str]]:
        if response.cont:
            raise TargetProtocolError("multi-PDU login text is not supported")
        try:
            return decode_text(response.data)
        except MalformedText as error:
            raise TargetProtocolError(f"malformed login text: {error}") from None

    def _redirect(self, status: int, pairs: list[tuple[str, str]]) -> Portal:
        if status not in (
            LoginStatus.TARGET_MOVED_TEMPORARILY,
            LoginStatus.TARGET_MOVED_PERMANENTLY,
        ):
            raise LoginError(f"unknown redirection status {status:#06x}", status)
        addresses = [value for key, value in pairs if key == "TargetAddress"]
        if not addresses:
            raise RedirectError(f"redirect {status:#06x} without TargetAddress", status)
        try:
            address = parse_target_address(addresses[0])
        except MalformedText as error:
            raise RedirectError(f"bad TargetAddress {addresses[0]!r}: {error}", status) from None
        return Portal(address.host, address.port, address.tpgt)


def _login_failure(status: int) -> LoginError:
    try:
        name = LoginStatus(status).name.replace("_", " ").lower()
    except ValueError:
        name = "unknown status"
    message = f"login refused: {name} ({status:#06x})"
    if status == LoginStatus.AUTHENTICATION_FAILURE:
        return AuthenticationError(message, status)
    return LoginError(message, status)
