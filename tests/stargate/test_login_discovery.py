"""Login policy (ACLs, CHAP, target lookup, reinstatement, timeouts) and SendTargets."""

from __future__ import annotations

from typing import Any

import trio

from iscsicore.chap import ChapSecrets
from iscsicore.keys import decode_text
from iscsicore.login import LoginDone, LoginFailed
from iscsicore.pdu import LoginStatus, TextRequest, TextResponse
from iscsicore.scsi.opcodes import ScsiStatus
from stargate.server import StargateServer
from stargate.target import ChapCredentials
from tests.stargate.client import (
    INITIATOR,
    TEST_UNIT_READY,
    TestInitiator,
    logged_in,
    memory_target,
    start_stargate,
)
from topology.naming import target_name_for

OTHER_INITIATOR = "iqn.2026-11.test:someone-else"


async def _login(
    server: StargateServer, target: str | None, **kwargs: Any
) -> LoginDone | LoginFailed:
    assert server.port is not None
    initiator = await TestInitiator.connect(server.port)
    try:
        return await initiator.login(target, **kwargs)
    finally:
        await initiator.close()


async def _send_targets(initiator: TestInitiator, value: str) -> list[tuple[str, str]]:
    text = b""
    ttt = 0xFFFFFFFF
    while True:
        await initiator.send(
            TextRequest(
                itt=initiator.next_itt(),
                ttt=ttt,
                cmd_sn=initiator.cmd_sn,
                data=f"SendTargets={value}\0".encode() if ttt == 0xFFFFFFFF else b"",
            )
        )
        initiator.cmd_sn += 1
        response = await initiator.receive()
        assert isinstance(response, TextResponse)
        text += bytes(response.data)
        if response.final:
            return decode_text(text)
        ttt = response.ttt


async def test_unknown_target_is_not_found(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    outcome = await _login(server, target_name_for("nope"))
    assert isinstance(outcome, LoginFailed) and outcome.raw_status == LoginStatus.NOT_FOUND


async def test_acl_refuses_and_hides_the_target(nursery: trio.Nursery) -> None:
    server = await start_stargate(
        nursery, memory_target("open"), memory_target("locked", allowed=frozenset({INITIATOR}))
    )
    refused = await _login(server, target_name_for("locked"), initiator_name=OTHER_INITIATOR)
    assert isinstance(refused, LoginFailed)
    assert refused.raw_status == LoginStatus.AUTHORIZATION_FAILURE
    assert isinstance(await _login(server, target_name_for("locked")), LoginDone)

    outsider = await TestInitiator.connect(server.port)  # type: ignore[arg-type]
    assert isinstance(await outsider.login(None, initiator_name=OTHER_INITIATOR), LoginDone)
    names = [value for key, value in await _send_targets(outsider, "All") if key == "TargetName"]
    assert names == [target_name_for("open")]
    insider = await TestInitiator.connect(server.port)  # type: ignore[arg-type]
    assert isinstance(await insider.login(None), LoginDone)
    names = [value for key, value in await _send_targets(insider, "All") if key == "TargetName"]
    assert sorted(names) == sorted([target_name_for("open"), target_name_for("locked")])


async def test_send_targets_reports_the_advertised_portal(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    server.registry.portal_group.advertised_addresses = ["127.9.9.9:3261"]
    initiator = await TestInitiator.connect(server.port)  # type: ignore[arg-type]
    assert isinstance(await initiator.login(None), LoginDone)
    pairs = await _send_targets(initiator, target_name_for("vd2"))
    assert pairs == [("TargetName", target_name_for("vd2")), ("TargetAddress", "127.9.9.9:3261,1")]


async def test_long_send_targets_answer_is_continued(nursery: trio.Nursery) -> None:
    targets = [
        memory_target(f"disk-with-a-rather-long-name-{index:04d}", 1 << 20) for index in range(300)
    ]
    server = await start_stargate(nursery, *targets)
    initiator = await TestInitiator.connect(server.port)  # type: ignore[arg-type]
    assert isinstance(await initiator.login(None), LoginDone)
    names = [value for key, value in await _send_targets(initiator, "All") if key == "TargetName"]
    assert len(names) == 300


async def test_chap_one_way_and_mutual(nursery: trio.Nursery) -> None:
    chap = ChapCredentials("alice", "alice-secret-123")
    mutual = ChapCredentials("vd-target", "target-secret-456")
    server = await start_stargate(nursery, memory_target("vd1", chap=chap, mutual_chap=mutual))
    name = target_name_for("vd1")
    none = await _login(server, name)
    assert isinstance(none, LoginFailed)
    assert none.raw_status == LoginStatus.AUTHENTICATION_FAILURE
    wrong = await _login(server, name, chap=ChapSecrets("alice", "not-the-secret"))
    assert isinstance(wrong, LoginFailed)
    assert wrong.raw_status == LoginStatus.AUTHENTICATION_FAILURE
    right = await _login(server, name, chap=ChapSecrets("alice", "alice-secret-123"))
    assert isinstance(right, LoginDone)
    both = await _login(
        server,
        name,
        chap=ChapSecrets("alice", "alice-secret-123"),
        mutual_chap=ChapSecrets("vd-target", "target-secret-456"),
    )
    assert isinstance(both, LoginDone)
    impostor = await _login(
        server,
        name,
        chap=ChapSecrets("alice", "alice-secret-123"),
        mutual_chap=ChapSecrets("vd-target", "what-the-initiator-expects"),
    )
    assert isinstance(impostor, LoginFailed)


async def test_reinstatement_drops_the_old_session(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    old = await logged_in(server, isid=0x23D000000042)
    new = await logged_in(server, isid=0x23D000000042)
    assert await old.closed_by_target()
    assert new.tsih != old.tsih
    for _ in range(3):
        if (await new.scsi(TEST_UNIT_READY)).status == ScsiStatus.GOOD:
            break
    with trio.fail_after(2):
        while len(server.sessions) != 1:
            await trio.sleep(0.01)


async def test_silent_client_is_dropped_after_the_login_timeout(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery, memory_target("vd1"), login_timeout=0.5)
    silent = await TestInitiator.connect(server.port)  # type: ignore[arg-type]
    with trio.fail_after(3):
        assert await silent.stream.receive_some(10) == b""
    other = await logged_in(server)  # unaffected
    assert (await other.scsi(TEST_UNIT_READY)).status is not None


async def test_garbage_during_login_closes_the_connection(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    client = await TestInitiator.connect(server.port)  # type: ignore[arg-type]
    await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(64))
    with trio.fail_after(3):
        while await client.stream.receive_some(100):
            pass
    assert isinstance(await _login(server, target_name_for("vd1")), LoginDone)
