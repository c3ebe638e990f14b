"""Hostile Login Requests for the login fuzz targets, drawn one at a time.

A conversation starts like a real initiator's (`InitiatorLogin`, knowing the CHAP secret
or not) and the fuzzer decides at every step whether to send the honest request, a
mutation of it (flags, stages, session identifiers, one key added, dropped or changed), or
a request made up from a pool of login keys and hostile values, including values the
target itself just sent (its CHAP_I and CHAP_C echoed back, a reflection attempt).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field

from hypothesis import strategies as st

from iscsicore.chap import ChapSecrets, chap_response, decode_binary, encode_binary
from iscsicore.keys import TextError, decode_text
from iscsicore.login import InitiatorLogin, LoginProposals
from iscsicore.pdu import LoginRequest, LoginResponse, LoginStage, LoginStatus

INITIATOR = "iqn.2026-12.fuzz:initiator"
CHAP = ChapSecrets("fuzz-user", "fuzz-secret-0123")
WRONG_CHAP = ChapSecrets("fuzz-user", "not-the-secret-99")
MUTUAL = ChapSecrets("fuzz-target", "target-secret-4567")

KEYS = (
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
    "DataDigest",
    "MaxRecvDataSegmentLength",
    "MaxBurstLength",
    "FirstBurstLength",
    "InitialR2T",
    "ImmediateData",
    "MaxOutstandingR2T",
    "MaxConnections",
    "ErrorRecoveryLevel",
    "DefaultTime2Wait",
    "DefaultTime2Retain",
    "DataPDUInOrder",
    "DataSequenceInOrder",
    "TargetPortalGroupTag",
    "TargetAddress",
    "InitiatorAlias",
    "TargetAlias",
    "SendTargets",
    "iSCSIProtocolLevel",
    "X-org.fuzz.key",
)
VALUES = (
    "",
    "None",
    "CHAP",
    "CHAP,None",
    "None,CHAP",
    "SRP",
    "5",
    "7,5",
    "Reject",
    "Irrelevant",
    "NotUnderstood",
    "Yes",
    "No",
    "CRC32C",
    "CRC32C,None",
    "0",
    "1",
    "255",
    "256",
    "512",
    "65535",
    "65536",
    "16777215",
    "16777216",
    "4294967296",
    "-1",
    "Normal",
    "Discovery",
    "All",
    "0x",
    "0x0",
    "0xzz",
    "0b",
    "0b!!",
    "0x" + "00" * 16,
    "0x" + "ab" * 1025,
    "x" * 300,
    "fuzz-user",
    "fuzz-target",
    INITIATOR,
)


@dataclass
class Conversation:
    """What was said: requests sent, responses received (for the oracles)."""

    target_name: str | None
    requests: list[LoginRequest] = field(default_factory=list)
    responses: list[LoginResponse] = field(default_factory=list)

    def echoed_values(self) -> list[str]:
        values: list[str] = []
        for response in self.responses[-2:]:
            with contextlib.suppress(TextError):
                values += [value for _, value in decode_text(bytes(response.data))]
        return values

    def answered_the_challenge(self, secrets: ChapSecrets) -> bool:
        """Did some request carry the right CHAP_N and CHAP_R for a challenge the target
        sent? (Only then may a CHAP login complete.)"""
        expected: set[bytes] = set()
        for response in self.responses:
            pairs = dict(_pairs(response.data))
            if "CHAP_I" in pairs and "CHAP_C" in pairs:
                try:
                    identifier = int(pairs["CHAP_I"])
                    challenge = decode_binary(pairs["CHAP_C"])
                except (ValueError, TextError):
                    continue
                if 0 <= identifier <= 255:
                    expected.add(chap_response(identifier, secrets.secret, challenge))
        for request in self.requests:
            pairs = dict(_pairs(request.data))
            if pairs.get("CHAP_N") != secrets.username or "CHAP_R" not in pairs:
                continue
            try:
                if decode_binary(pairs["CHAP_R"]) in expected:
                    return True
            except TextError:
                continue
        return False


def _pairs(data: bytes | bytearray | memoryview) -> list[tuple[str, str]]:
    try:
        return decode_text(bytes(data))
    except TextError:
        return []


def honest_initiator(target_name: str | None, secrets: ChapSecrets | None) -> InitiatorLogin:
    return InitiatorLogin(
        INITIATOR, target_name, 0x400000001234, chap=secrets, proposals=LoginProposals()
    )


@st.composite
def _made_up_pairs(draw: st.DrawFn, conversation: Conversation) -> list[tuple[str, str]]:
    echoed = conversation.echoed_values()
    # Echoed values are picked by index: the shape of the draws never depends on what the
    # target said (hypothesis replays examples by their draws).
    value = st.one_of(
        st.sampled_from(VALUES),
        st.text(st.characters(codec="ascii", min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
        st.binary(min_size=0, max_size=40).map(encode_binary),
        st.integers(0, 15).map(lambda i: echoed[i % len(echoed)] if echoed else VALUES[i]),
    )
    key = st.one_of(st.sampled_from(KEYS), st.sampled_from(KEYS).map(lambda k: k.lower()))
    return draw(st.lists(st.tuples(key, value), max_size=8))


@st.composite
def next_request(
    draw: st.DrawFn, conversation: Conversation, honest: LoginRequest | None
) -> LoginRequest:
    """The next request: the honest one, a mutation of it, or one made up."""
    # Mostly honest: deep states (CHAP answered, operational keys) need several steps.
    choice = draw(st.sampled_from(["honest"] * 5 + ["mutated", "made_up"]), label="kind")
    if honest is None:
        choice = "made_up"
    first = conversation.requests[0] if conversation.requests else honest
    if choice == "honest":
        assert honest is not None
        return honest
    if choice == "mutated":
        assert honest is not None
        pairs = _pairs(honest.data)
        mutation = draw(st.sampled_from(["drop", "replace", "add", "flags", "ids", "raw"]))
        changes: dict[str, object] = {}
        if mutation == "drop" and pairs:
            del pairs[draw(st.integers(0, len(pairs) - 1))]
        elif mutation == "replace" and pairs:
            index = draw(st.integers(0, len(pairs) - 1))
            pairs[index] = (pairs[index][0], draw(_made_up_pairs(conversation).map(_a_value)))
        elif mutation == "add":
            pairs += draw(_made_up_pairs(conversation))
        elif mutation == "flags":
            changes = {
                "transit": draw(st.booleans()),
                "cont": draw(st.booleans()),
                "csg": draw(st.integers(0, 3)),
                "nsg": draw(st.integers(0, 3)),
            }
        elif mutation == "ids":
            changes = {
                "isid": draw(st.integers(0, (1 << 48) - 1)),
                "tsih": draw(st.sampled_from([0, 1, 7, 0xFFFF])),
                "cid": draw(st.integers(0, 0xFFFF)),
                "version_min": draw(st.integers(0, 2)),
            }
        if mutation == "raw":
            changes["data"] = draw(st.binary(max_size=64))
        else:
            changes.setdefault("data", raw_text(pairs))
        return dataclasses.replace(honest, **changes)  # type: ignore[arg-type]
    transit = draw(st.booleans())
    csg = draw(st.sampled_from([0, 1, 1, 3, 2]))
    same_ids = draw(st.integers(0, 4)) > 0 and first is not None
    tsih = draw(st.sampled_from([0, 9]))
    return LoginRequest(
        transit=transit,
        cont=False if transit else draw(st.integers(0, 5)) == 0,
        csg=csg,
        nsg=draw(st.sampled_from([1, 3, 0, 2])),
        version_min=0,
        version_max=0,
        isid=first.isid if same_ids and first is not None else 0x400000001234,
        tsih=first.tsih if same_ids and first is not None else tsih,
        cid=first.cid if same_ids and first is not None else 0,
        itt=draw(st.integers(0, 0xFFFFFFFE)),
        cmd_sn=draw(st.sampled_from([0, 1, 0xFFFFFFFF])),
        data=raw_text(draw(_made_up_pairs(conversation))),
    )


def raw_text(pairs: list[tuple[str, str]]) -> bytes:
    """key=value pairs as sent, without the checks of `keys.encode_text` (a hostile
    initiator sends bad names and overlong values too)."""
    return b"".join(f"{key}={value}\x00".encode("ascii", "replace") for key, value in pairs)


def _a_value(pairs: list[tuple[str, str]]) -> str:
    return pairs[0][1] if pairs else ""


def check_response(
    response: object, request: LoginRequest, *, over_before: bool = False
) -> LoginResponse:
    """A response the transport can send: a LoginResponse with a defined status whose
    fields fit the wire (encoding is checked by the caller that sends it). Once the login
    is over (``over_before``) the target repeats its last answer, whatever the ITT."""
    assert isinstance(response, LoginResponse), response
    status = LoginStatus((response.status_class << 8) | response.status_detail)
    assert response.status_class in (0, 1, 2, 3)
    if status is not LoginStatus.SUCCESS:
        assert not response.transit, "a failed login response with T=1"
    assert len(response.data) <= 8192
    assert over_before or response.itt == request.itt
    if response.transit:
        assert response.nsg > response.csg
        assert response.nsg in (LoginStage.OPERATIONAL, LoginStage.FULL_FEATURE)
    return response


def to_full_feature(response: LoginResponse) -> bool:
    """The response that completes a login."""
    return (
        response.status_class == 0 and response.transit and response.nsg == LoginStage.FULL_FEATURE
    )
