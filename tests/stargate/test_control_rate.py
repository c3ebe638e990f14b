"""A hostile session's PDUs without SCSI work, and its reconnect storms, against a real
`stargate target` process over loopback TCP: they cost the hostile connection time, never
the other sessions'.

(a) A NOP-Out flood is answered at the connection's control-PDU allowance
(``--control-pdu-rate``), every ping in order, none dropped; a READ of another vDisk stays
fast meanwhile. (b) Connections from an address whose connections were dropped for protocol
errors are taken more and more slowly; an established session, and logins from another
address, are not.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import trio

from cluster.cli import build_parser
from iscsicore.framing import encode_pdu
from iscsicore.pdu import NopIn, NopOut
from iscsicore.scsi.opcodes import ScsiStatus
from stargate.cli import target_config
from stargate.login_throttle import LogLimiter
from stargate.transport.config import DEFAULT_CONTROL_PDU_BURST
from tests.helpers.net import free_port
from tests.helpers.procs import ManagedProcess, ProcessReaper
from tests.stargate.client import (
    TEST_UNIT_READY,
    TestInitiator,
    clear_unit_attention,
    read10,
)
from topology.naming import target_name_for

HOST = "127.0.0.1"
OTHER_HOST = "127.0.0.2"
RATE = 500  # control PDUs per second the flood gets
PINGS = 2000  # the flood: ~3.5 s of allowance at RATE (after the burst)


def _start_target(reaper: ProcessReaper, *extra: str) -> tuple[ManagedProcess, int]:
    port = free_port(HOST)
    argv = [sys.executable, "-m", "stargate", "target", "--portal", f"{HOST}:{port}"]
    argv += ["--memory", "--vdisk", "hostile:16M", "--vdisk", "victim:16M", *extra]
    process = reaper.spawn(argv, name="stargate")
    process.wait_for_port(HOST, port, timeout=30)
    return process, port


async def _session(port: int, vdisk: str, source: str = HOST) -> TestInitiator:
    initiator = TestInitiator(await trio.open_tcp_stream(HOST, port, local_address=source))
    await initiator.login(target_name_for(vdisk))
    await clear_unit_attention(initiator)
    return initiator


async def test_a_nop_flood_is_answered_at_the_allowance_in_order_and_slows_nobody(
    process_reaper: ProcessReaper,
) -> None:
    _, port = _start_target(process_reaper, "--control-pdu-rate", str(RATE))
    flooder = await _session(port, "hostile")
    victim = await _session(port, "victim")
    pings = b"".join(
        encode_pdu(NopOut(itt=itt, cmd_sn=flooder.cmd_sn, immediate=True, data=b""))
        for itt in range(1, PINGS + 1)
    )
    answered: list[int] = []
    answered_at_one_second: list[int] = []
    read_times: list[float] = []

    async def flood() -> None:
        await flooder.stream.send_all(pings)  # as fast as the connection takes them

    async def answers() -> None:
        while len(answered) < PINGS:
            pdu = await flooder.receive(timeout=10)
            assert isinstance(pdu, NopIn), pdu
            answered.append(pdu.itt)

    async def victim_reads() -> None:
        for n in range(200):
            started = time.monotonic()
            result = await victim.scsi(read10(n * 8, 8), read_length=4096, timeout=2)
            read_times.append(time.monotonic() - started)
            assert result.status == ScsiStatus.GOOD

    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(flood)
        nursery.start_soon(answers)
        nursery.start_soon(victim_reads)
        await trio.sleep(1.0)
        answered_at_one_second.append(len(answered))
    took = time.monotonic() - started
    # At the allowance: the burst, then RATE a second (slack for a loaded machine).
    assert answered_at_one_second[0] <= DEFAULT_CONTROL_PDU_BURST + RATE * 1.3, (
        answered_at_one_second
    )
    assert took >= (PINGS - DEFAULT_CONTROL_PDU_BURST) / RATE * 0.8, took
    # Every ping answered, once, in order: the flood waited in the socket, none dropped.
    assert answered == list(range(1, PINGS + 1))
    # The other vDisk's session did not notice.
    assert len(read_times) == 200
    assert max(read_times) < 0.05, sorted(read_times)[-5:]
    await flooder.close()
    await victim.close()


async def _garbage_connection(port: int, after_login: bool) -> None:
    """One connection that sends garbage, and waits for the target to drop it."""
    if after_login:
        initiator = await _session(port, "hostile")
    else:
        initiator = TestInitiator(await trio.open_tcp_stream(HOST, port, local_address=HOST))
    await initiator.stream.send_all(b"\xff" * 48 + os.urandom(200))
    assert await initiator.closed_by_target(timeout=10)
    await initiator.close()


STORM = 10  # connections; the holds after them: 5 ms doubling, up to 0.5 s (~1.6 s)


async def test_a_garbage_reconnect_storm_is_slowed_but_not_the_others(
    process_reaper: ProcessReaper,
) -> None:
    _, port = _start_target(process_reaper)
    established = await _session(port, "victim")
    command_times: list[float] = []

    async def storm() -> float:
        started = time.monotonic()
        for n in range(STORM):
            await _garbage_connection(port, after_login=n % 2 == 1)
        return time.monotonic() - started

    async def established_commands(done: trio.Event) -> None:
        while not done.is_set():
            started = time.monotonic()
            result = await established.scsi(TEST_UNIT_READY, timeout=2)
            command_times.append(time.monotonic() - started)
            assert result.status == ScsiStatus.GOOD
            await trio.sleep(0.01)

    storm_took: list[float] = []
    done = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(established_commands, done)
        storm_took.append(await storm())
        # Another address is not held: it logs in at once meanwhile.
        login_started = time.monotonic()
        other = await _session(port, "hostile", source=OTHER_HOST)
        other_login = time.monotonic() - login_started
        done.set()
    assert storm_took[0] >= 1.2, storm_took  # without the holds: a few ms a connection
    assert other_login < 0.5, other_login
    assert command_times and max(command_times) < 0.2, max(command_times)
    await other.close()
    await established.close()


def test_the_control_pdu_rate_is_a_flag_of_stargate_target() -> None:
    base = ["target", "--memory", "--vdisk", "vd1:8M"]
    given = target_config(build_parser().parse_args([*base, "--control-pdu-rate", "0"]))
    assert given.control_pdu_rate == 0
    assert target_config(build_parser().parse_args(base)).control_pdu_rate == 2000


@pytest.mark.parametrize("value", ["-1", "many", "nan"])
def test_a_bad_control_pdu_rate_is_refused(value: str) -> None:
    argv = [sys.executable, "-m", "stargate", "target", "--memory", "--vdisk", "vd1:8M"]
    completed = subprocess.run(
        [*argv, "--control-pdu-rate", value],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert completed.returncode == 2 and "--control-pdu-rate" in completed.stderr


def test_the_drop_log_keeps_the_first_lines_and_counts_the_rest() -> None:
    now = [0.0]
    limiter = LogLimiter(per_second=2, clock=lambda: now[0])
    assert [limiter.allow("a") for _ in range(5)] == [(True, 0), (True, 0)] + [(False, 0)] * 3
    assert limiter.allow("b") == (True, 0)  # per address
    now[0] = 1.5
    assert limiter.allow("a") == (True, 3)  # the next line says how many were left out
