"""Failover against tgtd: the target is killed (or frozen) mid-workload and comes back on
the same port with the same LUN file. The verify workload must ride it out with no
mismatch; a target that stays away must fail commands with TargetUnreachable."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from initiator.device import BlockDevice
from initiator.errors import TargetUnreachable
from initiator.login_flow import LoginOptions
from initiator.session import SessionConfig
from initiator.verify import Verifier
from tests.initiator import tgtd_control
from tests.peers.tgtd import MiB, TgtdTarget

TgtdFactory = Callable[..., TgtdTarget]


@pytest.mark.parametrize("crashes", [1, 2])
async def test_verify_survives_tgtd_kill_and_restart(
    tgtd_factory: TgtdFactory, crashes: int
) -> None:
    tgt = tgtd_factory(lun_sizes=[16 * MiB])
    config = SessionConfig(replacement_timeout=30.0)
    async with BlockDevice.open(tgt.url(), config) as disk:
        verifier = Verifier(disk, chunk_blocks=8, region_blocks=4096, seed=1)

        async def crash_and_recover() -> None:
            for _ in range(crashes):
                await trio.sleep(1.0)
                await trio.to_thread.run_sync(tgtd_control.kill, tgt)
                await trio.sleep(1.0)
                await trio.to_thread.run_sync(tgtd_control.restart, tgt)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(crash_and_recover)
            report = await verifier.run(3.0 + 2.0 * crashes, queue_depth=16)
    assert report.mismatch_count == 0, report.mismatches
    assert report.errors == 0, report.last_error
    assert report.reconnects == crashes
    assert report.writes > 100 and report.reads > 100
    assert report.final_pass_blocks > 0
    assert 0.9 < report.longest_pause_s < 10, "the outage should show as a pause"


async def test_nop_timeout_detects_a_silent_target(tgtd_factory: TgtdFactory) -> None:
    """SIGSTOP keeps the socket open but silent: only the NOP-Out ping can notice. The
    session reconnects when tgtd thaws; the read in flight just takes longer."""
    tgt = tgtd_factory(lun_sizes=[4 * MiB])
    config = SessionConfig(
        login=LoginOptions(login_timeout=1.0),
        nop_interval=0.3,
        nop_timeout=0.5,
        replacement_timeout=30.0,
    )
    async with BlockDevice.open(tgt.url(), config) as disk:
        await disk.write(0, b"n" * 512)
        tgtd_control.freeze(tgt, True)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.to_thread.run_sync, _thaw_later, tgt)
                with trio.fail_after(20):
                    assert await disk.read(0, 1) == b"n" * 512
        finally:
            tgtd_control.freeze(tgt, False)
        assert disk.stats.reconnects >= 1


def _thaw_later(tgt: TgtdTarget) -> None:
    import time

    time.sleep(2.0)
    tgtd_control.freeze(tgt, False)


async def test_replacement_timeout_fails_commands_clearly(tgtd_factory: TgtdFactory) -> None:
    tgt = tgtd_factory(lun_sizes=[4 * MiB])
    config = SessionConfig(replacement_timeout=1.5)
    async with BlockDevice.open(tgt.url(), config) as disk:
        await disk.read(0, 1)
        await trio.to_thread.run_sync(tgtd_control.kill, tgt)
        started = trio.current_time()
        with trio.fail_after(10), pytest.raises(TargetUnreachable) as caught:
            await disk.read(0, 1)
        waited = trio.current_time() - started
        assert waited < 8.0  # the 1.5 s timeout runs from the loss, not from this read
        assert "unreachable" in str(caught.value)
        # Later commands fail at once while the target stays away.
        with trio.fail_after(1), pytest.raises(TargetUnreachable):
            await disk.read(0, 1)
        # And the session recovers by itself once the target is back.
        await trio.to_thread.run_sync(tgtd_control.restart, tgt)
        with trio.fail_after(10):
            while True:
                try:
                    await disk.read(0, 1)
                    break
                except TargetUnreachable:
                    await trio.sleep(0.2)
        assert disk.stats.reconnects == 1


async def test_replacement_timeout_holds_even_while_a_login_hangs(
    tgtd_factory: TgtdFactory,
) -> None:
    """A frozen target accepts TCP connections (the kernel does) but never answers the
    login: the replacement timeout must still fire on time, not after the login timeout."""
    tgt = tgtd_factory(lun_sizes=[4 * MiB])
    config = SessionConfig(
        login=LoginOptions(login_timeout=30.0),
        nop_interval=0.2,
        nop_timeout=0.3,
        replacement_timeout=1.5,
    )
    async with BlockDevice.open(tgt.url(), config) as disk:
        tgtd_control.freeze(tgt, True)
        try:
            started = trio.current_time()
            with trio.fail_after(10), pytest.raises(TargetUnreachable):
                await disk.read(0, 1)
            assert trio.current_time() - started < 10.0  # far below the 30 s login timeout
        finally:
            tgtd_control.freeze(tgt, False)
