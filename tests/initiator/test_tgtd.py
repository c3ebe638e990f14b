"""The initiator against tgtd, an independent target: discovery, login (None, CHAP one-way
and mutual), digests, I/O of every shape, many commands in flight, tgtd's redirects."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import trio

from initiator.cdb import parse_report_luns, report_luns
from initiator.device import BlockDevice
from initiator.discovery import send_targets
from initiator.errors import AuthenticationError, CheckCondition, LoginError, RedirectError
from initiator.login_flow import LoginOptions
from initiator.session import SessionConfig
from initiator.url import parse_url
from iscsicore.pdu import TmfResponse
from iscsicore.portal import Portal
from iscsicore.scsi.sense import SenseKey
from tests.peers.tgtd import ChapAccount, MiB, RedirectTo, TgtdTarget

TgtdFactory = Callable[..., TgtdTarget]
USER = ChapAccount("initiator-user", "initiator-pass1")
TARGET_ACCOUNT = ChapAccount("target-user", "target-secret12")


def quick_config(**login: Any) -> SessionConfig:
    return SessionConfig(login=LoginOptions(**login), replacement_timeout=5.0)


async def test_discovery_lists_the_target(tgtd_factory: TgtdFactory) -> None:
    tgt = tgtd_factory(iqn="iqn.2026-11.test.tgtd:discover")
    targets = await send_targets(Portal.parse(tgt.portal))
    assert [t.name for t in targets] == [tgt.iqn]
    assert any(str(tgt.port) in portal for portal in targets[0].portals)


async def test_read_write_and_capacity(tgtd_factory: TgtdFactory) -> None:
    tgt = tgtd_factory(lun_sizes=[32 * MiB])
    async with BlockDevice.open(tgt.url(), quick_config()) as disk:
        assert disk.block_size == 512
        assert disk.capacity.size_bytes == 32 * MiB
        inquiry = await disk.inquiry()
        assert inquiry.peripheral_type == 0
        await disk.test_unit_ready()
        payload = os.urandom(8 * 512)
        await disk.write(100, payload, fua=True)
        assert await disk.read(100, 8) == payload
        await disk.flush()
        luns = await disk.execute(report_luns(), read_length=4096)
        assert 1 in parse_report_luns(bytes(luns.data))
        assert disk.stats.writes == 1 and disk.stats.reads == 1


async def test_out_of_range_read_raises_decoded_check_condition(
    tgtd_factory: TgtdFactory,
) -> None:
    tgt = tgtd_factory(lun_sizes=[4 * MiB])
    async with BlockDevice.open(tgt.url(), quick_config()) as disk:
        with pytest.raises(CheckCondition) as caught:
            await disk.read(disk.blocks, 1)
        assert caught.value.sense_key == SenseKey.ILLEGAL_REQUEST
        assert (caught.value.asc, caught.value.ascq) == (0x21, 0x00)
        assert await disk.read(0, 1) == bytes(512)  # the session is still fine


@pytest.mark.parametrize("size", [512 * 1024 + 512, 1 * MiB, 3 * MiB + 4096])
async def test_large_io_crosses_r2t_burst_and_data_in_splits(
    tgtd_factory: TgtdFactory, size: int
) -> None:
    """tgtd's MaxRecvDataSegmentLength (8 KiB) and MaxBurstLength (256 KiB) cut a multi-MiB
    write into an immediate part, R2Ts and many Data-Out PDUs; reads come back in bursts."""
    tgt = tgtd_factory(lun_sizes=[16 * MiB])
    async with BlockDevice.open(tgt.url(), quick_config(initial_r2t=False)) as disk:
        params = disk.session.params
        assert size > params.max_burst_length > params.target_max_recv_data_segment_length
        payload = os.urandom(size)
        await disk.write(77, payload)
        assert await disk.read(77, size // 512) == payload


async def test_many_commands_in_flight(tgtd_factory: TgtdFactory) -> None:
    tgt = tgtd_factory(lun_sizes=[16 * MiB])
    async with BlockDevice.open(tgt.url(), quick_config()) as disk:
        blocks = {lba: os.urandom(4096) for lba in range(0, 128 * 8, 8)}
        peak = 0

        async def write(lba: int) -> None:
            nonlocal peak
            await disk.write(lba, blocks[lba])
            peak = max(peak, disk.session.outstanding)

        async with trio.open_nursery() as nursery:
            for lba in blocks:
                nursery.start_soon(write, lba)
        results: dict[int, bytes] = {}

        async def read(lba: int) -> None:
            results[lba] = bytes(await disk.read(lba, 8))

        async with trio.open_nursery() as nursery:
            for lba in blocks:
                nursery.start_soon(read, lba)
        assert results == blocks
        assert peak > 8, "commands were not pipelined"


async def test_header_and_data_digests(tgtd_factory: TgtdFactory) -> None:
    tgt = tgtd_factory()
    for key in ("HeaderDigest", "DataDigest"):  # tgtd offers None unless told otherwise
        tgt.tgtadm(
            "--op", "update", "--mode", "target", "--tid", str(tgt.tid),
            "--name", key, "--value", "CRC32C",
        )  # fmt: skip
    config = quick_config(header_digest=True, data_digest=True)
    async with BlockDevice.open(tgt.url(), config) as disk:
        assert disk.session.params.header_digest and disk.session.params.data_digest
        payload = os.urandom(300 * 1024)
        await disk.write(0, payload)
        assert await disk.read(0, len(payload) // 512) == payload


async def test_one_way_chap(tgtd_factory: TgtdFactory) -> None:
    tgt = tgtd_factory(chap=USER)
    async with BlockDevice.open(tgt.url(), quick_config()) as disk:
        await disk.write(0, b"c" * 512)
        assert await disk.read(0, 1) == b"c" * 512


async def test_mutual_chap(tgtd_factory: TgtdFactory) -> None:
    tgt = tgtd_factory(chap=USER, mutual_chap=TARGET_ACCOUNT)
    url = f"{tgt.url()}?target_user={TARGET_ACCOUNT.user}&target_password={TARGET_ACCOUNT.password}"
    async with BlockDevice.open(url, quick_config()) as disk:
        await disk.test_unit_ready()


async def test_mutual_chap_with_the_wrong_target_secret_fails(
    tgtd_factory: TgtdFactory,
) -> None:
    tgt = tgtd_factory(chap=USER, mutual_chap=TARGET_ACCOUNT)
    url = f"{tgt.url()}?target_user={TARGET_ACCOUNT.user}&target_password=not-the-secret1"
    with pytest.raises(AuthenticationError):
        async with BlockDevice.open(url, quick_config()):
            pass


async def test_wrong_chap_secret_is_an_authentication_error(tgtd_factory: TgtdFactory) -> None:
    tgt = tgtd_factory(chap=USER)
    url = tgt.url(with_credentials=False).replace(
        "iscsi://", f"iscsi://{USER.user}%wrong-pass-123@"
    )
    with pytest.raises(AuthenticationError):
        async with BlockDevice.open(url, quick_config()):
            pass


async def test_missing_chap_is_refused(tgtd_factory: TgtdFactory) -> None:
    tgt = tgtd_factory(chap=USER)
    with pytest.raises(LoginError):
        async with BlockDevice.open(tgt.url(with_credentials=False), quick_config()):
            pass


async def test_unknown_target_is_a_login_error(tgtd_factory: TgtdFactory) -> None:
    tgt = tgtd_factory()
    url = parse_url(tgt.url()).target + "-nope"
    with pytest.raises(LoginError) as caught:
        async with BlockDevice.open(f"iscsi://{tgt.portal}/{url}/1", quick_config()):
            pass
    assert caught.value.status == 0x0203


@pytest.mark.parametrize("reason", ["Temporary", "Permanent"])
async def test_tgtd_redirect_is_followed(tgtd_factory: TgtdFactory, reason: str) -> None:
    """Login at `front` is redirected (0x0101 / 0x0102) to `back`, which serves the data."""
    iqn = "iqn.2026-11.test.tgtd:moved"
    back = tgtd_factory(iqn=iqn)
    front = tgtd_factory(iqn=iqn, redirect=RedirectTo(port=back.port, reason=reason))  # type: ignore[arg-type]
    async with BlockDevice.open(front.url(), quick_config()) as disk:
        assert disk.session.portal is not None and disk.session.portal.port == back.port
        assert disk.session.original_portal.port == front.port
        await disk.write(5, b"r" * 512)
    async with BlockDevice.open(back.url(), quick_config()) as direct:
        assert await direct.read(5, 1) == b"r" * 512


async def test_redirect_loop_is_an_error(tgtd_factory: TgtdFactory) -> None:
    tgt = tgtd_factory()
    tgt.set_redirect(RedirectTo(port=tgt.port))  # to itself, spelled as [::ffff:127.0.0.1]
    with trio.fail_after(10), pytest.raises(RedirectError):
        async with BlockDevice.open(tgt.url(), quick_config()):
            pass


async def test_task_management_and_unsupported_commands(tgtd_factory: TgtdFactory) -> None:
    tgt = tgtd_factory(lun_sizes=[4 * MiB])
    async with BlockDevice.open(tgt.url(), quick_config()) as disk:
        response = await disk.abort_task(0x4242)  # no such task
        assert response in (TmfResponse.TASK_DOES_NOT_EXIST, TmfResponse.COMPLETE)
        await disk.lun_reset()
        await disk.write(0, b"z" * 512)  # the reset's UNIT ATTENTION is retried, unseen
        assert await disk.read(0, 1) == b"z" * 512
        with pytest.raises(CheckCondition) as caught:
            await disk.execute(bytes([0xC7]) + bytes(15))  # a vendor opcode tgtd lacks
        assert caught.value.sense_key == SenseKey.ILLEGAL_REQUEST
        assert caught.value.asc == 0x20  # INVALID COMMAND OPERATION CODE
        assert disk.stats.unit_attentions >= 1
