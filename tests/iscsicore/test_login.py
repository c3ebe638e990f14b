"""Full logins between InitiatorLogin and TargetLogin in memory, and the target's answers
to hand-made requests that break the rules."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iscsicore.chap import ChapSecrets
from iscsicore.keys import (
    CHAP_KEYS,
    SessionType,
    decode_text,
    encode_text,
)
from iscsicore.login import (
    Accept,
    InitiatorLogin,
    LoginDone,
    LoginFailed,
    LoginProposals,
    LoginRedirect,
    Redirect,
    Refuse,
    Resolution,
    SessionRequest,
    TargetLogin,
    TargetLoginConfig,
)
from iscsicore.pdu import LoginRequest, LoginResponse, LoginStage, LoginStatus

INITIATOR = "iqn.2024-01.org.example:host1"
TARGET = "iqn.2010-06.com.nutanix:vmdisk-42"
ISID = 0x400001370000
USER = ChapSecrets("host1", "initiator-secret-16")
TARGET_SECRET = ChapSecrets("stargate", "target-secret-1234")


@dataclass
class Policy:
    """A resolve() and TSIH allocator recording what they were asked."""

    resolution: Resolution = field(default_factory=Accept)
    asked: list[tuple[str, str | None, SessionType]] = field(default_factory=list)
    sessions: list[SessionRequest] = field(default_factory=list)
    next_tsih: int = 7

    def resolve(self, initiator: str, target: str | None, kind: SessionType) -> Resolution:
        self.asked.append((initiator, target, kind))
        return self.resolution

    def allocate(self, request: SessionRequest) -> int | Refuse:
        self.sessions.append(request)
        return self.next_tsih


def make_target(policy: Policy, **overrides: object) -> TargetLogin:
    config = TargetLoginConfig(
        portal_group_tag=1,
        resolve=policy.resolve,
        allocate_tsih=policy.allocate,
        initial_stat_sn=lambda: 1000,
        **overrides,  # type: ignore[arg-type]
    )
    return TargetLogin(config)


@dataclass
class Transcript:
    requests: list[LoginRequest] = field(default_factory=list)
    responses: list[LoginResponse] = field(default_factory=list)


def run_login(
    initiator: InitiatorLogin, target: TargetLogin, transcript: Transcript | None = None
) -> LoginDone | LoginRedirect | LoginFailed:
    """Feed each side's output to the other until the initiator has an outcome."""
    record = transcript or Transcript()
    request = initiator.start()
    for _ in range(64):
        record.requests.append(request)
        response = target.receive(request)
        record.responses.append(response)
        outcome = initiator.receive(response)
        if not isinstance(outcome, LoginRequest):
            return outcome
        request = outcome
    raise AssertionError("login did not converge")


def test_login_without_authentication() -> None:
    policy = Policy()
    target = make_target(policy)
    transcript = Transcript()
    outcome = run_login(InitiatorLogin(INITIATOR, TARGET, ISID), target, transcript)
    assert isinstance(outcome, LoginDone)
    assert target.complete and not target.failed
    assert outcome.tsih == target.tsih == 7
    assert policy.asked == [(INITIATOR, TARGET, SessionType.NORMAL)]
    assert policy.sessions[0].isid == ISID
    # StatSN: one per login response, counted from the chosen initial value.
    assert [r.stat_sn for r in transcript.responses] == list(
        range(1000, 1000 + len(transcript.responses))
    )
    assert outcome.stat_sn == transcript.responses[-1].stat_sn
    assert target.stat_sn == outcome.stat_sn + 1
    assert outcome.exp_cmd_sn == 0 and outcome.max_cmd_sn == 63
    # Both sides agree on every negotiated value.
    assert outcome.params == target.params
    params = outcome.params
    assert params.target_name == TARGET and params.initiator_name == INITIATOR
    assert params.target_portal_group_tag == 1
    assert params.initiator_max_recv_data_segment_length == 262144
    assert params.target_max_recv_data_segment_length == 262144
    assert params.immediate_data and not params.initial_r2t
    assert params.max_outstanding_r2t == 1
    # The final response goes to full feature phase with the TSIH.
    final = transcript.responses[-1]
    assert final.transit and final.nsg == LoginStage.FULL_FEATURE and final.tsih == 7


def test_chap_one_way() -> None:
    policy = Policy(Accept(chap=USER))
    target = make_target(policy)
    transcript = Transcript()
    outcome = run_login(InitiatorLogin(INITIATOR, TARGET, ISID, chap=USER), target, transcript)
    assert isinstance(outcome, LoginDone)
    sent = [key for r in transcript.requests for key, _ in decode_text(r.data)]
    assert {"CHAP_A", "CHAP_N", "CHAP_R"} <= set(sent)
    assert "CHAP_C" not in sent  # no mutual challenge


def test_chap_mutual() -> None:
    policy = Policy(Accept(chap=USER, mutual=TARGET_SECRET))
    target = make_target(policy)
    transcript = Transcript()
    login = InitiatorLogin(INITIATOR, TARGET, ISID, chap=USER, mutual_chap=TARGET_SECRET)
    outcome = run_login(login, target, transcript)
    assert isinstance(outcome, LoginDone), outcome
    answered = [key for r in transcript.responses for key, _ in decode_text(r.data)]
    assert {"CHAP_N", "CHAP_R"} <= set(answered)


def test_wrong_chap_secret_fails_with_0201() -> None:
    target = make_target(Policy(Accept(chap=USER)))
    login = InitiatorLogin(INITIATOR, TARGET, ISID, chap=ChapSecrets("host1", "not-the-secret"))
    outcome = run_login(login, target)
    assert isinstance(outcome, LoginFailed)
    assert outcome.status is LoginStatus.AUTHENTICATION_FAILURE
    assert outcome.raw_status == 0x0201
    assert target.failed


def test_wrong_chap_name_fails() -> None:
    target = make_target(Policy(Accept(chap=USER)))
    login = InitiatorLogin(INITIATOR, TARGET, ISID, chap=ChapSecrets("intruder", USER.secret))
    outcome = run_login(login, target)
    assert isinstance(outcome, LoginFailed) and outcome.raw_status == 0x0201


def test_wrong_target_mutual_secret_fails_the_initiator() -> None:
    target = make_target(Policy(Accept(chap=USER, mutual=ChapSecrets("stargate", "impostor-1234"))))
    login = InitiatorLogin(INITIATOR, TARGET, ISID, chap=USER, mutual_chap=TARGET_SECRET)
    outcome = run_login(login, target)
    assert isinstance(outcome, LoginFailed)
    assert outcome.status is LoginStatus.AUTHENTICATION_FAILURE
    assert outcome.raw_status == 0  # detected by the initiator


def test_mutual_asked_but_target_has_no_secret() -> None:
    target = make_target(Policy(Accept(chap=USER)))
    login = InitiatorLogin(INITIATOR, TARGET, ISID, chap=USER, mutual_chap=TARGET_SECRET)
    outcome = run_login(login, target)
    assert isinstance(outcome, LoginFailed) and outcome.raw_status == 0x0201


def test_auth_none_when_target_requires_chap() -> None:
    target = make_target(Policy(Accept(chap=USER)))
    outcome = run_login(InitiatorLogin(INITIATOR, TARGET, ISID), target)
    assert isinstance(outcome, LoginFailed) and outcome.raw_status == 0x0201


def test_initiator_offering_chap_to_an_open_target_gets_none() -> None:
    target = make_target(Policy())
    outcome = run_login(InitiatorLogin(INITIATOR, TARGET, ISID, chap=USER), target)
    assert isinstance(outcome, LoginDone)


def test_mutual_initiator_refuses_an_open_target() -> None:
    target = make_target(Policy())
    login = InitiatorLogin(INITIATOR, TARGET, ISID, chap=USER, mutual_chap=TARGET_SECRET)
    outcome = run_login(login, target)
    assert isinstance(outcome, LoginFailed)
    assert outcome.status is LoginStatus.AUTHENTICATION_FAILURE


def test_discovery_session() -> None:
    policy = Policy()
    target = make_target(policy)
    transcript = Transcript()
    outcome = run_login(InitiatorLogin(INITIATOR, None, ISID), target, transcript)
    assert isinstance(outcome, LoginDone)
    assert outcome.params.session_type is SessionType.DISCOVERY
    assert policy.asked == [(INITIATOR, None, SessionType.DISCOVERY)]
    sent = {key for r in transcript.requests for key, _ in decode_text(r.data)}
    assert "TargetName" not in sent and "MaxBurstLength" not in sent


def test_discovery_keys_answered_irrelevant() -> None:
    target = make_target(Policy())
    first = LoginRequest(
        transit=True,
        csg=LoginStage.OPERATIONAL,
        nsg=LoginStage.FULL_FEATURE,
        isid=ISID,
        data=encode_text(
            [
                ("InitiatorName", INITIATOR),
                ("SessionType", "Discovery"),
                ("MaxBurstLength", "65536"),
                ("HeaderDigest", "None"),
            ]
        ),
    )
    response = target.receive(first)
    answers = dict(decode_text(response.data))
    assert answers["MaxBurstLength"] == "Irrelevant"
    assert answers["HeaderDigest"] == "None"
    assert target.complete and response.transit


@pytest.mark.parametrize(
    ("permanent", "address", "host", "port", "status"),
    [
        (False, "10.1.2.3:3261,1", "10.1.2.3", 3261, 0x0101),
        (True, "10.1.2.3:3261,1", "10.1.2.3", 3261, 0x0102),
        (False, "[fd00::5]:3262,2", "fd00::5", 3262, 0x0101),
        (True, "[::1]:3260,1", "::1", 3260, 0x0102),
    ],
)
def test_redirect(permanent: bool, address: str, host: str, port: int, status: int) -> None:
    target = make_target(Policy(Redirect(address, permanent)))
    transcript = Transcript()
    outcome = run_login(InitiatorLogin(INITIATOR, TARGET, ISID), target, transcript)
    assert outcome == LoginRedirect(host, port, int(address.rsplit(",", 1)[1]), permanent)
    response = transcript.responses[-1]
    assert (response.status_class << 8 | response.status_detail) == status
    assert decode_text(response.data) == [("TargetAddress", address)]
    assert target.redirected and target.finished


@pytest.mark.parametrize(
    "status", [LoginStatus.NOT_FOUND, LoginStatus.AUTHORIZATION_FAILURE, LoginStatus.TARGET_REMOVED]
)
def test_refusal(status: LoginStatus) -> None:
    target = make_target(Policy(Refuse(status)))
    outcome = run_login(InitiatorLogin(INITIATOR, TARGET, ISID), target)
    assert isinstance(outcome, LoginFailed)
    assert outcome.status is status and outcome.raw_status == status.value
    assert target.failed
    # No further PDUs are accepted: the same refusal comes back.
    again = target.receive(LoginRequest(isid=ISID, data=encode_text([("InitiatorName", "x")])))
    assert (again.status_class, again.status_detail) == (status.status_class, status.status_detail)


def test_tsih_allocator_may_refuse() -> None:
    policy = Policy()
    target = make_target(policy)
    target.config.allocate_tsih = lambda request: Refuse(LoginStatus.OUT_OF_RESOURCES)
    outcome = run_login(InitiatorLogin(INITIATOR, TARGET, ISID), target)
    assert isinstance(outcome, LoginFailed) and outcome.raw_status == 0x0302


def request(pairs: list[tuple[str, str]], **fields: object) -> LoginRequest:
    defaults: dict[str, object] = {
        "transit": True,
        "csg": LoginStage.SECURITY,
        "nsg": LoginStage.OPERATIONAL,
        "isid": ISID,
    }
    defaults.update(fields)
    return LoginRequest(data=encode_text(pairs), **defaults)  # type: ignore[arg-type]


def status_of(response: LoginResponse) -> int:
    return response.status_class << 8 | response.status_detail


def test_missing_initiator_name_is_0207() -> None:
    target = make_target(Policy())
    response = target.receive(request([("TargetName", TARGET)]))
    assert status_of(response) == 0x0207 and target.failed


def test_missing_target_name_in_normal_session_is_0207() -> None:
    target = make_target(Policy())
    response = target.receive(request([("InitiatorName", INITIATOR)]))
    assert status_of(response) == 0x0207


def test_unknown_session_type_is_0209() -> None:
    target = make_target(Policy())
    pairs = [("InitiatorName", INITIATOR), ("SessionType", "Party"), ("TargetName", TARGET)]
    assert status_of(target.receive(request(pairs))) == 0x0209


def test_unsupported_version_is_0205() -> None:
    target = make_target(Policy())
    pairs = [("InitiatorName", INITIATOR), ("TargetName", TARGET)]
    response = target.receive(request(pairs, version_min=1, version_max=2))
    assert status_of(response) == 0x0205


def test_starting_at_operational_stage_needs_no_auth() -> None:
    pairs = [("InitiatorName", INITIATOR), ("TargetName", TARGET)]
    open_target = make_target(Policy())
    response = open_target.receive(
        request(pairs, csg=LoginStage.OPERATIONAL, nsg=LoginStage.FULL_FEATURE)
    )
    assert status_of(response) == 0 and open_target.complete
    chap_target = make_target(Policy(Accept(chap=USER)))
    response = chap_target.receive(
        request(pairs, csg=LoginStage.OPERATIONAL, nsg=LoginStage.FULL_FEATURE)
    )
    assert status_of(response) == 0x0201


@pytest.mark.parametrize(
    ("csg", "nsg"),
    [
        (LoginStage.SECURITY, LoginStage.SECURITY),
        (LoginStage.OPERATIONAL, LoginStage.SECURITY),
        (LoginStage.OPERATIONAL, LoginStage.OPERATIONAL),
        (LoginStage.SECURITY, 2),
        (LoginStage.FULL_FEATURE, LoginStage.FULL_FEATURE),
    ],
)
def test_illegal_transitions_are_0200(csg: int, nsg: int) -> None:
    target = make_target(Policy())
    pairs = [("InitiatorName", INITIATOR), ("TargetName", TARGET)]
    assert status_of(target.receive(request(pairs, csg=csg, nsg=nsg))) == 0x0200


def test_c_and_t_together_is_0200() -> None:
    target = make_target(Policy())
    pairs = [("InitiatorName", INITIATOR), ("TargetName", TARGET)]
    assert status_of(target.receive(request(pairs, cont=True))) == 0x0200


def test_key_sent_twice_is_0200() -> None:
    target = make_target(Policy())
    first = target.receive(
        request([("InitiatorName", INITIATOR), ("TargetName", TARGET), ("AuthMethod", "None")])
    )
    assert status_of(first) == 0 and first.transit
    pairs = [("MaxBurstLength", "65536"), ("MaxBurstLength", "4096")]
    response = target.receive(
        request(pairs, csg=LoginStage.OPERATIONAL, nsg=LoginStage.FULL_FEATURE)
    )
    assert status_of(response) == 0x0200


def test_stage_must_follow_the_target() -> None:
    """After the target stayed in security (T=0), an operational PDU is out of order."""
    target = make_target(Policy(Accept(chap=USER)))
    first = target.receive(
        request([("InitiatorName", INITIATOR), ("TargetName", TARGET), ("AuthMethod", "CHAP")])
    )
    assert not first.transit and dict(decode_text(first.data))["AuthMethod"] == "CHAP"
    response = target.receive(request([], csg=LoginStage.OPERATIONAL, nsg=LoginStage.FULL_FEATURE))
    assert status_of(response) == 0x0200


def test_garbage_text_is_an_initiator_error() -> None:
    target = make_target(Policy())
    response = target.receive(LoginRequest(isid=ISID, data=b"no equals sign\0"))
    assert status_of(response) == 0x0200


def test_continuation_both_directions_with_a_tiny_split(monkeypatch: pytest.MonkeyPatch) -> None:
    import iscsicore.login as login_module

    monkeypatch.setattr(login_module, "LOGIN_DATA_SEGMENT_LENGTH", 16)
    policy = Policy(Accept(chap=USER, mutual=TARGET_SECRET, target_alias="vdisk-42"))
    target = make_target(policy)
    transcript = Transcript()
    login = InitiatorLogin(
        INITIATOR,
        TARGET,
        ISID,
        chap=USER,
        mutual_chap=TARGET_SECRET,
        proposals=LoginProposals(header_digest=("CRC32C", "None"), initiator_alias="host one"),
    )
    outcome = run_login(login, target, transcript)
    assert isinstance(outcome, LoginDone), outcome
    assert all(len(r.data) <= 16 for r in transcript.requests + transcript.responses)
    assert any(r.cont for r in transcript.requests) and any(r.cont for r in transcript.responses)
    assert outcome.params == target.params
    assert outcome.params.header_digest and outcome.params.target_alias == "vdisk-42"
    assert outcome.params.initiator_alias == "host one"


@pytest.mark.parametrize("size", [1, 3, 7, 64, 333])
@pytest.mark.parametrize("mode", ["none", "chap", "mutual", "discovery"])
def test_continuation_at_many_split_sizes(
    monkeypatch: pytest.MonkeyPatch, size: int, mode: str
) -> None:
    import iscsicore.login as login_module

    monkeypatch.setattr(login_module, "LOGIN_DATA_SEGMENT_LENGTH", size)
    chap = USER if mode in ("chap", "mutual") else None
    mutual = TARGET_SECRET if mode == "mutual" else None
    target = make_target(Policy(Accept(chap=chap, mutual=mutual)))
    login = InitiatorLogin(
        INITIATOR, None if mode == "discovery" else TARGET, ISID, chap=chap, mutual_chap=mutual
    )
    outcome = _run_long(login, target)
    assert isinstance(outcome, LoginDone), outcome
    assert outcome.params == target.params


def _run_long(
    initiator: InitiatorLogin, target: TargetLogin
) -> LoginDone | LoginRedirect | LoginFailed:
    """run_login with room for the thousands of rounds a 1-byte split needs."""
    message = initiator.start()
    for _ in range(20000):
        outcome = initiator.receive(target.receive(message))
        if not isinstance(outcome, LoginRequest):
            return outcome
        message = outcome
    raise AssertionError("login did not converge")


def test_joining_an_existing_session_goes_through_the_allocator() -> None:
    asked: list[SessionRequest] = []

    def allocate(request: SessionRequest) -> int | Refuse:
        asked.append(request)
        if request.tsih == 0x55:
            return 0x55
        return Refuse(LoginStatus.SESSION_DOES_NOT_EXIST)

    policy = Policy()
    target = make_target(policy)
    target.config.allocate_tsih = allocate
    outcome = run_login(InitiatorLogin(INITIATOR, TARGET, ISID, tsih=0x55, cid=1), target)
    assert isinstance(outcome, LoginDone) and outcome.tsih == 0x55
    assert asked[-1].tsih == 0x55 and asked[-1].cid == 1
    # A connection that is not leading answers leading-only keys Irrelevant.
    assert outcome.params.max_burst_length == 262144
    target = make_target(policy)
    target.config.allocate_tsih = allocate
    outcome = run_login(InitiatorLogin(INITIATOR, TARGET, ISID, tsih=0x66), target)
    assert isinstance(outcome, LoginFailed) and outcome.raw_status == 0x020A


def test_initiator_checks_the_final_tsih() -> None:
    login = InitiatorLogin(INITIATOR, TARGET, ISID)
    first = login.start()
    response = LoginResponse(
        transit=True,
        csg=LoginStage.SECURITY,
        nsg=LoginStage.OPERATIONAL,
        isid=ISID,
        data=encode_text([("AuthMethod", "None")]),
    )
    operational = login.receive(response)
    assert isinstance(operational, LoginRequest) and operational.csg == LoginStage.OPERATIONAL
    assert first.exp_stat_sn == 0 and operational.exp_stat_sn == 1
    final = LoginResponse(
        transit=True, csg=LoginStage.OPERATIONAL, nsg=LoginStage.FULL_FEATURE, isid=ISID, tsih=0
    )
    outcome = login.receive(final)
    assert isinstance(outcome, LoginFailed) and "TSIH" in outcome.message


def test_initiator_refuses_a_jump_it_did_not_ask_for() -> None:
    login = InitiatorLogin(INITIATOR, TARGET, ISID)
    login.start()
    response = LoginResponse(
        transit=True, csg=LoginStage.SECURITY, nsg=LoginStage.FULL_FEATURE, isid=ISID, tsih=1
    )
    outcome = login.receive(response)
    assert isinstance(outcome, LoginFailed)


def test_redirect_without_address_fails() -> None:
    login = InitiatorLogin(INITIATOR, TARGET, ISID)
    login.start()
    outcome = login.receive(LoginResponse(isid=ISID, status_class=1, status_detail=1))
    assert isinstance(outcome, LoginFailed) and outcome.raw_status == 0x0101


@given(
    st.lists(
        st.builds(
            LoginResponse,
            transit=st.booleans(),
            cont=st.booleans(),
            csg=st.integers(0, 3),
            nsg=st.integers(0, 3),
            version_active=st.integers(0, 1),
            isid=st.sampled_from([ISID, 1]),
            tsih=st.integers(0, 3),
            status_class=st.sampled_from([0, 0, 0, 1, 2, 3]),
            status_detail=st.integers(0, 12),
            data=st.one_of(
                st.binary(max_size=60),
                st.lists(
                    st.tuples(
                        st.sampled_from(
                            [
                                "AuthMethod",
                                "CHAP_A",
                                "CHAP_I",
                                "CHAP_C",
                                "CHAP_N",
                                "CHAP_R",
                                "TargetAddress",
                                "MaxBurstLength",
                                "HeaderDigest",
                                "X-y",
                            ]
                        ),
                        st.sampled_from(
                            ["None", "CHAP", "5", "0x0102", "1", "Reject", "[::1]:1,1"]
                        ),
                    ),
                    max_size=5,
                ).map(encode_text),
            ),
        ),
        max_size=6,
    )
)
def test_initiator_survives_any_responses(responses: list[LoginResponse]) -> None:
    login = InitiatorLogin(INITIATOR, TARGET, ISID, chap=USER, mutual_chap=TARGET_SECRET)
    login.start()
    for response in responses:
        outcome = login.receive(response)  # never raises
        assert isinstance(outcome, LoginRequest | LoginDone | LoginRedirect | LoginFailed)


def test_target_offers_limits_the_initiator_left_out() -> None:
    """An initiator that offers nothing still ends within the target's stricter limits."""
    target = make_target(
        Policy(), max_burst_length=16384, first_burst_length=8192, immediate_data=False
    )
    hello = [("InitiatorName", INITIATOR), ("TargetName", TARGET)]
    first = target.receive(request(hello, csg=LoginStage.OPERATIONAL, nsg=LoginStage.FULL_FEATURE))
    offers = dict(decode_text(first.data))
    assert not first.transit and status_of(first) == 0
    assert offers["MaxBurstLength"] == "16384" and offers["FirstBurstLength"] == "8192"
    assert offers["ImmediateData"] == "No"
    assert "MaxOutstandingR2T" not in offers and "InitialR2T" not in offers
    answers = [("MaxBurstLength", "16384"), ("FirstBurstLength", "4096")]
    final = target.receive(
        request(answers, csg=LoginStage.OPERATIONAL, nsg=LoginStage.FULL_FEATURE)
    )
    assert final.transit and target.complete
    assert target.params.max_burst_length == 16384
    assert target.params.first_burst_length == 4096
    assert not target.params.immediate_data  # AND offered No: no answer needed


def test_target_offers_are_answered_by_the_initiator() -> None:
    target = make_target(Policy(), max_burst_length=4096, default_time2wait=10)
    proposals = LoginProposals(max_burst_length=1 << 20, first_burst_length=1 << 20)
    login = InitiatorLogin(INITIATOR, None, ISID, proposals=proposals)  # discovery: few keys
    transcript = Transcript()
    outcome = run_login(login, target, transcript)
    assert isinstance(outcome, LoginDone)
    assert outcome.params == target.params
    assert outcome.params.default_time2wait == 10
    assert outcome.params.max_burst_length == 262144  # irrelevant in discovery: not offered
    normal = InitiatorLogin(INITIATOR, TARGET, ISID, proposals=proposals)
    target = make_target(Policy(), max_burst_length=4096)
    outcome = run_login(normal, target)
    assert isinstance(outcome, LoginDone)
    assert outcome.params.max_burst_length == outcome.params.first_burst_length == 4096


def test_login_request_after_success_does_not_undo_it() -> None:
    target = make_target(Policy())
    outcome = run_login(InitiatorLogin(INITIATOR, TARGET, ISID), target)
    assert isinstance(outcome, LoginDone)
    late = target.receive(request([("InitiatorName", INITIATOR), ("TargetName", TARGET)]))
    assert status_of(late) == 0x0200
    assert target.complete and target.tsih == outcome.tsih


def test_redirect_builder_brackets_ipv6() -> None:
    assert Redirect.to("fd00::7", 3261, 1) == Redirect("[fd00::7]:3261,1", False)
    assert Redirect.to("127.0.0.9", 3261, 2, permanent=True) == Redirect("127.0.0.9:3261,2", True)
    target = make_target(Policy(Redirect.to("::ffff:127.0.0.1", 3262, 1)))
    outcome = run_login(InitiatorLogin(INITIATOR, TARGET, ISID), target)
    assert outcome == LoginRedirect("::ffff:127.0.0.1", 3262, 1, False)


def test_security_straight_to_full_feature_sends_only_security_keys() -> None:
    """open-iscsi discovery may jump from security to full feature; it refuses any
    operational key in a security-stage response."""
    target = make_target(Policy())
    pairs = [("InitiatorName", INITIATOR), ("SessionType", "Discovery"), ("AuthMethod", "None")]
    response = target.receive(request(pairs, nsg=LoginStage.FULL_FEATURE))
    assert response.transit and response.nsg == LoginStage.FULL_FEATURE and target.complete
    assert {key for key, _ in decode_text(response.data)} <= {
        "AuthMethod",
        "TargetPortalGroupTag",
        "TargetAlias",
    }
    assert target.params.target_max_recv_data_segment_length == 8192  # nothing declared
    small = make_target(Policy(), max_recv_data_segment_length=4096)
    response = small.receive(request(pairs, nsg=LoginStage.FULL_FEATURE))
    assert dict(decode_text(response.data))["MaxRecvDataSegmentLength"] == "4096"


def test_initiator_ignoring_target_offers_is_not_kept_waiting() -> None:
    target = make_target(Policy(), max_burst_length=16384)
    hello = [("InitiatorName", INITIATOR), ("TargetName", TARGET)]
    operational = {"csg": LoginStage.OPERATIONAL, "nsg": LoginStage.FULL_FEATURE}
    first = target.receive(request(hello, **operational))
    assert not first.transit and ("MaxBurstLength", "16384") in decode_text(first.data)
    final = target.receive(request([], **operational))
    assert final.transit and target.complete


@pytest.mark.parametrize("key", ["header_digest", "data_digest"])
def test_required_digest_refused_fails_the_initiator(key: str) -> None:
    target = make_target(Policy(), **{f"{key}s": ("None",)})
    proposals = LoginProposals(**{key: ("CRC32C",)})  # type: ignore[arg-type]
    outcome = run_login(InitiatorLogin(INITIATOR, TARGET, ISID, proposals=proposals), target)
    assert isinstance(outcome, LoginFailed) and "Digest" in outcome.message
    preferred = LoginProposals(**{key: ("CRC32C", "None")})  # type: ignore[arg-type]
    target = make_target(Policy(), **{f"{key}s": ("None",)})
    outcome = run_login(InitiatorLogin(INITIATOR, TARGET, ISID, proposals=preferred), target)
    assert isinstance(outcome, LoginDone) and not getattr(outcome.params, key)


def test_target_requiring_digests_refuses_an_initiator_without() -> None:
    operational = {"csg": LoginStage.OPERATIONAL, "nsg": LoginStage.FULL_FEATURE}
    hello = [("InitiatorName", INITIATOR), ("TargetName", TARGET)]
    # Ignoring the target's CRC32C offer, or answering it with None, ends the login.
    for answer in ([], [("HeaderDigest", "None")]):
        target = make_target(Policy(), header_digests=("CRC32C",))
        offer = target.receive(request(hello, **operational))
        assert ("HeaderDigest", "CRC32C") in decode_text(offer.data) and not offer.transit
        refused = target.receive(request(answer, **operational))
        assert status_of(refused) == 0x0200 and target.failed
    target = make_target(Policy(), header_digests=("CRC32C",))
    target.receive(request(hello, **operational))
    final = target.receive(request([("HeaderDigest", "CRC32C")], **operational))
    assert final.transit and target.params.header_digest
    target = make_target(Policy(), header_digests=("CRC32C",))
    login = InitiatorLogin(
        INITIATOR, TARGET, ISID, proposals=LoginProposals(header_digest=("None", "CRC32C"))
    )
    outcome = run_login(login, target)
    assert isinstance(outcome, LoginDone) and outcome.params.header_digest


SECURITY_STAGE_KEYS = {"AuthMethod", "TargetPortalGroupTag", "TargetAlias", "TargetAddress"}


@pytest.mark.parametrize("mode", ["none", "chap", "mutual", "discovery"])
def test_security_stage_responses_carry_only_security_keys(mode: str) -> None:
    """open-iscsi fails a login on any other key in a security-stage response."""
    chap = USER if mode in ("chap", "mutual") else None
    mutual = TARGET_SECRET if mode == "mutual" else None
    target = make_target(Policy(Accept(chap=chap, mutual=mutual, target_alias="alias")))
    login = InitiatorLogin(
        INITIATOR, None if mode == "discovery" else TARGET, ISID, chap=chap, mutual_chap=mutual
    )
    transcript = Transcript()
    assert isinstance(run_login(login, target, transcript), LoginDone)
    for response in transcript.responses:
        keys = {key for key, _ in decode_text(response.data)}
        if response.csg == LoginStage.SECURITY:
            assert keys <= SECURITY_STAGE_KEYS | CHAP_KEYS, keys


@pytest.mark.parametrize("mode", ["none", "mutual", "discovery", "redirect"])
def test_login_through_the_wire_codec(mode: str) -> None:
    """The same logins with every PDU encoded to bytes and framed back, so the machines
    and the codec agree on every field they set."""
    from iscsicore.framing import PduFramer, encode_pdu

    chap = USER if mode == "mutual" else None
    mutual = TARGET_SECRET if mode == "mutual" else None
    resolution: Resolution = Accept(chap=chap, mutual=mutual)
    if mode == "redirect":
        resolution = Redirect.to("fd00::9", 3261, 3, permanent=True)
    target = make_target(Policy(resolution))
    login = InitiatorLogin(
        INITIATOR,
        None if mode == "discovery" else TARGET,
        0x80123456789A,
        chap=chap,
        mutual_chap=mutual,
        itt=0x1234,
        cmd_sn=0xFFFFFFF0,
    )
    to_target = PduFramer(receiving_from="initiator")
    to_initiator = PduFramer(receiving_from="target")
    message: object = login.start()
    for _ in range(16):
        assert isinstance(message, LoginRequest)
        to_target.feed(encode_pdu(message))
        request_in = to_target.next_pdu()
        assert request_in == message
        assert isinstance(request_in, LoginRequest)
        response = target.receive(request_in)
        to_initiator.feed(encode_pdu(response))
        response_in = to_initiator.next_pdu()
        assert response_in == response
        assert isinstance(response_in, LoginResponse)
        message = login.receive(response_in)
        if not isinstance(message, LoginRequest):
            break
    if mode == "redirect":
        assert message == LoginRedirect("fd00::9", 3261, 3, True)
        return
    assert isinstance(message, LoginDone)
    assert message.exp_cmd_sn == 0xFFFFFFF0 and message.max_cmd_sn == (0xFFFFFFF0 + 63) % 2**32
    assert message.params == target.params


login_keys = st.sampled_from(
    [
        "InitiatorName",
        "TargetName",
        "SessionType",
        "AuthMethod",
        "CHAP_A",
        "CHAP_I",
        "CHAP_C",
        "CHAP_N",
        "CHAP_R",
        "HeaderDigest",
        "MaxBurstLength",
        "MaxRecvDataSegmentLength",
        "X-z",
    ]
)
login_values = st.sampled_from(
    [INITIATOR, TARGET, "Normal", "Discovery", "CHAP", "None", "CHAP,None", "5", "1",
     "0x00112233445566778899aabbccddeeff", "host1", "0x" + "00" * 16, "CRC32C", "65536", ""]
)  # fmt: skip
login_requests = st.builds(
    request,
    st.lists(st.tuples(login_keys, login_values), max_size=6),
    transit=st.booleans(),
    cont=st.booleans(),
    csg=st.sampled_from([0, 1, 1, 3]),
    nsg=st.sampled_from([0, 1, 3, 3]),
)


@given(st.lists(login_requests, min_size=1, max_size=8))
def test_random_login_pdus_never_pass_chap(requests: list[LoginRequest]) -> None:
    """Whatever sequence of well-formed login PDUs arrives, a target that requires CHAP
    never completes the login without a correct CHAP response (and never raises)."""
    target = make_target(Policy(Accept(chap=USER, mutual=TARGET_SECRET)))
    for req in requests:
        response = target.receive(req)
        assert response.status_class in (0, 2)
        assert not target.complete
    open_target = make_target(Policy(Accept()))
    for req in requests:
        open_target.receive(req)
    if open_target.complete:
        params = open_target.params
        assert 512 <= params.max_burst_length < 2**24
        assert params.first_burst_length <= params.max_burst_length


@pytest.mark.parametrize(
    "setting",
    [
        {"max_burst_length": 100},
        {"max_recv_data_segment_length": 1 << 24},
        {"header_digest": ("MD5",)},
        {"error_recovery_level": 3},
        {"default_time2wait": -1},
    ],
)
def test_illegal_local_settings_are_refused_up_front(setting: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        LoginProposals(**setting)  # type: ignore[arg-type]
    target_setting = {
        ("header_digests" if key == "header_digest" else key): value
        for key, value in setting.items()
    }
    with pytest.raises(ValueError):
        make_target(Policy(), **target_setting)
