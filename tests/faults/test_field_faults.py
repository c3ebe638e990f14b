"""The four faults seen in the field, on the wire: I/O failed while a logout request is
pending (libiscsi #140), logins refused while a restarted target is not configured (spdk
#1676), CHAP demanded behind a redirect (open-iscsi #117), ABORT TASK answered "function
not supported" (spdk #2001). What the target sends, and what the project's initiator
makes of it. The real clients (libiscsi, QEMU) are in test_field_faults_peers.py."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import trio

from cluster.cli import build_parser
from cluster.fault_cli import FaultCliError, fault_document
from cluster.scenario import Scenario, ScenarioError
from faults import Fault
from initiator.errors import AuthenticationError, LoginError, TaskAborted
from initiator.login_flow import LoginOptions
from initiator.session import Session, SessionConfig
from initiator.url import ChapCredentials
from iscsicore.chap import ChapSecrets
from iscsicore.login import LoginDone, LoginFailed
from iscsicore.pdu import (
    AsyncMessage,
    ScsiResponse,
    TaskMgmtRequest,
    TaskMgmtResponse,
    TmfFunction,
    TmfResponse,
)
from iscsicore.portal import Portal
from iscsicore.scsi.sense import parse_sense
from redirector.faults import redirector_fault_error
from tests.stargate.client import (
    TestInitiator,
    clear_unit_attention,
    logged_in,
    read10,
    start_stargate,
)
from topology.naming import target_name_for

ILLEGAL_REQUEST = 0x05


async def _ready(server, vdisk_id: str = "vd1", **login: object) -> TestInitiator:
    initiator = await logged_in(server, vdisk_id, **login)  # type: ignore[arg-type]
    await clear_unit_attention(initiator)
    return initiator


# -- 1. I/O failed while a logout request is pending -----------------------------------


async def test_io_fails_only_while_a_logout_request_is_pending(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    asked, other = await _ready(server, "vd1"), await _ready(server, "vd2")
    server.faults.add(Fault.from_dict({"kind": "logout_pending_fail"}))
    before = await asked.scsi(read10(0, 1), read_length=512)
    assert before.status == 0  # no logout requested yet: the fault waits
    assert server.request_logout("vd1", seconds=30) == 1
    event = await asked.receive(5)
    assert isinstance(event, AsyncMessage) and event.async_event == 1
    assert event.parameter3 == 30
    failed = await asked.scsi(read10(0, 1), read_length=512)
    assert failed.status == 0x02  # CHECK CONDITION, ILLEGAL REQUEST, LU NOT SUPPORTED
    sense = parse_sense(failed.sense)
    assert (sense.key, sense.asc, sense.ascq) == (ILLEGAL_REQUEST, 0x25, 0x00)
    untouched = await other.scsi(read10(0, 1), read_length=512)  # no logout asked of it
    assert untouched.status == 0
    fired = [e for e in server.faults.events if e.kind == "logout_pending_fail"]
    assert len(fired) == 1 and fired[0].vdisk == "vd1"


async def test_logout_pending_fail_with_a_chosen_status(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    initiator = await _ready(server)
    fault = Fault.from_dict({"kind": "logout_pending_fail", "scsi_status": "busy", "count": 1})
    server.faults.add(fault)
    server.request_logout("vd1", seconds=30)
    assert isinstance(await initiator.receive(5), AsyncMessage)
    busy = await initiator.scsi(read10(0, 1), read_length=512)
    assert busy.status == 0x08 and busy.sense == b""
    assert (await initiator.scsi(read10(0, 1), read_length=512)).status == 0  # count 1


def test_logout_pending_fail_refuses_a_status_that_is_not_a_failure() -> None:
    with pytest.raises(ValueError, match="scsi_status"):
        Fault.from_dict({"kind": "logout_pending_fail", "scsi_status": 0})
    with pytest.raises(ValueError, match="scsi_status"):
        Fault.from_dict({"kind": "logout_pending_fail", "scsi_status": "good"})


async def test_the_project_initiator_sees_the_command_that_crossed_the_logout_request(
    nursery: trio.Nursery,
) -> None:
    """The command issued as the AsyncEvent is on its way fails with the fault's sense (the
    initiator passes ILLEGAL REQUEST up, as it should); then the initiator sends nothing
    new on that connection, logs out, logs in again, and the rest succeed."""
    server = await start_stargate(nursery)
    server.faults.add(Fault.from_dict({"kind": "logout_pending_fail"}))
    assert server.port is not None
    portal = Portal("127.0.0.1", server.port)
    async with Session.connect(portal, target_name_for("vd1")) as session:
        await session.execute(read10(0, 1), read_length=512, check=False)  # unit attention
        server.request_logout("vd1", seconds=5)
        with trio.fail_after(20):
            results = [
                await session.execute(read10(lba, 1), read_length=512, check=False)
                for lba in range(20)
            ]
    crossed, *after = results
    assert crossed.status == 0x02
    sense = parse_sense(crossed.sense)
    assert (sense.key, sense.asc, sense.ascq) == (ILLEGAL_REQUEST, 0x25, 0x00)
    assert all(result.status == 0 for result in after)
    assert [e.kind for e in server.faults.events] == ["logout_pending_fail"]


# -- 2. the portal listens before the target is configured ------------------------------


async def test_login_not_ready_refuses_every_login_then_lets_them_in(
    nursery: trio.Nursery,
) -> None:
    server = await start_stargate(nursery)
    assert server.port is not None
    server.faults.add(Fault.from_dict({"kind": "login_not_ready", "duration": 1.0}))
    started = time.monotonic()
    for target in (target_name_for("vd1"), None):  # a Normal and a discovery login
        initiator = await TestInitiator.connect(server.port)
        outcome = await initiator.login(target)
        await initiator.close()
        assert isinstance(outcome, LoginFailed)
        assert outcome.raw_status == 0x0301  # service unavailable: retry later
    with trio.fail_after(10):
        while True:
            initiator = await TestInitiator.connect(server.port)
            outcome = await initiator.login(target_name_for("vd1"))
            await initiator.close()
            if isinstance(outcome, LoginDone):
                break
            await trio.sleep(0.1)
    assert time.monotonic() - started >= 0.9
    refusals = [e for e in server.faults.events if e.kind == "login_not_ready"]
    assert len(refusals) >= 2


async def test_the_project_initiator_retries_a_not_ready_target(nursery: trio.Nursery) -> None:
    """Its first login is refused with 0x0301 (LoginError, the status named); the same
    login after the window succeeds."""
    server = await start_stargate(nursery)
    assert server.port is not None
    not_ready = Fault.from_dict({"kind": "login_not_ready", "duration": 1.0, "status": 0x0302})
    server.faults.add(not_ready)
    portal = Portal("127.0.0.1", server.port)
    with pytest.raises(LoginError) as refused:
        async with Session.connect(portal, target_name_for("vd1")):
            pass
    assert refused.value.status == 0x0302 and refused.value.status_name == "OUT_OF_RESOURCES"
    await trio.sleep(1.1)
    async with Session.connect(portal, target_name_for("vd1")) as session:
        assert session.connected


async def test_the_project_initiator_waits_out_a_not_ready_window_after_a_reset(
    nursery: trio.Nursery,
) -> None:
    """As after a restart: the connection is reset and logins are refused (0x0301) for
    1.5 s; the session's reconnect loop retries (backoff at most 1 s) and the read that
    was waiting completes once the target is ready."""
    server = await start_stargate(nursery)
    assert server.port is not None
    portal = Portal("127.0.0.1", server.port)
    async with Session.connect(portal, target_name_for("vd1")) as session:
        await session.execute(read10(0, 1), read_length=512, check=False)  # unit attention
        server.faults.add(Fault.from_dict({"kind": "login_not_ready", "duration": 1.5}))
        server.faults.add(Fault.from_dict({"kind": "drop_connection", "count": 1}))
        started = trio.current_time()
        with trio.fail_after(30):
            result = await session.execute(read10(0, 1), read_length=512, check=False)
        waited = trio.current_time() - started
    assert result.status in (0x00, 0x02)  # GOOD, or the new nexus's unit attention
    refusals = [e for e in server.faults.events if e.kind == "login_not_ready"]
    assert refusals and waited >= 1.0, (refusals, waited)


def test_login_not_ready_wants_a_refusing_status() -> None:
    with pytest.raises(ValueError, match="0x02xx"):
        Fault.from_dict({"kind": "login_not_ready", "status": 0x0101})


# -- 3. CHAP demanded at the target a redirect leads to ---------------------------------


async def test_require_chap_refuses_logins_without_the_secret(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    assert server.port is not None
    server.faults.add(
        Fault.from_dict({"kind": "require_chap", "chap_user": "u1", "chap_secret": "s" * 12})
    )
    for chap in (None, ChapSecrets("u1", "wrong-secret"), ChapSecrets("u2", "s" * 12)):
        initiator = await TestInitiator.connect(server.port)
        outcome = await initiator.login(target_name_for("vd1"), chap=chap)
        await initiator.close()
        assert isinstance(outcome, LoginFailed), chap
        assert outcome.raw_status in (0x0201, 0x0200), (chap, outcome)  # no CHAP offered: 0x0201
    right = await _ready(server, chap=ChapSecrets("u1", "s" * 12))
    assert (await right.scsi(read10(0, 1), read_length=512)).status == 0


async def test_the_project_initiator_behind_a_redirect_to_a_chap_target(
    nursery: trio.Nursery,
) -> None:
    """A portal redirects (0x0101) to a stargate that demands CHAP: with the right
    credentials the initiator follows the redirect and logs in; with wrong or none it
    reports an authentication failure naming the target it was sent to and the portal
    that sent it there (open-iscsi #117's message named neither)."""
    chap_target = await start_stargate(nursery)
    portal_server = await start_stargate(nursery)
    assert chap_target.port is not None and portal_server.port is not None
    chap_target.faults.add(
        Fault.from_dict({"kind": "require_chap", "chap_user": "u1", "chap_secret": "s" * 12})
    )
    portal_server.faults.add(
        Fault.from_dict({"kind": "login_redirect", "portal": f"127.0.0.1:{chap_target.port}"})
    )
    portal = Portal("127.0.0.1", portal_server.port)

    def config(secret: str | None) -> SessionConfig:
        chap = ChapCredentials("u1", secret) if secret is not None else None
        return SessionConfig(login=LoginOptions(chap=chap))

    async with Session.connect(portal, target_name_for("vd1"), config("s" * 12)) as session:
        assert session.portal is not None and session.portal.port == chap_target.port
        result = await session.execute(read10(0, 1), read_length=512, check=False)
        assert result.status in (0x00, 0x02)  # the unit attention of a new nexus at most
    for secret in ("wrong-secret", None):
        with pytest.raises(LoginError) as failed:
            async with Session.connect(portal, target_name_for("vd1"), config(secret)):
                pass
        assert failed.value.status == 0x0201, failed.value
        assert isinstance(failed.value, AuthenticationError)
        where = f"at 127.0.0.1:{chap_target.port}, where {portal.host_port} redirected us"
        assert where in str(failed.value), failed.value
    assert [e.kind for e in portal_server.faults.events].count("login_redirect") == 3
    assert [e.kind for e in chap_target.faults.events].count("require_chap") == 3


def test_require_chap_needs_credentials_and_is_refused_at_a_redirector() -> None:
    with pytest.raises(ValueError, match="chap_user"):
        Fault.from_dict({"kind": "require_chap"})
    fault = Fault.from_dict({"kind": "require_chap", "chap_user": "u", "chap_secret": "x" * 12})
    assert fault.redacted()["chap_secret"] == "***"
    assert "stargate" in (redirector_fault_error(fault) or "")


# -- 4. ABORT TASK answered "function not supported" ------------------------------------


async def test_abort_task_is_answered_not_supported_and_the_task_runs_on(
    nursery: trio.Nursery,
) -> None:
    server = await start_stargate(nursery)
    initiator = await _ready(server)
    server.faults.add(Fault.from_dict({"kind": "hang", "count": 1}))
    server.faults.add(Fault.from_dict({"kind": "abort_task_unsupported"}))
    hung = initiator.command(read10(0, 1), read_length=512)
    await initiator.send(hung)

    def tmf(function: TmfFunction) -> TaskMgmtRequest:
        return TaskMgmtRequest(immediate=True, function=function, itt=initiator.next_itt(),
                               referenced_task_tag=hung.itt, cmd_sn=initiator.cmd_sn,
                               exp_stat_sn=initiator.exp_stat_sn,
                               ref_cmd_sn=hung.cmd_sn)  # fmt: skip

    abort = tmf(TmfFunction.ABORT_TASK)
    await initiator.send(abort)
    answer = await initiator.receive(5)
    assert isinstance(answer, TaskMgmtResponse) and answer.itt == abort.itt
    assert answer.response == TmfResponse.NOT_SUPPORTED
    assert await initiator.receive_or_none(0.5) is None  # the task still hangs
    reset = tmf(TmfFunction.LOGICAL_UNIT_RESET)  # other functions are left alone
    await initiator.send(reset)
    answers = [await initiator.receive(5), await initiator.receive_or_none(1.0)]
    responses = [a for a in answers if isinstance(a, TaskMgmtResponse)]
    assert [r.response for r in responses] == [TmfResponse.COMPLETE]
    assert not any(isinstance(a, ScsiResponse) and a.status == 0 for a in answers)
    fired = [e.kind for e in server.faults.events]
    assert fired.count("abort_task_unsupported") == 1


async def test_the_project_initiator_sees_abort_task_refused(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    server.faults.add(Fault.from_dict({"kind": "hang", "count": 1, "opcodes": [0x28]}))
    server.faults.add(Fault.from_dict({"kind": "abort_task_unsupported"}))
    assert server.port is not None
    portal = Portal("127.0.0.1", server.port)
    aborted: list[Exception] = []

    async def hung_read(session: Session) -> None:
        try:
            await session.execute(read10(0, 1), read_length=512)
        except TaskAborted as error:
            aborted.append(error)

    async with Session.connect(portal, target_name_for("vd1")) as session:
        await session.execute(bytes(6), check=False)  # TEST UNIT READY: the unit attention
        async with trio.open_nursery() as inner:
            inner.start_soon(hung_read, session)
            with trio.fail_after(5):
                while not session.outstanding_tags():
                    await trio.sleep(0.01)
            (itt,) = session.outstanding_tags()
            assert await session.abort_task(itt) == TmfResponse.NOT_SUPPORTED
            assert session.outstanding == 1  # refused: the command is still its own
            await session.lun_reset()  # what is left to an initiator: a wider function
    assert session.outstanding == 0 and len(aborted) == 1
    assert [e.kind for e in server.faults.events].count("abort_task_unsupported") == 1


# -- armed the ways every fault is: the CLI's document, scenario steps, start-up flags --


def test_the_cli_builds_the_four_faults() -> None:
    parser = build_parser()

    def document(*words: str) -> dict[str, object]:
        return fault_document(parser.parse_args(["fault", "add", *words, "--url", "http://x"]))

    chap = document("require_chap", "--chap", "user:secret-of-12")
    assert Fault.from_dict(chap).chap_user == "user"
    busy = Fault.from_dict(document("logout_pending_fail", "--scsi-status", "busy"))
    assert busy.scsi_status == 0x08 and busy.sense_key == ILLEGAL_REQUEST
    not_ready = Fault.from_dict(document("login_not_ready", "--duration", "5"))
    assert not_ready.status == 0x0301 and not_ready.duration == 5
    assert Fault.from_dict(document("abort_task_unsupported")).kind.value == (
        "abort_task_unsupported"
    )
    with pytest.raises(FaultCliError, match="USER:SECRET"):
        document("require_chap", "--chap", "no-colon")


def test_scenario_steps_take_the_four_faults_and_a_not_ready_restart() -> None:
    steps = [
        {"at": 1, "fault": {"kind": "logout_pending_fail", "scsi_status": "task_set_full"}},
        {
            "at": 2,
            "node": 1,
            "fault": {"kind": "require_chap", "chap_user": "u", "chap_secret": "s" * 12},
        },
        {"at": 3, "fault": {"kind": "abort_task_unsupported", "count": 1}},
        {"at": 4, "redirector": 1, "fault": {"kind": "login_not_ready", "duration": 2}},
        {"at": 5, "cvm": "restart", "node": 1, "not_ready": 3},
    ]
    scenario = Scenario.from_dict({"vm": [{"name": "v", "home": 1}], "step": steps})
    assert scenario.steps[-1].not_ready == 3
    wrong = [
        {
            "at": 1,
            "redirector": 1,
            "fault": {"kind": "require_chap", "chap_user": "u", "chap_secret": "s" * 12},
        },
        {"at": 1, "cvm": "kill", "node": 1, "not_ready": 3},
        {"at": 1, "cvm": "start", "node": 1, "not_ready": 3, "not_ready_status": "0x0101"},
        {"at": 1, "cvm": "start", "node": 1, "not_ready": 0},
    ]
    for step in wrong:
        with pytest.raises(ScenarioError):
            Scenario.from_dict({"vm": [{"name": "v", "home": 1}], "step": [step]})


def test_stargate_target_refuses_a_not_ready_status_that_is_no_refusal() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "stargate", "target", "--memory", "--vdisk", "vd1:1M",
         "--portal", "127.0.0.1:0", "--not-ready", "3", "--not-ready-status", "0x0101"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert completed.returncode == 2, completed.stderr
    assert "--not-ready-status 0x0101" in completed.stderr and "Traceback" not in completed.stderr
