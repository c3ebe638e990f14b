"""The login phase of one connection (`stargate.login_phase`): `LoginPolicy` decides who may
log in to what and which TSIH a session gets, `run_login` moves the Login PDUs over a stream,
bounded in time. Driven over a real trio socket pair: the initiator side is the shared
`InitiatorLogin` machine (or hand-made Login Requests for input it would never send), the
target side is `run_login` with the policy's own configuration."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import trio

from iscsicore.chap import ChapSecrets
from iscsicore.framing import PduFramer, encode_pdu
from iscsicore.keys import SessionType, encode_text
from iscsicore.login import (
    InitiatorLogin,
    LoginDone,
    LoginFailed,
    LoginProposals,
    LoginRedirect,
    Redirect,
    TargetLogin,
    TargetLoginConfig,
)
from iscsicore.pdu import LoginRequest, LoginResponse, LoginStage, LoginStatus, NopOut
from stargate.login_phase import (
    TARGET_MAX_RECV_DATA_SEGMENT_LENGTH,
    LoginOutcome,
    LoginPolicy,
    peer_host,
    run_login,
)
from stargate.login_throttle import LoginThrottle
from stargate.session import Session, SessionTable
from stargate.target import ChapCredentials, PortalGroup, TargetRegistry
from tests.stargate.client import INITIATOR, memory_target
from topology.naming import target_name_for

VD1 = target_name_for("vd1")
ISID = 0x23D000000011
OUTSIDER = "iqn.2026-11.test:outsider"
ALICE = ChapCredentials("alice", "alice-secret-123")


def _policy(*, tag: int = 1) -> LoginPolicy:
    registry = TargetRegistry(PortalGroup(tag, ["127.0.0.2:3261"]))
    registry.add(memory_target("vd1", 1 << 20))
    registry.add(memory_target("locked", 1 << 20, allowed=frozenset({INITIATOR})))
    registry.add(memory_target("chap", 1 << 20, chap=ALICE))
    return LoginPolicy(registry, SessionTable())


Answer = LoginDone | LoginRedirect | LoginFailed | LoginResponse
Initiator = Callable[[trio.SocketStream], Awaitable[Answer | None]]


@dataclass
class Run:
    outcome: LoginOutcome  # what run_login returned on the target's side
    framer: PduFramer  # the target's framer, as run_login left it
    answer: Answer | None  # the initiator's view (None: it sent no login)


def _socket_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


async def _receive(stream: trio.abc.Stream, framer: PduFramer) -> LoginResponse:
    while True:
        pdu = framer.next_pdu()
        if pdu is not None:
            assert isinstance(pdu, LoginResponse), pdu
            return pdu
        data = await stream.receive_some(65536)
        assert data, "the target closed the connection"
        framer.feed(data)


async def _serve(
    login: TargetLogin | TargetLoginConfig,
    initiator: Initiator,
    *,
    timeout: float = 5.0,
    throttle: LoginThrottle | None = None,
    peer: str = "",
) -> Run:
    """run_login on one end of a socket pair, ``initiator`` on the other."""
    if isinstance(login, TargetLoginConfig):
        login = TargetLogin(login)
    target_stream, initiator_stream = _socket_pair()
    framer = PduFramer(receiving_from="initiator")
    outcomes: list[LoginOutcome] = []
    answers: list[Answer | None] = []

    async def serve() -> None:
        outcomes.append(
            await run_login(
                target_stream, framer, login, timeout=timeout, throttle=throttle, peer=peer
            )
        )

    async def initiate() -> None:
        answers.append(await initiator(initiator_stream))
        # An initiator that gives up hangs up (the target would otherwise wait it out).
        await initiator_stream.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            nursery.start_soon(initiate)
    await trio.aclose_forcefully(target_stream)
    await trio.aclose_forcefully(initiator_stream)
    return Run(outcomes[0], framer, answers[0])


def _machine_login(
    machine: InitiatorLogin, *, after_first: Callable[[], None] | None = None
) -> Initiator:
    async def drive(stream: trio.SocketStream) -> LoginDone | LoginRedirect | LoginFailed:
        framer = PduFramer(receiving_from="target")
        step: LoginRequest | LoginDone | LoginRedirect | LoginFailed = machine.start()
        first = True
        while isinstance(step, LoginRequest):
            await stream.send_all(encode_pdu(step))
            response = await _receive(stream, framer)
            if first and after_first is not None:
                after_first()
            first = False
            step = machine.receive(response)
        return step

    return drive


def _raw_login(request: LoginRequest, trailing: bytes = b"") -> Initiator:
    async def send(stream: trio.SocketStream) -> LoginResponse:
        await stream.send_all(encode_pdu(request) + trailing)
        return await _receive(stream, PduFramer(receiving_from="target"))

    return send


async def _login(
    policy: LoginPolicy,
    target: str | None,
    *,
    initiator: str = INITIATOR,
    isid: int = ISID,
    tsih: int = 0,
    chap: ChapSecrets | None = None,
    mutual_chap: ChapSecrets | None = None,
    after_first: Callable[[], None] | None = None,
    throttle: LoginThrottle | None = None,
    peer: str = "",
) -> Run:
    machine = InitiatorLogin(initiator, target, isid, tsih=tsih, chap=chap, mutual_chap=mutual_chap)
    return await _serve(
        policy.login_config(),
        _machine_login(machine, after_first=after_first),
        throttle=throttle,
        peer=peer,
    )


def _failed_with(run: Run, status: LoginStatus) -> None:
    assert isinstance(run.answer, LoginFailed), run.answer
    assert run.answer.raw_status == status, hex(run.answer.raw_status)
    assert not run.outcome.complete and not run.outcome.protocol_error
    assert run.outcome.reason.startswith(f"login failed ({int(status)})"), run.outcome.reason


def _text_request(pairs: list[tuple[str, str]], **fields: int) -> LoginRequest:
    values = {"transit": True, "csg": LoginStage.SECURITY, "nsg": LoginStage.OPERATIONAL}
    values.update(fields)
    return LoginRequest(isid=ISID, data=encode_text(pairs), **values)  # type: ignore[arg-type]


# ---- a login that succeeds ----------------------------------------------------------------


async def test_login_completes_with_the_policys_configuration() -> None:
    policy = _policy(tag=9)
    config = policy.login_config(cmd_window=5)
    assert config.portal_group_tag == 9 and config.cmd_window == 5
    machine = InitiatorLogin(
        INITIATOR, VD1, ISID, proposals=LoginProposals(header_digest=("CRC32C",))
    )
    run = await _serve(config, _machine_login(machine))
    assert run.outcome.complete and run.outcome.reason == ""
    answer = run.answer
    assert isinstance(answer, LoginDone)
    assert answer.tsih == 1  # the first TSIH of an empty table
    assert answer.params.target_portal_group_tag == 9
    assert answer.params.target_max_recv_data_segment_length == TARGET_MAX_RECV_DATA_SEGMENT_LENGTH
    assert (answer.max_cmd_sn - answer.exp_cmd_sn) & 0xFFFFFFFF == 4  # a window of 5
    # The framer now checks the negotiated digest and accepts the declared segment length.
    assert run.framer.header_digest and not run.framer.data_digest
    assert run.framer.max_recv_data_segment_length == TARGET_MAX_RECV_DATA_SEGMENT_LENGTH


async def test_bytes_sent_right_after_the_last_login_pdu_stay_in_the_framer() -> None:
    pairs = [
        ("InitiatorName", INITIATOR),
        ("SessionType", "Normal"),
        ("TargetName", VD1),
        ("HeaderDigest", "None"),
        ("DataDigest", "None"),
        ("MaxRecvDataSegmentLength", "8192"),
    ]
    request = _text_request(pairs, csg=LoginStage.OPERATIONAL, nsg=LoginStage.FULL_FEATURE)
    nop = NopOut(immediate=True, itt=0x77, cmd_sn=request.cmd_sn)
    run = await _serve(_policy().login_config(), _raw_login(request, encode_pdu(nop)))
    assert isinstance(run.answer, LoginResponse) and run.answer.transit
    assert run.outcome.complete, run.outcome.reason
    buffered = run.framer.next_pdu()
    assert isinstance(buffered, NopOut) and buffered.itt == 0x77


async def test_discovery_login_is_open_unless_discovery_chap_is_set() -> None:
    policy = _policy()
    assert isinstance((await _login(policy, None)).answer, LoginDone)
    policy.discovery_chap = ALICE
    _failed_with(await _login(policy, None), LoginStatus.AUTHENTICATION_FAILURE)
    alice = ChapSecrets(ALICE.user, ALICE.secret)
    run = await _login(policy, None, chap=alice)
    assert isinstance(run.answer, LoginDone)
    assert run.answer.params.session_type is SessionType.DISCOVERY
    # Mutual CHAP: the target proves itself with the discovery mutual secret.
    policy.discovery_mutual_chap = ChapCredentials("portal", "portal-secret-456")
    right = ChapSecrets("portal", "portal-secret-456")
    assert isinstance((await _login(policy, None, chap=alice, mutual_chap=right)).answer, LoginDone)
    wrong = ChapSecrets("portal", "what-the-initiator-expects")
    impostor = await _login(policy, None, chap=alice, mutual_chap=wrong)
    assert isinstance(impostor.answer, LoginFailed) and not impostor.outcome.complete
    assert impostor.outcome.reason == "closed during login"


# ---- refusals, by status ------------------------------------------------------------------


async def test_unknown_target_is_not_found() -> None:
    _failed_with(await _login(_policy(), target_name_for("nope")), LoginStatus.NOT_FOUND)


async def test_acl_refusal_is_an_authorization_failure_counted_on_the_target() -> None:
    policy = _policy()
    locked = policy.registry.get(target_name_for("locked"))
    assert locked is not None
    _failed_with(
        await _login(policy, locked.name, initiator=OUTSIDER), LoginStatus.AUTHORIZATION_FAILURE
    )
    assert locked.stats.login_failures == 1
    assert isinstance((await _login(policy, locked.name)).answer, LoginDone)
    assert locked.stats.login_failures == 1


async def test_chap_failure_is_an_authentication_failure_and_is_throttled() -> None:
    policy = _policy()
    throttle = LoginThrottle(first_delay=0.05)
    name = target_name_for("chap")
    _failed_with(await _login(policy, name), LoginStatus.AUTHENTICATION_FAILURE)  # no CHAP
    started = trio.current_time()
    wrong = await _login(
        policy, name, chap=ChapSecrets("alice", "guess"), throttle=throttle, peer="127.0.0.9"
    )
    _failed_with(wrong, LoginStatus.AUTHENTICATION_FAILURE)
    assert trio.current_time() - started >= 0.05  # the refusal was held back
    assert throttle.held_until(INITIATOR, "") > 0
    assert throttle.held_until("", "127.0.0.9") > 0  # and its source address
    right = await _login(policy, name, chap=ChapSecrets("alice", ALICE.secret), throttle=throttle)
    assert isinstance(right.answer, LoginDone)
    assert throttle.held_until(INITIATOR, "") == 0.0  # success forgives the initiator name
    assert throttle.held_until("", "127.0.0.9") > 0  # not the address


async def test_missing_initiator_or_target_name_is_a_missing_parameter() -> None:
    policy = _policy()
    no_initiator = _text_request([("SessionType", "Normal"), ("TargetName", VD1)])
    run = await _serve(policy.login_config(), _raw_login(no_initiator))
    assert isinstance(run.answer, LoginResponse)
    assert (run.answer.status_class, run.answer.status_detail) == (0x02, 0x07)
    assert run.outcome.reason.startswith("login failed") and not run.outcome.complete

    no_target = _text_request([("InitiatorName", INITIATOR), ("SessionType", "Normal")])
    run = await _serve(policy.login_config(), _raw_login(no_target))
    assert isinstance(run.answer, LoginResponse)
    assert (run.answer.status_class, run.answer.status_detail) == (0x02, 0x07)


async def test_unknown_session_type_is_not_supported() -> None:
    request = _text_request([("InitiatorName", INITIATOR), ("SessionType", "Bogus")])
    run = await _serve(_policy().login_config(), _raw_login(request))
    assert isinstance(run.answer, LoginResponse)
    assert (run.answer.status_class, run.answer.status_detail) == (0x02, 0x09)


async def test_target_removed_during_the_login_is_reported_as_removed() -> None:
    policy = _policy()

    def remove_vd1() -> None:
        policy.registry.remove(VD1)

    run = await _login(policy, VD1, after_first=remove_vd1)
    _failed_with(run, LoginStatus.TARGET_REMOVED)
    assert len(policy.sessions) == 0


# ---- TSIH and reinstatement ------------------------------------------------------------------


async def test_joining_a_session_is_refused_whether_or_not_it_exists() -> None:
    policy = _policy()
    _failed_with(await _login(policy, VD1, tsih=5), LoginStatus.SESSION_DOES_NOT_EXIST)
    target = policy.registry.get(VD1)
    policy.sessions.add(Session(INITIATOR, ISID, 5, SessionType.NORMAL, target, 0))
    # MaxConnections is 1: a second connection to a live session does not fit.
    _failed_with(await _login(policy, VD1, tsih=5), LoginStatus.TOO_MANY_CONNECTIONS)
    assert policy.sessions.get(5) is not None


async def test_same_initiator_port_reinstates_and_closes_the_old_session() -> None:
    policy = _policy()
    reasons: list[str] = []
    target = policy.registry.get(VD1)
    old = Session(INITIATOR, ISID, 3, SessionType.NORMAL, target, 0, closer=reasons.append)
    other_port = Session(INITIATOR, ISID + 1, 4, SessionType.NORMAL, target, 0)
    policy.sessions.add(old)
    policy.sessions.add(other_port)
    run = await _login(policy, VD1)
    assert isinstance(run.answer, LoginDone)
    assert run.answer.tsih not in (0, 3, 4)
    assert policy.sessions.get(3) is None and policy.sessions.get(4) is other_port
    assert len(reasons) == 1 and "reinstated" in reasons[0]


# ---- how run_login ends without a login -------------------------------------------------------


async def test_silent_or_dribbling_initiator_times_out() -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async def dribble(stream: trio.SocketStream) -> None:
        await stream.send_all(encode_pdu(_text_request([("InitiatorName", INITIATOR)]))[:20])
        await trio.sleep_forever()

    for behaviour in (silent, dribble):
        target_stream, initiator_stream = _socket_pair()
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(behaviour, initiator_stream)
                framer = PduFramer(receiving_from="initiator")
                login = TargetLogin(_policy().login_config())
                outcome = await run_login(target_stream, framer, login, timeout=0.2)
                nursery.cancel_scope.cancel()  # the initiator's side would wait forever
        await target_stream.aclose()
        await initiator_stream.aclose()
        assert outcome.reason == "login not finished within 0.2 s"
        assert not outcome.complete and not outcome.protocol_error


async def test_closed_connection_ends_the_login() -> None:
    async def hang_up(stream: trio.SocketStream) -> None:
        await stream.aclose()

    run = await _serve(_policy().login_config(), hang_up)
    assert run.outcome.reason == "closed during login"
    assert not run.outcome.complete and not run.outcome.protocol_error


async def test_anything_but_login_requests_is_a_protocol_error() -> None:
    async def nop(stream: trio.SocketStream) -> None:
        await stream.send_all(encode_pdu(NopOut(immediate=True)))

    async def garbage(stream: trio.SocketStream) -> None:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(64))

    run = await _serve(_policy().login_config(), nop)
    assert run.outcome.protocol_error and run.outcome.reason == "NopOut during login"
    run = await _serve(_policy().login_config(), garbage)
    assert run.outcome.protocol_error
    assert run.outcome.reason.startswith("protocol error during login")
    assert not run.outcome.complete


async def test_a_redirect_ends_the_login_as_redirected() -> None:
    config = replace(_policy().login_config(), resolve=lambda *_: Redirect.to("127.0.0.3", 3261, 1))
    run = await _serve(config, _machine_login(InitiatorLogin(INITIATOR, VD1, ISID)))
    assert isinstance(run.answer, LoginRedirect)
    assert (run.answer.host, run.answer.port, run.answer.tpgt) == ("127.0.0.3", 3261, 1)
    assert run.outcome.reason == "redirected" and not run.outcome.complete


async def test_peer_host_is_the_initiators_address(loopback_address: str) -> None:
    listeners = await trio.open_tcp_listeners(0, host=loopback_address)
    try:
        client = await trio.testing.open_stream_to_socket_listener(listeners[0])
        accepted = await listeners[0].accept()
        assert isinstance(accepted, trio.SocketStream)
        assert peer_host(accepted) == client.socket.getsockname()[0]
        assert peer_host(accepted).startswith("127.")
        await client.aclose()
        await accepted.aclose()
    finally:
        for listener in listeners:
            await listener.aclose()
    memory_stream, _ = trio.testing.memory_stream_pair()
    assert peer_host(memory_stream) == ""  # not a socket
    unix_stream, other = _socket_pair()
    assert peer_host(unix_stream) == ""  # a socket without an IP peer
    await unix_stream.aclose()
    await other.aclose()
