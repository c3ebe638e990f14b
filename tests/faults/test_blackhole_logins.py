"""A ``drop_connection --mode blackhole`` fault swallows new logins of its scope while it is
on: the TCP connection is accepted, the Login Request never answered, until the fault is
cleared or expires. Another vDisk's logins are answered as usual."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import trio

from faults import DropMode, Fault, FaultKind
from initiator.errors import LoginError
from initiator.login_flow import LoginOptions, establish
from iscsicore.portal import Portal
from stargate.server import StargateServer
from tests.faults.conftest import FaultyTarget
from tests.peers.tools import PeerToolError, iscsi_inq
from tests.stargate.client import TestInitiator, start_stargate
from topology.naming import target_name_for

CLIENT_LOGIN_TIMEOUT = 1.5


async def _login(server: StargateServer, vdisk_id: str | None) -> None:
    """Log in with the project's initiator (None: discovery) and out again."""
    assert server.port is not None
    options = LoginOptions(login_timeout=CLIENT_LOGIN_TIMEOUT)
    target = target_name_for(vdisk_id) if vdisk_id is not None else None
    established = await establish(Portal("127.0.0.1", server.port), target, options)
    await established.connection.aclose()


async def test_blackholed_vdisk_swallows_new_logins_until_cleared(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery, login_timeout=30.0)
    fault = server.faults.add(
        Fault(FaultKind.DROP_CONNECTION, vdisk="vd1", mode=DropMode.BLACKHOLE)
    )
    started = time.monotonic()
    with pytest.raises(LoginError, match="timed out"):
        await _login(server, "vd1")
    assert time.monotonic() - started >= CLIENT_LOGIN_TIMEOUT
    await _login(server, "vd2")  # another vDisk: answered as usual
    await _login(server, None)  # a discovery session names no vDisk: not in the scope
    assert [(e.kind, e.vdisk) for e in server.faults.events] == [("drop_connection", "vd1")]

    # A connection held in the dark is let go once the fault is cleared.
    assert server.port is not None
    held = await TestInitiator.connect(server.port)
    with trio.move_on_after(1.0) as unanswered:
        await held.login(target_name_for("vd1"))
    assert unanswered.cancelled_caught
    server.faults.remove(fault.fault_id)
    assert await held.closed_by_target(5.0)
    await held.close()
    await _login(server, "vd1")


async def test_a_swallowed_login_outlasts_the_login_timeout(nursery: trio.Nursery) -> None:
    """The stargate's login timeout bounds answered logins only: a dead path does not close
    the connection after it, only the fault's end does."""
    server = await start_stargate(nursery, login_timeout=0.5)
    fault = server.faults.add(
        Fault(FaultKind.DROP_CONNECTION, vdisk="vd1", mode=DropMode.BLACKHOLE)
    )
    assert server.port is not None
    held = await TestInitiator.connect(server.port)
    with trio.move_on_after(2.0) as unanswered:  # four login timeouts
        await held.login(target_name_for("vd1"))
    assert unanswered.cancelled_caught
    assert not await held.closed_by_target(0.5)
    server.faults.remove(fault.fault_id)
    assert await held.closed_by_target(5.0)
    await held.close()


async def test_blackhole_of_every_vdisk_swallows_discovery_too_until_it_expires(
    nursery: trio.Nursery,
) -> None:
    server = await start_stargate(nursery, login_timeout=30.0)
    armed_at = trio.current_time()
    server.faults.add(Fault(FaultKind.DROP_CONNECTION, mode=DropMode.BLACKHOLE, duration=3.0))
    with pytest.raises(LoginError, match="timed out"):
        await _login(server, None)
    with pytest.raises(LoginError, match="timed out"):
        await _login(server, "vd2")
    await trio.sleep_until(armed_at + 3.1)  # `duration` has passed: answered again
    await _login(server, "vd2")
    await _login(server, None)
    assert not server.faults.armed


async def test_count_limited_blackhole_keeps_its_login_dark(nursery: trio.Nursery) -> None:
    """count=1: one login is swallowed, and stays so (like a blackholed connection) although
    the fault is spent; the next login is answered."""
    server = await start_stargate(nursery, login_timeout=30.0)
    server.faults.add(Fault(FaultKind.DROP_CONNECTION, mode=DropMode.BLACKHOLE, count=1))
    assert server.port is not None
    held = await TestInitiator.connect(server.port)
    with trio.move_on_after(1.0) as unanswered:  # not closed either: that would raise
        await held.login(target_name_for("vd1"))
    assert unanswered.cancelled_caught
    assert not server.faults.armed
    await _login(server, "vd1")
    assert not await held.closed_by_target(0.5)
    await held.close()


async def test_blackhole_waiting_for_a_scsi_command_leaves_logins_alone(
    nursery: trio.Nursery,
) -> None:
    server = await start_stargate(nursery)
    server.faults.add(Fault(FaultKind.DROP_CONNECTION, mode=DropMode.BLACKHOLE, opcodes=(0x28,)))
    server.faults.add(
        Fault(FaultKind.DROP_CONNECTION, mode=DropMode.BLACKHOLE, pdu_opcodes=(0x01,))
    )
    await _login(server, "vd1")
    assert not server.faults.events


def test_iscsi_inq_of_a_blackholed_vdisk_gets_no_answer_until_cleared(
    require_tool: Callable[..., str], faulty_target: Callable[..., FaultyTarget]
) -> None:
    require_tool("iscsi-inq")
    target = faulty_target("--memory", "--vdisk", "vd2:16M")
    armed = target.fault("add", "drop_connection", "--mode", "blackhole", "--vdisk", "vd1")
    assert "armed" in armed
    with pytest.raises(PeerToolError, match="timed out"):
        iscsi_inq(target.url("vd1"), timeout=4)
    assert iscsi_inq(target.url("vd2"), timeout=30).vendor  # the other vDisk answers
    (fired,) = target.faults()["events"]
    assert (fired["kind"], fired["vdisk"], fired["detail"]) == (
        "drop_connection",
        "vd1",
        "at login",
    )
    assert "cleared 1" in target.fault("clear")
    assert iscsi_inq(target.url("vd1"), timeout=30).vendor
