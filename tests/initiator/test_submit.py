"""`Session.submit` / `BlockDevice.submit_read` / `submit_write` (the callback path
``initiator bench`` runs on) against stargate in process: the data, the errors `execute`
would raise, the transparent retries, a dropped connection in the middle; and the bench
itself through a drop."""

from __future__ import annotations

import os
from collections.abc import Callable

import trio

from initiator.bench import Pattern, run_bench
from initiator.device import BlockDevice
from initiator.errors import CheckCondition, InitiatorError
from initiator.session import SessionConfig
from iscsicore.scsi.sense import SenseKey
from stargate.server import StargateServer
from tests.stargate.client import memory_target, start_stargate
from topology.naming import target_name_for

MiB = 1 << 20
BLOCK = 512
TIMEOUT = 20.0


def url_of(server: StargateServer, vdisk: str) -> str:
    return f"iscsi://127.0.0.1:{server.port}/{target_name_for(vdisk)}/0"


class Outcomes:
    """Callback outcomes by key, and an event once ``expected`` have come."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.by_key: dict[int, object] = {}
        self.all_in = trio.Event()

    def callback(self, key: int) -> Callable[[object], None]:
        def done(outcome: object) -> None:
            assert key not in self.by_key, f"callback {key} called twice"
            self.by_key[key] = outcome
            if len(self.by_key) == self.expected:
                self.all_in.set()

        return done

    async def wait(self) -> dict[int, object]:
        with trio.fail_after(TIMEOUT):
            await self.all_in.wait()
        return self.by_key


async def test_submitted_writes_then_reads_return_the_data(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery, memory_target("vd1", 4 * MiB))
    blocks = {lba: os.urandom(8 * BLOCK) for lba in range(0, 64 * 8, 8)}
    async with BlockDevice.open(url_of(server, "vd1")) as disk:
        writes = Outcomes(len(blocks))
        for lba, data in blocks.items():
            disk.submit_write(lba, data, writes.callback(lba))  # all in flight at once
        assert set((await writes.wait()).values()) == {None}
        reads = Outcomes(len(blocks))
        for lba in blocks:
            disk.submit_read(lba, 8, reads.callback(lba))
        assert await reads.wait() == blocks
        assert (disk.stats.reads, disk.stats.writes) == (len(blocks), len(blocks))
        assert disk.stats.bytes_read == disk.stats.bytes_written == 64 * 8 * BLOCK


async def test_submitted_errors_and_retries_are_those_of_execute(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery, memory_target("vd1", 4 * MiB))
    async with BlockDevice.open(url_of(server, "vd1")) as disk:
        await disk.write(5, b"\x5a" * BLOCK)
        await disk.lun_reset()  # the next command meets a UNIT ATTENTION: retried
        outcomes = Outcomes(2)
        disk.submit_read(5, 1, outcomes.callback(0))
        disk.submit_read(disk.blocks, 1, outcomes.callback(1))  # past the end
        got = await outcomes.wait()
        assert got[0] == b"\x5a" * BLOCK
        error = got[1]
        assert isinstance(error, CheckCondition)
        assert error.sense_key == SenseKey.ILLEGAL_REQUEST
        assert disk.stats.unit_attentions >= 1  # each command in flight may meet it
        assert disk.stats.errors == 1


async def test_submitted_commands_ride_out_a_dropped_connection(nursery: trio.Nursery) -> None:
    """Commands in flight when the target drops the connection are re-issued after the
    reconnect; every callback comes once, with the right data."""
    server = await start_stargate(nursery, memory_target("vd1", 4 * MiB))
    pattern = {lba: bytes([lba % 251 + 1]) * BLOCK for lba in range(256)}
    config = SessionConfig(replacement_timeout=TIMEOUT)
    async with BlockDevice.open(url_of(server, "vd1"), config) as disk:
        for lba, data in pattern.items():
            await disk.write(lba, data)
        rounds = 40
        outcomes = Outcomes(rounds * len(pattern) // 8)
        for round_number in range(rounds):
            for lba in range(round_number % 8, len(pattern), 8):
                disk.submit_read(lba, 1, outcomes.callback(round_number * 1000 + lba))
            if round_number == rounds // 2:
                assert server.drop_connections("vd1", time2wait=0) == 1
            await trio.sleep(0.01)
        got = await outcomes.wait()
        for key, outcome in got.items():
            assert not isinstance(outcome, InitiatorError), outcome
            assert outcome == pattern[key % 1000], key
        assert disk.stats.reconnects == 1


async def test_bench_runs_on_submit_and_rides_out_a_drop(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery, memory_target("vd1", 8 * MiB))
    config = SessionConfig(replacement_timeout=TIMEOUT)
    async with BlockDevice.open(url_of(server, "vd1"), config) as disk:

        async def drop() -> None:
            await trio.sleep(0.4)
            assert server.drop_connections("vd1", time2wait=0) == 1

        nursery.start_soon(drop)
        with trio.fail_after(TIMEOUT):
            report = await run_bench(
                disk, Pattern.RANDRW, block_size=4096, queue_depth=16, seconds=1.0, seed=1
            )
    assert report.errors == 0, report.last_error
    assert report.reconnects == 1
    assert report.reads > 0 and report.writes > 0
    assert report.ios == report.reads + report.writes == report.latency.seen
    assert report.cpu_seconds > 0
