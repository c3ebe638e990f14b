"""Connection faults against real initiators: libiscsi (under qemu-io) reconnecting after a
TCP reset, and the project's initiator finding a blackholed connection by NOP timeout."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any
from urllib.request import urlopen

import pytest
import trio

from faults import DropMode, Fault, FaultKind
from faults.forensics import Forensics
from initiator.session import Session, SessionConfig
from iscsicore.portal import Portal
from tests.faults.conftest import FaultyTarget
from tests.peers.tools import qemu_io
from tests.stargate.client import read10, recorded_by, start_stargate
from topology.naming import target_name_for


def _forensics(target: FaultyTarget) -> list[dict[str, Any]]:
    with urlopen(f"{target.http_url}/forensics", timeout=10) as answer:
        return list(json.load(answer)["events"])


def test_libiscsi_reconnects_after_a_tcp_reset_mid_io(
    require_tool: Callable[..., str], faulty_target: Callable[..., FaultyTarget]
) -> None:
    require_tool("qemu-io")
    target = faulty_target("--memory")
    url = target.url()
    qemu_io(url, ["write -P 0x5a 0 256k"])
    # The READ touching LBA 128..135 (64 KiB in) is answered with a reset, once.
    target.fault("add", "drop_connection", "--mode", "reset", "--opcode", "0x28",
                 "--lba", "128-135", "--count", "1")  # fmt: skip
    output = qemu_io(url, ["read -P 0x5a 0 256k"])  # libiscsi reconnects and re-issues
    assert "read 262144/262144" in output
    events = _forensics(target)
    ends = [e["reason"] for e in events if e["event"] == "session_end"]
    assert "fault: connection reset" in ends, ends
    assert [e["kind"] for e in events if e["event"] == "fault"] == ["drop_connection"]
    logins = [e for e in events if e["event"] == "login"]
    assert len(logins) >= 3  # the write's session, the read's, and the read's reconnect


async def test_blackhole_is_found_only_by_the_nop_timeout(nursery: trio.Nursery) -> None:
    forensics = Forensics("test")
    server = await start_stargate(nursery, hooks=recorded_by(forensics))
    assert server.port is not None
    config = SessionConfig(nop_interval=0.3, nop_timeout=1.0, replacement_timeout=30.0)
    async with Session.connect(
        Portal("127.0.0.1", server.port), target_name_for("vd1"), config
    ) as session:
        await session.execute(read10(0, 1), read_length=512, check=False)  # unit attention
        server.faults.add(Fault(FaultKind.DROP_CONNECTION, mode=DropMode.BLACKHOLE, count=1))
        started = time.monotonic()
        with trio.fail_after(30):
            result = await session.execute(read10(0, 8), read_length=4096)
        elapsed = time.monotonic() - started
        assert len(result.data) == 4096
        assert session.stats.reconnects == 1
        # Nothing but the initiator's own ping timeout could have found it.
        assert elapsed >= config.nop_timeout
    logins = [e for e in forensics.events if e["event"] == "login"]
    assert len(logins) == 2
    ends = [e["reason"] for e in forensics.events if e["event"] == "session_end"]
    assert not any("NOP-In" in reason for reason in ends)  # the target never gave up itself


@pytest.mark.slow
def test_libiscsi_finds_a_blackhole_by_its_nop_timeout(
    require_tool: Callable[..., str], faulty_target: Callable[..., FaultyTarget]
) -> None:
    """QEMU pings every 5 s and gives up after 3 unanswered NOP-Outs; only then does
    libiscsi reconnect and re-issue the read. The target never closes the socket."""
    require_tool("qemu-io")
    target = faulty_target("--memory")
    url = target.url()
    qemu_io(url, ["write -P 0x3c 0 64k"])
    target.fault("add", "drop_connection", "--mode", "blackhole", "--opcode", "0x28",
                 "--count", "1")  # fmt: skip
    started = time.monotonic()
    output = qemu_io(url, ["read -P 0x3c 0 64k"], timeout=180)
    elapsed = time.monotonic() - started
    assert "read 65536/65536" in output
    assert elapsed >= 10, elapsed  # found by pings, not by a reset
    events = _forensics(target)
    assert len([e for e in events if e["event"] == "login"]) >= 3
    (fired,) = [e for e in events if e["event"] == "fault"]
    ends = [e for e in events if e["event"] == "session_end" and e["t"] > fired["t"]]
    assert ends and ends[0]["t"] - fired["t"] >= 10, ends  # dark for the whole NOP timeout
