"""Isolation between sessions, against a real `stargate target` process: a session that asks
for much and sends nothing, or trickles a PDU, costs its own connection, never the others'.

The two hostile cases of issue 13: (a) WRITE(10)s of 16 MiB whose data never comes, sent
inside the CmdSN window, used to allocate 16 buffers of 16 MiB and stall every other vDisk
until the hog went away; (b) a PDU fed one byte at a time held its connection forever.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from cluster.cli import build_parser
from iscsicore.framing import encode_pdu
from iscsicore.pdu import R2T, NopOut, ScsiResponse
from iscsicore.scsi.opcodes import ScsiStatus
from iscsicore.seqnum import sn_diff
from stargate.cli import share_limits, target_config
from stargate.queue import ShareLimits
from stargate.transport.config import ConnectionTimers
from tests.helpers.procs import ManagedProcess, ProcessReaper
from tests.stargate.client import (
    TEST_UNIT_READY,
    TestInitiator,
    clear_unit_attention,
    logged_in,
    memory_target,
    proposals,
    read10,
    start_stargate,
    write10,
)
from topology.naming import target_name_for

HOG_COMMANDS = 300
DATA_OUT_TIMEOUT = 8.0
PDU_TIMEOUT = 3.0
RSS_LIMIT = 150 << 20


def _start_target(reaper: ProcessReaper, host: str, port: int, *extra: str) -> ManagedProcess:
    argv = [sys.executable, "-m", "stargate", "target", "--portal", f"{host}:{port}"]
    argv += ["--memory", "--vdisk", "hog:32M", "--vdisk", "victim:32M", *extra]
    process = reaper.spawn(argv, name="stargate")
    process.wait_for_port(host, port, timeout=30)
    return process


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def _connect(host: str, port: int, vdisk: str, **overrides: object) -> TestInitiator:
    initiator = await TestInitiator.connect(port, host)
    await initiator.login(target_name_for(vdisk), proposals=proposals(**overrides))
    await clear_unit_attention(initiator)
    return initiator


async def _flood_with_writes_and_no_data(hog: TestInitiator, size: int) -> tuple[int, int]:
    """Send the hog's writes, each inside the advertised CmdSN window (until it stays
    shut); returns how many R2Ts (slots granted) and TASK SET FULLs came back."""
    r2ts = task_set_full = sent = 0
    blocks = size // 512
    with trio.fail_after(20):
        while sent < HOG_COMMANDS:
            if sn_diff(hog.max_cmd_sn, hog.cmd_sn) >= 0:
                command = hog.command(write10(sent * blocks % 65536, blocks), edtl=size)
                await hog.send(command)
                sent += 1
                continue
            pdu = await hog.receive_or_none(1.0)  # a closed window: wait for it to reopen
            if pdu is None:
                break  # it stays shut: the hog sent all it may
            r2ts += isinstance(pdu, R2T)
            task_set_full += (
                isinstance(pdu, ScsiResponse) and pdu.status == ScsiStatus.TASK_SET_FULL
            )
    while (pdu := await hog.receive_or_none(0.5)) is not None:
        r2ts += isinstance(pdu, R2T)
        task_set_full += isinstance(pdu, ScsiResponse) and pdu.status == ScsiStatus.TASK_SET_FULL
    return r2ts, task_set_full


async def _verified_io(victim: TestInitiator, rounds: int) -> float:
    """Writes then reads back different data on every round; returns the slowest op."""
    slowest = 0.0
    for round_number in range(rounds):
        data = os.urandom(64 * 1024)
        lba = round_number * 128
        started = time.monotonic()
        written = await victim.scsi(write10(lba, 128), write_data=data, timeout=2)
        read = await victim.scsi(read10(lba, 128), read_length=len(data), timeout=2)
        slowest = max(slowest, time.monotonic() - started)
        assert written.status == ScsiStatus.GOOD and read.status == ScsiStatus.GOOD
        assert bytes(read.data) == data
    return slowest


# The largest write a command may ask for (buffer bytes), and a small one (queue slots).
@pytest.mark.parametrize("size", [16 << 20, 4096], ids=["16MiB", "4KiB"])
async def test_a_session_that_never_sends_its_data_stalls_nobody_else(
    process_reaper: ProcessReaper, loopback_address: str, free_port: int, size: int
) -> None:
    host = loopback_address
    target = _start_target(
        process_reaper, host, free_port, "--data-out-timeout", str(DATA_OUT_TIMEOUT)
    )
    hog = await _connect(host, free_port, "hog", initial_r2t=True, immediate_data=False)
    victim = await _connect(host, free_port, "victim")
    started = time.monotonic()
    r2ts, task_set_full = await _flood_with_writes_and_no_data(hog, size)
    # Its writes got at most their share of the slots (3/4 of 128; 4 x 16 MiB of buffer
    # bytes), then waited, then TASK SET FULL or a window that stays shut.
    assert 1 <= r2ts <= 96, (r2ts, task_set_full)
    assert size < 1 << 20 or (r2ts == 4 and task_set_full > 0), (r2ts, task_set_full)
    # Buffers follow the data: none came, so none was allocated.
    assert _rss(target.pid) < RSS_LIMIT, _rss(target.pid)
    # The other vDisk's session keeps going at full speed while the hog holds its share.
    slowest = await _verified_io(victim, rounds=20)
    assert slowest < 1.0, slowest
    assert time.monotonic() - started < DATA_OUT_TIMEOUT, "checked before the deadline"
    # Past the Data-Out deadline the hog's connection is dropped (ErrorRecoveryLevel 0).
    assert await hog.closed_by_target(timeout=DATA_OUT_TIMEOUT + 5)
    assert time.monotonic() - started >= DATA_OUT_TIMEOUT - 1
    assert await _verified_io(victim, rounds=5) < 1.0
    assert _rss(target.pid) < RSS_LIMIT
    await hog.close()
    await victim.close()


async def test_a_pdu_trickled_byte_by_byte_is_dropped_after_the_pdu_deadline(
    process_reaper: ProcessReaper, loopback_address: str, free_port: int
) -> None:
    host = loopback_address
    _start_target(process_reaper, host, free_port, "--pdu-timeout", str(PDU_TIMEOUT))
    trickler = await _connect(host, free_port, "hog")
    bystander = await _connect(host, free_port, "victim")
    segment = min(64 * 1024, trickler.target_mrdsl)
    ping = NopOut(itt=0x1234, cmd_sn=trickler.cmd_sn, immediate=True, data=bytes(segment))
    encoded = encode_pdu(ping)
    await trickler.stream.send_all(encoded[:64])  # the header and a little data
    started = time.monotonic()
    closed_after: float | None = None
    for offset in range(64, 64 + 20):  # one byte a second: never silent for the NOP timer
        try:
            await trickler.stream.send_all(encoded[offset : offset + 1])
            await trickler.receive(timeout=1.0)
        except trio.TooSlowError:
            continue
        except (EOFError, trio.BrokenResourceError):
            closed_after = time.monotonic() - started
            break
        raise AssertionError("a PDU was answered before it was complete")
    assert closed_after is not None, "the trickled PDU held its connection"
    assert PDU_TIMEOUT - 0.5 <= closed_after <= PDU_TIMEOUT + 3, closed_after
    # The other session did not notice.
    assert (await bystander.scsi(TEST_UNIT_READY, timeout=2)).status == ScsiStatus.GOOD
    await trickler.close()
    await bystander.close()


def test_the_bounds_and_deadlines_are_flags_of_stargate_target() -> None:
    args = build_parser().parse_args(
        [
            *("target", "--memory", "--vdisk", "vd1:8M", "--queue-depth", "64"),
            *("--max-buffer-mib", "128", "--session-slots", "8", "--vdisk-buffer-mib", "40"),
            *("--data-out-timeout", "7", "--pdu-timeout", "2.5"),
        ]
    )
    config = target_config(args)
    session, vdisk = share_limits(config, "session"), share_limits(config, "vdisk")
    assert session == ShareLimits(slots=8, buffered_bytes=32 << 20, waiting=16)
    assert vdisk == ShareLimits(slots=48, buffered_bytes=40 << 20, waiting=16)
    assert (config.data_out_timeout, config.pdu_timeout, config.max_buffer_mib) == (7, 2.5, 128)


@pytest.mark.parametrize("flag", ["--session-slots", "--vdisk-buffer-mib", "--pdu-timeout"])
def test_a_bound_that_is_not_positive_is_refused(flag: str) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "stargate", "target", "--memory", "--vdisk", "vd1:8M", flag, "0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert completed.returncode == 2 and flag in completed.stderr, completed.stderr


async def test_a_dropped_hog_gives_back_every_slot_byte_and_waiting_place(
    nursery: trio.Nursery,
) -> None:
    server = await start_stargate(
        nursery,
        memory_target("hog"),
        memory_target("victim"),
        queue_depth=8,
        timers=ConnectionTimers(data_out_timeout=3.0),
    )
    hog = await logged_in(
        server, "hog", proposals=proposals(initial_r2t=True, immediate_data=False)
    )
    victim = await logged_in(server, "victim")
    for initiator in (hog, victim):
        await clear_unit_attention(initiator)
    size = 1 << 20
    r2ts, _ = await _flood_with_writes_and_no_data(hog, size)
    assert r2ts == 6  # 3/4 of the 8 slots; then up to 2 waiting places (1/4 of 8)
    hog_share = server.queue.tenant(target_name_for("hog")).vdisk
    assert (hog_share.slots, hog_share.buffered_bytes) == (6, 6 * size)
    assert 1 <= hog_share.waiting <= 2
    # The victim's writes, inline and through an R2T, run beside it.
    data = os.urandom(128 * 1024)
    assert (await victim.scsi(write10(0, 256), write_data=data, timeout=2)).status == 0
    assert (await victim.scsi(read10(0, 256), read_length=len(data), timeout=2)).data == data
    assert await hog.closed_by_target(timeout=5)
    with trio.fail_after(2):
        while server.queue.in_flight or server.queue.waiting:
            await trio.sleep(0.01)
    assert (server.queue.buffered_bytes, hog_share.slots, hog_share.buffered_bytes) == (0, 0, 0)
    assert hog_share.waiting == 0
