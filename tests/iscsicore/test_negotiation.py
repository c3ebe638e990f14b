"""The negotiation engine: each key's result function, answers to bad offers, checks of
the peer's answers, and properties of whole negotiations between two engines."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iscsicore.keys import (
    KEY_TABLE,
    PARAM_FIELDS,
    NegotiationError,
    Phase,
    SessionType,
    TextError,
    decode_text,
    encode_text,
)
from iscsicore.login import (
    Accept,
    InitiatorLogin,
    LoginDone,
    LoginProposals,
    SessionRequest,
    TargetLogin,
    TargetLoginConfig,
)
from iscsicore.negotiation import Negotiator, Role, answer_is_legal, respond_value
from iscsicore.pdu import LoginRequest, LoginStatus

# (key, offered, responder's preference, answer)
RESULT_TABLE = [
    # OR: Yes wins
    ("InitialR2T", "Yes", "No", "Yes"),
    ("InitialR2T", "No", "Yes", "Yes"),
    ("InitialR2T", "No", "No", "No"),
    ("DataPDUInOrder", "No", "Yes", "Yes"),
    ("DataPDUInOrder", "No", "No", "No"),
    ("DataSequenceInOrder", "Yes", "No", "Yes"),
    # AND: No wins
    ("ImmediateData", "Yes", "No", "No"),
    ("ImmediateData", "No", "Yes", "No"),
    ("ImmediateData", "Yes", "Yes", "Yes"),
    # MIN
    ("MaxBurstLength", "1048576", "262144", "262144"),
    ("MaxBurstLength", "4096", "262144", "4096"),
    ("FirstBurstLength", "65536", "8192", "8192"),
    ("DefaultTime2Retain", "0", "20", "0"),
    ("MaxOutstandingR2T", "8", "16", "8"),
    ("MaxConnections", "4", "1", "1"),
    ("ErrorRecoveryLevel", "2", "0", "0"),
    ("iSCSIProtocolLevel", "2", "1", "1"),
    # MAX
    ("DefaultTime2Wait", "5", "2", "5"),
    ("DefaultTime2Wait", "0", "2", "2"),
    # lists: first of the offerer's values that the responder supports
    ("HeaderDigest", "CRC32C,None", "None,CRC32C", "CRC32C"),
    ("HeaderDigest", "None,CRC32C", "CRC32C,None", "None"),
    ("DataDigest", "CRC32C", "None", "Reject"),
    ("HeaderDigest", "MD5,None", "CRC32C,None", "None"),
    ("AuthMethod", "KRB5,CHAP,None", "CHAP", "CHAP"),
    ("AuthMethod", "None", "CHAP", "Reject"),
    # hex numbers are numbers
    ("MaxBurstLength", "0x1000", "262144", "4096"),
    # out of range or malformed offers
    ("MaxBurstLength", "511", "262144", "Reject"),
    ("MaxBurstLength", "16777216", "262144", "Reject"),
    ("ErrorRecoveryLevel", "3", "0", "Reject"),
    ("DefaultTime2Wait", "3601", "2", "Reject"),
    ("MaxConnections", "0", "1", "Reject"),
    ("InitialR2T", "Maybe", "Yes", "Reject"),
    ("MaxBurstLength", "lots", "262144", "Reject"),
]


@pytest.mark.parametrize(("key", "offered", "local", "answer"), RESULT_TABLE)
def test_result_functions(key: str, offered: str, local: str, answer: str) -> None:
    assert respond_value(KEY_TABLE[key], offered, local) == answer
    target = Negotiator(Role.TARGET, local={key: local})
    phase = Phase.SECURITY if key == "AuthMethod" else Phase.OPERATIONAL
    assert target.receive([(key, offered)], phase) == [(key, answer)]
    if answer != "Reject":
        assert answer_is_legal(KEY_TABLE[key], offered, answer)


@pytest.mark.parametrize(
    ("key", "offered", "answer", "legal"),
    [
        ("ImmediateData", "No", "Yes", False),
        ("ImmediateData", "Yes", "No", True),
        ("InitialR2T", "Yes", "No", False),
        ("InitialR2T", "No", "Yes", True),
        ("MaxBurstLength", "65536", "131072", False),
        ("MaxBurstLength", "65536", "512", True),
        ("MaxBurstLength", "65536", "100", False),
        ("DefaultTime2Wait", "2", "1", False),
        ("DefaultTime2Wait", "2", "3600", True),
        ("HeaderDigest", "None", "CRC32C", False),
        ("HeaderDigest", "CRC32C,None", "CRC32C", True),
        ("HeaderDigest", "CRC32C,None", "CRC32C,None", False),
        ("ErrorRecoveryLevel", "2", "1", True),
    ],
)
def test_originator_checks_answers(key: str, offered: str, answer: str, legal: bool) -> None:
    initiator = Negotiator(Role.INITIATOR)
    initiator.offer(key, offered)
    if legal:
        assert initiator.receive([(key, answer)], Phase.OPERATIONAL) == []
        assert initiator.result(key) == answer
    else:
        with pytest.raises(NegotiationError) as caught:
            initiator.receive([(key, answer)], Phase.OPERATIONAL)
        assert caught.value.status is LoginStatus.TARGET_ERROR


@pytest.mark.parametrize("answer", ["Reject", "Irrelevant", "NotUnderstood"])
def test_refused_offer_keeps_the_default(answer: str) -> None:
    initiator = Negotiator(Role.INITIATOR)
    initiator.offer("MaxBurstLength", "65536")
    initiator.receive([("MaxBurstLength", answer)], Phase.OPERATIONAL)
    assert initiator.refused == {"MaxBurstLength": answer}
    assert initiator.session_params().max_burst_length == 262144


def test_optional_answers_are_implied() -> None:
    """AND offered No and OR offered Yes need no answer (RFC 7143 6.2.2)."""
    initiator = Negotiator(Role.INITIATOR)
    initiator.offer("ImmediateData", "No")
    initiator.offer("InitialR2T", "Yes")
    initiator.offer("MaxBurstLength", "65536")
    assert initiator.awaiting == ["MaxBurstLength"]
    params = initiator.session_params()
    assert not params.immediate_data and params.initial_r2t
    assert params.max_burst_length == 262144  # unanswered: the default stands


def test_unknown_and_private_keys_are_not_understood() -> None:
    target = Negotiator(Role.TARGET)
    pairs = [("X-com.example.Thing", "1"), ("X#org.example", "2"), ("Zebra", "3")]
    replies = target.receive(pairs, Phase.OPERATIONAL)
    assert replies == [(key, "NotUnderstood") for key, _ in pairs]


def test_irrelevant_in_discovery_and_on_secondary_connections() -> None:
    discovery = Negotiator(Role.TARGET, session_type=SessionType.DISCOVERY)
    replies = discovery.receive(
        [("MaxBurstLength", "4096"), ("ImmediateData", "No"), ("DataDigest", "None")],
        Phase.OPERATIONAL,
    )
    assert replies == [
        ("MaxBurstLength", "Irrelevant"),
        ("ImmediateData", "Irrelevant"),
        ("DataDigest", "None"),
    ]
    secondary = Negotiator(Role.TARGET, leading=False)
    replies = secondary.receive(
        [("MaxBurstLength", "4096"), ("HeaderDigest", "None")], Phase.OPERATIONAL
    )
    assert replies == [("MaxBurstLength", "Irrelevant"), ("HeaderDigest", "None")]


def test_obsolete_marker_keys() -> None:
    target = Negotiator(Role.TARGET)
    replies = target.receive(
        [("IFMarker", "No"), ("OFMarker", "Yes"), ("OFMarkInt", "2048~8192")], Phase.OPERATIONAL
    )
    assert replies == [("IFMarker", "No"), ("OFMarker", "No"), ("OFMarkInt", "Reject")]


def test_declarations_are_recorded_not_answered() -> None:
    target = Negotiator(Role.TARGET)
    assert target.receive([("MaxRecvDataSegmentLength", "0x10000")], Phase.OPERATIONAL) == []
    target.offer("MaxRecvDataSegmentLength", "1024")
    params = target.session_params()
    assert params.initiator_max_recv_data_segment_length == 65536
    assert params.target_max_recv_data_segment_length == 1024
    assert target.receive([("InitiatorAlias", "x")], Phase.SECURITY) == []
    assert target.declared_by_peer["InitiatorAlias"] == "x"


def test_declaration_out_of_range_is_rejected() -> None:
    target = Negotiator(Role.TARGET)
    assert target.receive([("MaxRecvDataSegmentLength", "100")], Phase.OPERATIONAL) == [
        ("MaxRecvDataSegmentLength", "Reject")
    ]
    assert target.session_params().initiator_max_recv_data_segment_length == 8192


@pytest.mark.parametrize(
    "pairs",
    [
        [("MaxBurstLength", "512"), ("MaxBurstLength", "1024")],
        [("InitiatorName", "a"), ("InitiatorName", "a")],
        [("MaxBurstLength", "Reject")],
        [("TargetAlias", "pretender")],
        [("TargetPortalGroupTag", "1")],
    ],
)
def test_protocol_errors_from_the_initiator(pairs: list[tuple[str, str]]) -> None:
    target = Negotiator(Role.TARGET)
    with pytest.raises(NegotiationError) as caught:
        target.receive(pairs, Phase.OPERATIONAL)
    assert caught.value.status is LoginStatus.INITIATOR_ERROR


def test_auth_method_outside_security_stage() -> None:
    target = Negotiator(Role.TARGET)
    with pytest.raises(NegotiationError):
        target.receive([("AuthMethod", "None")], Phase.OPERATIONAL)


def test_answer_twice_is_an_error() -> None:
    initiator = Negotiator(Role.INITIATOR)
    initiator.offer("MaxBurstLength", "65536")
    initiator.receive([("MaxBurstLength", "4096")], Phase.OPERATIONAL)
    with pytest.raises(NegotiationError):
        initiator.receive([("MaxBurstLength", "4096")], Phase.OPERATIONAL)


def test_first_burst_never_exceeds_max_burst() -> None:
    target = Negotiator(Role.TARGET, local={"MaxBurstLength": "16384"})
    replies = target.receive(
        [("MaxBurstLength", "65536"), ("FirstBurstLength", "65536")], Phase.OPERATIONAL
    )
    assert replies == [("MaxBurstLength", "16384"), ("FirstBurstLength", "16384")]
    # Without the target's help (FirstBurstLength first), both sides clamp at the end.
    initiator = Negotiator(Role.INITIATOR)
    initiator.offer("FirstBurstLength", "131072")
    initiator.offer("MaxBurstLength", "65536")
    initiator.receive(
        [("FirstBurstLength", "131072"), ("MaxBurstLength", "65536")], Phase.OPERATIONAL
    )
    params = initiator.session_params()
    assert params.first_burst_length == params.max_burst_length == 65536


# ---------------------------------------------------------------------------------------
# Whole logins with random proposals on both sides


def _login_config(draw_target: dict[str, Any]) -> TargetLoginConfig:
    return TargetLoginConfig(
        portal_group_tag=1,
        resolve=lambda *_: Accept(),
        allocate_tsih=lambda request: 1,
        **draw_target,
    )


lengths = st.integers(512, 2**24 - 1)
digests = st.sampled_from([("None",), ("CRC32C",), ("CRC32C", "None"), ("None", "CRC32C")])
initiator_proposals = st.builds(
    LoginProposals,
    header_digest=digests,
    data_digest=digests,
    max_recv_data_segment_length=lengths,
    max_burst_length=lengths,
    first_burst_length=lengths,
    immediate_data=st.booleans(),
    initial_r2t=st.booleans(),
    max_outstanding_r2t=st.integers(1, 65535),
    max_connections=st.integers(1, 65535),
    default_time2wait=st.integers(0, 3600),
    default_time2retain=st.integers(0, 3600),
    data_pdu_in_order=st.booleans(),
    data_sequence_in_order=st.booleans(),
    error_recovery_level=st.integers(0, 2),
)
target_limits = st.fixed_dictionaries(
    {
        "max_recv_data_segment_length": lengths,
        "max_burst_length": lengths,
        "first_burst_length": lengths,
        "immediate_data": st.booleans(),
        "initial_r2t": st.booleans(),
        "max_outstanding_r2t": st.integers(1, 65535),
        "max_connections": st.integers(1, 65535),
        "error_recovery_level": st.integers(0, 2),
        "default_time2wait": st.integers(0, 3600),
        "default_time2retain": st.integers(0, 3600),
        "header_digests": digests,
        "data_digests": digests,
    }
)


@given(initiator_proposals, target_limits)
def test_random_logins_end_inside_legal_ranges(
    proposals: LoginProposals, limits: dict[str, Any]
) -> None:
    initiator = InitiatorLogin("iqn.i", "iqn.t", 1, proposals=proposals)
    target = TargetLogin(_login_config(limits))
    message: object = initiator.start()
    for _ in range(10):
        assert isinstance(message, LoginRequest)
        message = initiator.receive(target.receive(message))
        if not isinstance(message, LoginRequest):
            break
    common_digests = set(proposals.header_digest) & set(limits["header_digests"]) and set(
        proposals.data_digest
    ) & set(limits["data_digests"])
    # The only legitimate failure: no digest choice both sides accept.
    assert isinstance(message, LoginDone) == bool(common_digests)
    if not isinstance(message, LoginDone):
        return
    params = message.params
    assert params == target.params
    for key, attribute in PARAM_FIELDS.items():
        value = getattr(params, attribute)
        spec = KEY_TABLE[key]
        if spec.numeric:
            assert spec.minimum <= value <= spec.maximum, key
    assert params.first_burst_length <= params.max_burst_length
    assert params.max_burst_length <= min(proposals.max_burst_length, limits["max_burst_length"])
    assert params.default_time2wait == max(proposals.default_time2wait, limits["default_time2wait"])
    assert params.immediate_data == (proposals.immediate_data and limits["immediate_data"])
    assert params.initial_r2t == (proposals.initial_r2t or limits["initial_r2t"])
    assert params.target_max_recv_data_segment_length == limits["max_recv_data_segment_length"]
    assert params.initiator_max_recv_data_segment_length == proposals.max_recv_data_segment_length


keys = st.sampled_from([*KEY_TABLE, "X-foo", "Zz", "CHAP_A", "CHAP_R"])
values = st.one_of(
    st.sampled_from(["Yes", "No", "None", "CRC32C", "Reject", "0", "512", "0x1000", "", "CHAP"]),
    st.integers(-5, 2**25).map(str),
    st.text(max_size=20),
)


@given(st.lists(st.tuples(keys, values), max_size=12), st.sampled_from(list(Phase)))
def test_random_pairs_never_raise_anything_but_text_errors(
    pairs: list[tuple[str, str]], phase: Phase
) -> None:
    for role in Role:
        negotiator = Negotiator(role, local={"MaxBurstLength": "65536", "HeaderDigest": "None"})
        negotiator.offer("MaxBurstLength", "65536")
        try:
            replies = negotiator.receive(pairs, phase)
        except TextError:
            continue
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in replies)
        negotiator.session_params()


@given(st.lists(st.binary(max_size=80), min_size=1, max_size=6), st.data())
def test_target_login_survives_garbage(chunks: list[bytes], data: st.DataObject) -> None:
    target = TargetLogin(_login_config({}))
    for chunk in chunks:
        request = LoginRequest(
            transit=data.draw(st.booleans()),
            cont=data.draw(st.booleans()),
            csg=data.draw(st.integers(0, 3)),
            nsg=data.draw(st.integers(0, 3)),
            version_min=data.draw(st.integers(0, 1)),
            isid=1,
            data=chunk,
        )
        response = target.receive(request)  # never raises
        assert response.status_class in (0, 2, 3)
        decode_text(response.data)


def test_session_request_identity() -> None:
    asked: list[SessionRequest] = []

    def allocate(request: SessionRequest) -> int:
        asked.append(request)
        return 99

    config = TargetLoginConfig(1, lambda *_: Accept(), allocate)
    target = TargetLogin(config)
    login = InitiatorLogin("iqn.i", "iqn.t", 0x1234, cid=3)
    message: object = login.start()
    while isinstance(message, LoginRequest):
        message = login.receive(target.receive(message))
    assert isinstance(message, LoginDone) and message.tsih == 99
    assert asked == [SessionRequest(0x1234, 0, 3, "iqn.i", "iqn.t", SessionType.NORMAL)]


def test_refused_declaration_is_recorded() -> None:
    initiator = Negotiator(Role.INITIATOR)
    initiator.offer("MaxRecvDataSegmentLength", "65536")
    assert initiator.receive([("MaxRecvDataSegmentLength", "Reject")], Phase.OPERATIONAL) == []
    assert initiator.refused == {"MaxRecvDataSegmentLength": "Reject"}


def test_keys_out_of_their_stage() -> None:
    target = Negotiator(Role.TARGET, local={"MaxBurstLength": "4096"})
    # operational keys in the security stage are negotiated as usual
    assert target.receive([("MaxBurstLength", "65536")], Phase.SECURITY) == [
        ("MaxBurstLength", "4096")
    ]
    # a full-feature-only key during login is refused
    assert target.receive([("SendTargets", "All")], Phase.OPERATIONAL) == [
        ("SendTargets", "Reject")
    ]


numeric_offer = {
    "MaxBurstLength": lengths,
    "FirstBurstLength": lengths,
    "MaxOutstandingR2T": st.integers(1, 65535),
    "MaxConnections": st.integers(1, 65535),
    "DefaultTime2Wait": st.integers(0, 3600),
    "DefaultTime2Retain": st.integers(0, 3600),
    "ErrorRecoveryLevel": st.integers(0, 2),
}
boolean_offer = ["InitialR2T", "ImmediateData", "DataPDUInOrder", "DataSequenceInOrder"]
partial_offers = st.fixed_dictionaries(
    {},
    optional={
        **{key: strategy.map(str) for key, strategy in numeric_offer.items()},
        **{key: st.sampled_from(["Yes", "No"]) for key in boolean_offer},
    },
)


@given(partial_offers, target_limits)
def test_partial_offers_end_within_the_target_limits(
    offers: dict[str, str], limits: dict[str, Any]
) -> None:
    """An initiator offering only some keys still ends within the target's limits: the
    target offers the rest, and both sides compute the same values."""
    limits = {**limits, "header_digests": ("None",), "data_digests": ("None",)}
    target = TargetLogin(_login_config(limits))
    initiator = Negotiator(Role.INITIATOR, local=dict(offers))
    pairs = [("InitiatorName", "iqn.i"), ("TargetName", "iqn.t")]
    pairs += [initiator.offer(key, value) for key, value in offers.items()]
    pairs.append(initiator.offer("MaxRecvDataSegmentLength", "8192"))
    for _ in range(4):
        response = target.receive(
            LoginRequest(transit=True, csg=1, nsg=3, isid=1, data=encode_text(pairs))
        )
        assert response.status_class == 0
        pairs = initiator.receive(decode_text(response.data), Phase.OPERATIONAL)
        if response.transit:
            break
    assert target.complete
    ours, theirs = initiator.session_params(), target.params
    for attribute in PARAM_FIELDS.values():
        assert getattr(ours, attribute) == getattr(theirs, attribute), attribute
    assert theirs.max_burst_length <= limits["max_burst_length"]
    assert theirs.first_burst_length <= min(limits["first_burst_length"], theirs.max_burst_length)
    assert theirs.max_outstanding_r2t <= limits["max_outstanding_r2t"]
    assert theirs.default_time2wait >= limits["default_time2wait"]
    assert theirs.error_recovery_level <= limits["error_recovery_level"]
    assert theirs.immediate_data <= limits["immediate_data"]
