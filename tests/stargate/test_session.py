"""Sessions and the session table (`stargate.session`): TSIH allocation, the identity a
reinstating login matches, the CmdSN window a session advertises, and the bookkeeping the
server does with them (sessions and connections counted per vDisk, removed at logout)."""

from __future__ import annotations

import pytest
import trio

from iscsicore.keys import SessionType
from iscsicore.login import LoginDone
from iscsicore.pdu import LogoutRequest, LogoutResponse
from stargate.server import StargateServer
from stargate.session import MAX_TSIH, Session, SessionTable
from stargate.target import VDiskTarget
from tests.stargate.client import (
    INITIATOR,
    TEST_UNIT_READY,
    TestInitiator,
    logged_in,
    memory_target,
    start_stargate,
)
from topology.naming import target_name_for

OTHER_INITIATOR = "iqn.2026-11.test:other-host"
ISID = 0x23D000000007


def _session(
    tsih: int,
    *,
    initiator: str = INITIATOR,
    isid: int = ISID,
    target: VDiskTarget | None = None,
    exp_cmd_sn: int = 0,
) -> Session:
    return Session(
        initiator,
        isid,
        tsih,
        SessionType.DISCOVERY if target is None else SessionType.NORMAL,
        target,
        exp_cmd_sn,
    )


# ---- the table ----------------------------------------------------------------------------


def test_tsihs_count_up_from_one_skipping_live_sessions() -> None:
    table = SessionTable()
    assert [table.allocate_tsih() for _ in range(3)] == [1, 2, 3]
    table.add(_session(4))
    table.add(_session(5, isid=ISID + 1))
    assert table.allocate_tsih() == 6  # 4 and 5 are in use


def test_tsih_wraps_to_one_and_never_hands_out_zero() -> None:
    table = SessionTable()
    table.add(_session(1))
    seen = {table.allocate_tsih() for _ in range(MAX_TSIH - 1)}
    assert seen == set(range(2, MAX_TSIH + 1))
    # Wrapped around: 1 is still live, so the next is 2 again, never 0 (reserved).
    assert table.allocate_tsih() == 2


def test_tsih_exhaustion_is_an_error_not_a_duplicate() -> None:
    table = SessionTable()
    for tsih in range(1, MAX_TSIH + 1):
        table.add(_session(tsih, isid=tsih))
    with pytest.raises(RuntimeError, match="65535"):
        table.allocate_tsih()
    freed = table.get(777)
    assert freed is not None
    table.remove(freed)
    assert table.allocate_tsih() == 777


def test_find_matches_initiator_isid_and_target_of_a_live_session() -> None:
    vd1, vd2 = memory_target("vd1"), memory_target("vd2")
    table = SessionTable()
    session = _session(1, target=vd1)
    table.add(session)
    discovery = _session(2)
    table.add(discovery)
    assert table.find(INITIATOR, ISID, vd1.name) is session
    assert table.find(INITIATOR, ISID, None) is discovery
    # Any part of the identity different: another I_T nexus, nothing to reinstate.
    assert table.find(INITIATOR, ISID + 1, vd1.name) is None
    assert table.find(OTHER_INITIATOR, ISID, vd1.name) is None
    assert table.find(INITIATOR, ISID, vd2.name) is None
    # A session already closing is not reinstated a second time.
    session.closed = True
    assert table.find(INITIATOR, ISID, vd1.name) is None


def test_remove_takes_out_only_that_session_object() -> None:
    table = SessionTable()
    old = _session(9)
    table.add(old)
    table.remove(old)
    successor = _session(9, isid=ISID + 1)
    table.add(successor)
    table.remove(old)  # late cleanup of the old session must not drop its successor
    assert table.get(9) is successor
    assert len(table) == 1


def test_of_target_and_iteration_tolerate_removal() -> None:
    vd1, vd2 = memory_target("vd1"), memory_target("vd2")
    table = SessionTable()
    sessions = [
        _session(1, target=vd1),
        _session(2, target=vd1, isid=ISID + 1),
        _session(3, target=vd2),
        _session(4),
    ]
    for session in sessions:
        table.add(session)
    assert table.of_target(vd1.name) == sessions[:2]
    assert table.of_target(vd2.name) == [sessions[2]]
    assert table.of_target(target_name_for("nope")) == []
    for session in table:  # a snapshot: removing while iterating is allowed
        table.remove(session)
    assert len(table) == 0 and table.get(1) is None


# ---- one session ----------------------------------------------------------------------------


def test_session_window_starts_at_the_login_cmd_sn_and_only_grows() -> None:
    session = _session(1, target=memory_target("vd1"), exp_cmd_sn=0xFFFFFFFE)
    assert session.exp_cmd_sn == 0xFFFFFFFE
    session.max_cmd_sn = 0x1_0000_0003  # stored modulo 2**32
    assert session.max_cmd_sn == 3
    # A share of 8 free slots opens the window to ExpCmdSN + 7, wrapping past 2**32.
    assert session.advertise_window(8) == 5
    # A smaller share never takes back what was granted (serial arithmetic across the wrap).
    assert session.advertise_window(1) == 5
    assert session.advertise_window(0) == 5


def test_session_names_its_target_and_closes_through_its_closer() -> None:
    vd1 = memory_target("vd1")
    reasons: list[str] = []
    session = Session(INITIATOR, ISID, 7, SessionType.NORMAL, vd1, 0, closer=reasons.append)
    assert session.target_name == target_name_for("vd1")
    assert _session(8).target_name is None
    assert "isid=0x23d000000007" in repr(session) and "tsih=7" in repr(session)
    session.close("reinstated")
    assert reasons == ["reinstated"]
    session.closed = True
    session.close("again")  # already over: its connection is not closed twice
    assert reasons == ["reinstated"]
    _session(9).close("no closer yet")  # before the connection exists: nothing to call


# ---- sessions of a running server --------------------------------------------------------------


async def _logout(initiator: TestInitiator) -> None:
    await initiator.send(
        LogoutRequest(
            itt=initiator.next_itt(), cmd_sn=initiator.cmd_sn, exp_stat_sn=initiator.exp_stat_sn
        )
    )
    response = await initiator.receive()
    assert isinstance(response, LogoutResponse) and response.response == 0
    assert await initiator.closed_by_target()


async def _wait_for_sessions(server: StargateServer, count: int) -> None:
    with trio.fail_after(3):
        while len(server.sessions) != count:
            await trio.sleep(0.01)


def _counters(server: StargateServer, vdisk_id: str) -> tuple[object, ...]:
    stats = server.stats()[vdisk_id]
    return stats["logins"], stats["sessions"], stats["connections"]


async def test_sessions_and_connections_are_counted_per_vdisk(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    first = await logged_in(server, "vd1")
    second = await logged_in(server, "vd1")
    other = await logged_in(server, "vd2")
    assert server.port is not None
    discovery = await TestInitiator.connect(server.port)
    assert isinstance(await discovery.login(None), LoginDone)
    await _wait_for_sessions(server, 4)
    assert _counters(server, "vd1") == (2, 2, 2)
    assert _counters(server, "vd2") == (1, 1, 1)
    assert {s.tsih for s in server.sessions} == {
        first.tsih,
        second.tsih,
        other.tsih,
        discovery.tsih,
    }
    assert len({first.tsih, second.tsih, other.tsih, discovery.tsih}) == 4
    assert [s.tsih for s in server.sessions.of_target(target_name_for("vd2"))] == [other.tsih]

    live = server.sessions.get(first.tsih)
    assert live is not None
    await _logout(first)
    await _wait_for_sessions(server, 3)
    assert live.closed and server.sessions.get(first.tsih) is None
    assert _counters(server, "vd1") == (2, 1, 1)  # logins is a total, the rest are live
    await _logout(discovery)
    await _wait_for_sessions(server, 2)
    assert _counters(server, "vd1") == (2, 1, 1) and _counters(server, "vd2") == (1, 1, 1)


async def test_only_the_same_initiator_port_and_target_reinstate(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    base = await logged_in(server, "vd1", isid=ISID)
    others = [
        await logged_in(server, "vd2", isid=ISID),  # same port, another target
        await logged_in(server, "vd1", isid=ISID + 1),  # another ISID
        await logged_in(server, "vd1", isid=ISID, initiator_name=OTHER_INITIATOR),
    ]
    await _wait_for_sessions(server, 4)
    assert _counters(server, "vd1") == (3, 3, 3)
    for initiator in [base, *others]:
        assert server.sessions.get(initiator.tsih) is not None
        assert (await initiator.scsi(TEST_UNIT_READY)).status is not None  # still served

    again = await logged_in(server, "vd1", isid=ISID)
    assert await base.closed_by_target()
    await _wait_for_sessions(server, 4)
    assert server.sessions.get(base.tsih) is None
    assert server.sessions.get(again.tsih) is not None
    assert all(server.sessions.get(initiator.tsih) is not None for initiator in others)
    assert _counters(server, "vd1") == (4, 3, 3)
