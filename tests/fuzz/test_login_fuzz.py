"""Fuzz targets for the login phase: `iscsicore.login.TargetLogin` on its own, and the
server's login phase (stargate/login_phase.py behind `StargateServer.serve_stream`).

Conversations of honest, mutated and made-up Login Requests (tests/fuzz/login_inputs.py),
with CHAP required, mutual CHAP offered, no authentication, redirects and refusals. The
oracles: never an exception; only Login Responses with a defined status (class 0-3), one
per request, encodable; no T=1 on a failure; once over, the login stays over; a login
completes only through the response that says so, and with CHAP required only after a
request carried the right CHAP_R for a challenge the target sent. An attacker that does
not know the secret never gets a session.
"""

from __future__ import annotations

import logging

import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from iscsicore.chap import ChapSecrets
from iscsicore.framing import PduFramer, encode_pdu
from iscsicore.keys import SessionType
from iscsicore.login import (
    Accept,
    InitiatorLogin,
    LoginDone,
    LoginFailed,
    LoginRedirect,
    Redirect,
    Refuse,
    Resolution,
    SessionRequest,
    TargetLogin,
    TargetLoginConfig,
)
from iscsicore.pdu import LoginRequest, LoginResponse, LoginStatus
from stargate.server import ServerConfig, StargateServer
from stargate.target import ChapCredentials, TargetRegistry
from tests.fuzz.driver import ErrorLog, count_event, count_example, fuzz_target
from tests.fuzz.login_inputs import (
    CHAP,
    MUTUAL,
    WRONG_CHAP,
    Conversation,
    check_response,
    honest_initiator,
    next_request,
    to_full_feature,
)
from tests.stargate.client import memory_target
from topology.naming import target_name_for

MAX_REQUESTS = 10

OPEN = "iqn.2026-12.fuzz:open"
CHAP_TARGET = "iqn.2026-12.fuzz:chap"
MUTUAL_TARGET = "iqn.2026-12.fuzz:mutual"
MOVED = "iqn.2026-12.fuzz:moved"
UNKNOWN = "iqn.2026-12.fuzz:unknown"


def resolve(initiator_name: str, target_name: str | None, session_type: SessionType) -> Resolution:
    if session_type is SessionType.DISCOVERY:
        return Accept()
    if target_name == OPEN:
        return Accept()
    if target_name == CHAP_TARGET:
        return Accept(chap=CHAP)
    if target_name == MUTUAL_TARGET:
        return Accept(chap=CHAP, mutual=MUTUAL)
    if target_name == MOVED:
        return Redirect.to("127.0.0.2", 3260, 1)
    return Refuse(LoginStatus.NOT_FOUND)


def allocate_tsih(request: SessionRequest) -> int | Refuse:
    if request.tsih != 0:
        return Refuse(LoginStatus.SESSION_DOES_NOT_EXIST)
    return 0x77


def chap_required(target_name: str | None) -> bool:
    return target_name in (CHAP_TARGET, MUTUAL_TARGET)


targets = st.sampled_from([OPEN, CHAP_TARGET, MUTUAL_TARGET, MOVED, UNKNOWN, None])
# What the honest initiator knows: the right secret, a wrong one, or no CHAP at all.
knowledge = st.sampled_from(["secret", "wrong", "none"])


def _secrets_of(known: str) -> ChapSecrets | None:
    return {"secret": CHAP, "wrong": WRONG_CHAP, "none": None}[known]


@fuzz_target(examples=200)
@given(data=st.data(), target_name=targets, known=knowledge)
def test_fuzz_target_login_machine(
    data: st.DataObject, target_name: str | None, known: str
) -> None:
    count_example("test_fuzz_target_login_machine")
    login = TargetLogin(
        TargetLoginConfig(portal_group_tag=1, resolve=resolve, allocate_tsih=allocate_tsih)
    )
    conversation = Conversation(target_name)
    initiator = honest_initiator(target_name, _secrets_of(known))
    honest: LoginRequest | None = initiator.start()
    finished_at: int | None = None
    for step in range(data.draw(st.integers(1, MAX_REQUESTS), label="requests")):
        request = data.draw(next_request(conversation, honest), label=f"request {step}")
        over_before = login.finished
        response = check_response(login.receive(request), request, over_before=over_before)
        encode_pdu(response)  # the transport must be able to send it
        conversation.requests.append(request)
        conversation.responses.append(response)
        if finished_at is not None:
            assert response.status_class != 0, "a success after the login was over"
            assert login.finished
        elif to_full_feature(response):
            assert login.complete
            finished_at = step
        elif response.status_class != 0:
            assert login.finished and not login.complete
            finished_at = step
        else:
            assert not login.finished
        if chap_required(target_name) and login.complete:
            assert conversation.answered_the_challenge(CHAP), "CHAP login without CHAP_R"
        honest = _next_honest(initiator, honest, request, response)
    if known != "secret" and chap_required(target_name):
        assert not login.complete
    count_event("test_fuzz_target_login_machine", f"{target_name} {known}: {login.state.name}")


def _next_honest(
    initiator: InitiatorLogin,
    honest: LoginRequest | None,
    request: LoginRequest,
    response: LoginResponse,
) -> LoginRequest | None:
    """The honest initiator's next request, if it still has one to make (it only follows
    the conversation while its own requests were the ones sent)."""
    if honest is None or request is not honest:
        return None
    outcome = initiator.receive(response)
    if isinstance(outcome, LoginDone | LoginFailed | LoginRedirect):
        return None
    assert isinstance(outcome, LoginRequest)
    return outcome


# ---------------------------------------------------------------------------------------
# The server's login phase, over an in-memory stream

ANSWER_TIMEOUT = 5.0


def fuzz_server() -> StargateServer:
    registry = TargetRegistry()
    registry.add(memory_target("open", 1 << 20))
    registry.add(memory_target("chap", 1 << 20, chap=ChapCredentials(CHAP.username, "x" * 16)))
    return StargateServer(registry, ServerConfig(queue_depth=4, login_timeout=ANSWER_TIMEOUT))


SERVER_TARGETS = st.sampled_from([target_name_for("open"), target_name_for("chap"), UNKNOWN, None])


@fuzz_target(examples=120)
@given(data=st.data(), target_name=SERVER_TARGETS, known=knowledge)
def test_fuzz_server_login_phase(data: st.DataObject, target_name: str | None, known: str) -> None:
    """Each Login Request gets one Login Response or the connection closes, promptly;
    the handler never fails; nobody without the secret gets a session on the CHAP
    target; every queue slot and session is gone once the connection is."""
    count_example("test_fuzz_server_login_phase")
    # The CHAP target's secret is "x" * 16: only the "secret" initiator knows it here.
    secrets = {"secret": ChapSecrets(CHAP.username, "x" * 16), "wrong": WRONG_CHAP}.get(known)
    server = fuzz_server()
    errors = ErrorLog()
    logging.getLogger("stargate").addHandler(errors)
    try:
        trio.run(_server_login_conversation, data, server, target_name, secrets)
    finally:
        logging.getLogger("stargate").removeHandler(errors)
    assert not errors.records, [record.getMessage() for record in errors.records]
    assert len(server.sessions) == 0 and not server.all_connections()
    assert server.queue.in_flight == 0 and server.queue.waiting == 0
    assert server.queue.buffered_bytes == 0 and server.queue.sessions == 0


async def _server_login_conversation(
    data: st.DataObject,
    server: StargateServer,
    target_name: str | None,
    secrets: ChapSecrets | None,
) -> None:
    client, served = trio.testing.memory_stream_pair()
    framer = PduFramer(receiving_from="target", max_recv_data_segment_length=1 << 24)
    conversation = Conversation(target_name)
    initiator = honest_initiator(target_name, secrets)
    honest: LoginRequest | None = initiator.start()
    completed = False
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve_stream, served)
        with trio.fail_after(ANSWER_TIMEOUT * 2):
            for step in range(data.draw(st.integers(1, MAX_REQUESTS), label="requests")):
                request = data.draw(next_request(conversation, honest), label=f"request {step}")
                try:
                    await client.send_all(encode_pdu(request))
                except trio.BrokenResourceError:
                    break
                response = await _receive(client, framer)
                if response is None:
                    break  # closed: the framer refused the request, or the login is over
                check_response(response, request)
                conversation.requests.append(request)
                conversation.responses.append(response)
                if to_full_feature(response):
                    completed = True
                    break
                honest = _next_honest(initiator, honest, request, response)
            outcome = "completed" if completed else "not completed"
            count_event("test_fuzz_server_login_phase", f"{target_name} {outcome}")
            if target_name == target_name_for("chap"):
                assert not completed or conversation.answered_the_challenge(
                    ChapSecrets(CHAP.username, "x" * 16)
                ), "a session on the CHAP target without the right CHAP_R"
                if secrets is None or secrets.secret != b"x" * 16:
                    assert not completed
            await client.aclose()
    # The nursery has joined serve_stream: the connection is fully torn down.


async def _receive(client: trio.abc.Stream, framer: PduFramer) -> LoginResponse | None:
    """The next PDU from the target (a Login Response while the login runs), or None if
    the target closed the connection."""
    with trio.fail_after(ANSWER_TIMEOUT):
        while True:
            pdu = framer.next_pdu()
            if pdu is not None:
                assert isinstance(pdu, LoginResponse), f"{type(pdu).__name__} during login"
                return pdu
            try:
                chunk = await client.receive_some(65536)
            except trio.BrokenResourceError:
                return None
            if not chunk:
                return None
            framer.feed(chunk)
