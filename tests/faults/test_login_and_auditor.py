"""Login faults against the project's initiator (redirects, loops, slow logins) and the
initiator auditor noticing misbehaviour of a deliberately sloppy initiator."""

from __future__ import annotations

import time

import pytest
import trio

from faults import Delay, Fault, FaultKind
from faults.forensics import Forensics
from initiator.errors import RedirectError
from initiator.login_flow import LoginOptions, establish
from iscsicore.pdu import AsyncMessage
from iscsicore.portal import Portal
from tests.stargate.client import (
    TestInitiator,
    clear_unit_attention,
    logged_in,
    read10,
    recorded_by,
    start_stargate,
)
from topology.naming import target_name_for


async def test_permanent_redirect_to_another_stargate(nursery: trio.Nursery) -> None:
    first = await start_stargate(nursery)
    second = await start_stargate(nursery)
    first.faults.add(Fault(FaultKind.LOGIN_REDIRECT, vdisk="vd1", status=0x0102,
                           portal=f"127.0.0.1:{second.port}"))  # fmt: skip
    assert first.port is not None
    established = await establish(
        Portal("127.0.0.1", first.port), target_name_for("vd1"), LoginOptions()
    )
    assert established.redirects == 1
    assert established.connection.portal.port == second.port
    await established.connection.aclose()


async def test_redirect_loop_is_caught_by_the_initiator(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    assert server.port is not None
    server.faults.add(Fault(FaultKind.LOGIN_REDIRECT, portal=f"127.0.0.1:{server.port}"))
    with pytest.raises(RedirectError, match="loop"):
        await establish(Portal("127.0.0.1", server.port), target_name_for("vd1"), LoginOptions())


async def test_slow_login(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    server.faults.add(Fault(FaultKind.LOGIN_DELAY, delay=Delay(0.4), count=1))
    started = time.monotonic()
    initiator = await logged_in(server)
    assert time.monotonic() - started >= 0.4
    await initiator.close()


async def test_auditor_flags_isid_churn_and_duplicate_sessions(nursery: trio.Nursery) -> None:
    forensics = Forensics("test")
    server = await start_stargate(nursery, hooks=recorded_by(forensics))
    live = []
    for serial in range(5):  # every "reconnect" with a new ISID, the old session left open
        live.append(await logged_in(server, isid=0x400000AB0000 + serial))
    with trio.fail_after(5):  # the server records a login just after answering it
        while len([e for e in forensics.events if e["event"] == "login"]) < 5:
            await trio.sleep(0.02)
    counts = forensics.auditor.document()["counts"]
    assert counts["isid_churn"] == 1
    assert counts["duplicate_session"] == 4
    for initiator in live:
        await initiator.close()


async def test_auditor_flags_an_ignored_async_logout(nursery: trio.Nursery) -> None:
    forensics = Forensics("test")
    server = await start_stargate(nursery, hooks=recorded_by(forensics))
    initiator = await logged_in(server)
    await clear_unit_attention(initiator)
    server.faults.add(Fault(FaultKind.ASYNC_LOGOUT, vdisk="vd1", time2wait=1))
    message = await initiator.receive(5)
    assert isinstance(message, AsyncMessage) and message.async_event == 1
    # The sloppy initiator ignores it; the target drops it after the time it gave.
    assert await initiator.closed_by_target(timeout=15)
    with trio.fail_after(5):
        while not forensics.auditor.counts.get("ignored_async_logout"):
            await trio.sleep(0.05)
    finding = forensics.auditor.document()["findings"][-1]
    assert finding["kind"] == "ignored_async_logout" and finding["target"] == "vd1"


async def test_auditor_flags_cmd_sn_outside_the_window(nursery: trio.Nursery) -> None:
    forensics = Forensics("test")
    server = await start_stargate(nursery, hooks=recorded_by(forensics))
    initiator: TestInitiator = await logged_in(server)
    await clear_unit_attention(initiator)

    await initiator.send(
        initiator.command(read10(0, 1), read_length=512, cmd_sn=initiator.cmd_sn + 1000)
    )
    assert await initiator.receive_or_none(0.5) is None  # silently ignored, as RFC 7143 says
    await initiator.close()
    with trio.fail_after(5):
        while not forensics.auditor.counts.get("cmd_sn_out_of_window"):
            await trio.sleep(0.05)
