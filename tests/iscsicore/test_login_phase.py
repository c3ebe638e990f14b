"""The target's login phase, sans-IO (iscsicore.login_phase): bytes in, Login Requests out,
and what ends a connection before its login finished."""

from __future__ import annotations

from iscsicore.framing import PduFramer, encode_pdu
from iscsicore.login import (
    InitiatorLogin,
    LoginDone,
    LoginProposals,
    Refuse,
    TargetLogin,
)
from iscsicore.login_phase import LoginEnded, LoginPhaseState, TargetLoginPhase
from iscsicore.pdu import LoginRequest, LoginStatus, NopOut, Pdu
from tests.iscsicore.test_login import INITIATOR, ISID, TARGET, Policy, make_target


def phase_for(target: TargetLogin) -> TargetLoginPhase:
    return TargetLoginPhase(target, PduFramer(receiving_from="initiator"))


def answer_all(phase: TargetLoginPhase, data: bytes) -> list[Pdu]:
    """Feed ``data``; answer every Login Request it holds; the answers, in order."""
    phase.receive_data(data)
    answers: list[Pdu] = []
    for _ in range(16):
        event = phase.next_event()
        if not isinstance(event, LoginRequest):
            return answers
        answers.append(phase.login.receive(event))
    raise AssertionError("more Login Requests than the test sent")


def test_a_login_in_pieces_finishes_and_leaves_the_next_pdu_in_the_framer() -> None:
    initiator = InitiatorLogin(
        INITIATOR, TARGET, ISID, proposals=LoginProposals(header_digest=("CRC32C", "None"))
    )
    phase = phase_for(make_target(Policy()))
    assert phase.next_event() is LoginPhaseState.NEED_DATA
    request: LoginRequest | None = initiator.start()
    nop = NopOut(itt=5, cmd_sn=0, exp_stat_sn=0, immediate=True)
    for _ in range(8):
        assert request is not None
        wire = encode_pdu(request)
        phase.receive_data(wire[:20])  # half a header: nothing to answer yet
        assert phase.next_event() is LoginPhaseState.NEED_DATA
        phase.receive_data(wire[20:])
        event = phase.next_event()
        assert isinstance(event, LoginRequest)
        outcome = initiator.receive(phase.login.receive(event))
        if isinstance(outcome, LoginDone):
            break
        assert isinstance(outcome, LoginRequest)
        request = outcome
    else:
        raise AssertionError("login did not finish")
    # The initiator's first full-feature PDU, with a header digest now, arrived early.
    phase.receive_data(encode_pdu(nop, header_digest=True))
    assert phase.next_event() is LoginPhaseState.FINISHED
    assert phase.framer.header_digest and not phase.framer.data_digest
    assert phase.framer.max_recv_data_segment_length == (
        phase.login.config.max_recv_data_segment_length
    )
    early = phase.framer.next_pdu()
    assert isinstance(early, NopOut) and early.itt == 5


def test_a_pdu_other_than_a_login_request_ends_the_login_as_a_protocol_error() -> None:
    phase = phase_for(make_target(Policy()))
    phase.receive_data(encode_pdu(NopOut(itt=1, immediate=True)))
    event = phase.next_event()
    assert isinstance(event, LoginEnded)
    assert event.protocol_error and isinstance(event.pdu, NopOut)
    assert event.reason == "NopOut during login"
    assert not phase.login.finished


def test_bytes_that_do_not_frame_end_the_login_as_a_protocol_error() -> None:
    phase = phase_for(make_target(Policy()))
    phase.receive_data(b"\x3f" + bytes(47))  # opcode 0x3f: no such PDU
    event = phase.next_event()
    assert isinstance(event, LoginEnded)
    assert event.protocol_error and event.pdu is None
    assert event.reason.startswith("protocol error during login")


def test_a_close_ends_the_login_only_after_what_came_before_it() -> None:
    initiator = InitiatorLogin(INITIATOR, TARGET, ISID)
    phase = phase_for(make_target(Policy()))
    answers = answer_all(phase, encode_pdu(initiator.start()))
    assert len(answers) == 1
    phase.receive_data(b"")
    event = phase.next_event()
    assert event == LoginEnded("closed during login")
    assert not event.protocol_error


def test_a_failed_login_finishes_without_touching_the_framer() -> None:
    target = make_target(Policy(resolution=Refuse(LoginStatus.NOT_FOUND)))
    phase = phase_for(target)
    request = InitiatorLogin(INITIATOR, TARGET, ISID).start()
    answers = answer_all(phase, encode_pdu(request))
    assert len(answers) == 1 and target.failed
    assert phase.next_event() is LoginPhaseState.FINISHED
    assert not phase.framer.header_digest
    assert (
        phase.framer.max_recv_data_segment_length
        == PduFramer(receiving_from="initiator").max_recv_data_segment_length
    )
