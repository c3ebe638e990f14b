"""The initiator against stargate (in process): every BlockDevice call, the VM helper,
and the recovery paths stargate drives: AsyncEvent 1 (logout request) and AsyncEvent 3
(drop with Time2Wait) in the middle of the verify workload."""

from __future__ import annotations

import os

import pytest
import trio

from initiator.device import BlockDevice
from initiator.errors import AuthenticationError, CheckCondition, LoginError
from initiator.login_flow import LoginOptions
from initiator.probe import probe
from initiator.session import SessionConfig
from initiator.verify import Verifier
from initiator.vm import VM
from initiator.vm_workload import run_vm_workload
from iscsicore.pdu import TmfResponse
from iscsicore.portal import Portal
from iscsicore.scsi.sense import SenseKey
from stargate.server import StargateServer
from stargate.target import ChapCredentials as StargateChap
from tests.stargate.client import memory_target, start_stargate
from topology.naming import target_name_for

MiB = 1 << 20


def url_of(server: StargateServer, vdisk: str) -> str:
    return f"iscsi://127.0.0.1:{server.port}/{target_name_for(vdisk)}/0"


async def test_every_block_device_call(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery, memory_target("vd1", 16 * MiB))
    async with BlockDevice.open(url_of(server, "vd1")) as disk:
        assert (disk.block_size, disk.blocks) == (512, 16 * MiB // 512)
        await disk.test_unit_ready()
        assert (await disk.inquiry()).peripheral_type == 0
        payload = os.urandom(64 * 1024)
        await disk.write(10, payload, fua=True)
        assert await disk.read(10, 128) == payload
        await disk.flush()
        await disk.write_same(1000, 16, b"\xab" * 512)
        assert await disk.read(1000, 16) == b"\xab" * 512 * 16
        await disk.compare_and_write(1000, b"\xab" * 512, b"\xcd" * 512)
        assert await disk.read(1000, 1) == b"\xcd" * 512
        with pytest.raises(CheckCondition) as caught:
            await disk.compare_and_write(1000, b"\xab" * 512, b"\xef" * 512)
        assert caught.value.sense_key == SenseKey.MISCOMPARE
        await disk.unmap([(10, 128)])
        assert await disk.read(10, 128) == bytes(64 * 1024)
        assert await disk.abort_task(0x7777) in (
            TmfResponse.TASK_DOES_NOT_EXIST,
            TmfResponse.COMPLETE,
        )
        await disk.lun_reset()
        await disk.read(0, 1)  # the reset's unit attention is retried transparently
        with pytest.raises(CheckCondition) as out_of_range:
            await disk.read(disk.blocks, 1)
        assert out_of_range.value.sense_key == SenseKey.ILLEGAL_REQUEST


async def test_large_io_and_many_in_flight(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery, memory_target("vd1", 32 * MiB))
    async with BlockDevice.open(url_of(server, "vd1")) as disk:
        big = os.urandom(4 * MiB + 512)
        await disk.write(3, big)
        assert await disk.read(3, len(big) // 512) == big
        report = await Verifier(disk, region_blocks=8192, seed=2).run(2.0, queue_depth=32)
        assert report.ok and report.writes > 50, report.as_dict()


@pytest.mark.parametrize("event", ["logout-request", "drop"])
async def test_verify_rides_out_async_events(nursery: trio.Nursery, event: str) -> None:
    server = await start_stargate(nursery, memory_target("vd1", 16 * MiB))
    config = SessionConfig(replacement_timeout=20)
    async with BlockDevice.open(url_of(server, "vd1"), config) as disk:

        async def disturb() -> None:
            await trio.sleep(0.7)
            if event == "logout-request":
                assert server.request_logout("vd1", seconds=2) == 1
            else:
                assert server.drop_connections("vd1", time2wait=0) == 1

        nursery.start_soon(disturb)
        report = await Verifier(disk, region_blocks=4096, seed=3).run(2.5, queue_depth=16)
    assert report.mismatch_count == 0, report.mismatches
    assert report.errors == 0, report.last_error
    assert report.reconnects == 1


async def test_vm_attaches_many_vdisks_each_on_its_own_session(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery, *(memory_target(f"vd{i}", 4 * MiB) for i in range(4)))
    async with VM(f"127.0.0.1:{server.port}", name="vm1") as vm:
        disks = [await vm.attach(f"vd{i}") for i in range(4)]
        assert len({id(d.session) for d in disks}) == 4
        for i, disk in enumerate(disks):
            await disk.write(0, bytes([i]) * 512)
        for i, disk in enumerate(disks):
            assert await disk.read(0, 1) == bytes([i]) * 512
        report = vm.report()
        assert set(report) == {f"vd{i}" for i in range(4)}
        assert report["vd2"]["writes"] == 1 and report["vd2"]["reads"] == 1
        assert report["vd2"]["portal"] == f"127.0.0.1:{server.port}"
        await vm.detach("vd3")
        assert set(vm.report()) == {"vd0", "vd1", "vd2"}


async def test_health_probe(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery, memory_target("vd1", 4 * MiB))
    healthy = await probe(f"127.0.0.1:{server.port}", target_name_for("vd1"))
    assert healthy.ok and healthy.seconds < 2, healthy
    missing = await probe(f"127.0.0.1:{server.port}", target_name_for("nope"))
    assert not missing.ok and "0x0203" in missing.error
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    closed_port = listener.getsockname()[1]
    listener.close()
    down = await probe(f"127.0.0.1:{closed_port}", target_name_for("vd1"), timeout=1)
    assert not down.ok and down.seconds < 1.5 and "ConnectError" in down.error


async def test_vm_workload_verifies_every_vdisk_through_a_logout_request(
    nursery: trio.Nursery,
) -> None:
    server = await start_stargate(nursery, *(memory_target(f"vd{i}", 8 * MiB) for i in range(3)))

    async def disturb() -> None:
        await trio.sleep(0.8)
        server.request_logout("vd1", seconds=1)

    nursery.start_soon(disturb)
    runs = await run_vm_workload(
        Portal.parse(f"127.0.0.1:{server.port}"),
        ["vd0", "vd1", "vd2"],
        seconds=2.0,
        queue_depth=4,
        region_bytes=2 * MiB,
    )
    by_name = {run.vdisk: run.snapshot() for run in runs}
    assert all(snap["verify_ok"] for snap in by_name.values()), by_name
    assert by_name["vd1"]["reconnects"] == 1
    assert by_name["vd0"]["reconnects"] == 0


async def test_vm_attach_of_an_unknown_vdisk_raises_login_error(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery, memory_target("vd0", 4 * MiB))
    async with VM(f"127.0.0.1:{server.port}") as vm:
        await vm.attach("vd0")
        with pytest.raises(LoginError) as caught:
            await vm.attach("does-not-exist")
        assert caught.value.status == 0x0203
        assert set(vm.report()) == {"vd0"}


async def test_digests_and_chap_against_stargate(nursery: trio.Nursery) -> None:
    server = await start_stargate(
        nursery,
        memory_target(
            "sec",
            8 * MiB,
            chap=StargateChap("vm-user", "vm-secret-1234"),
            mutual_chap=StargateChap("cvm-user", "cvm-secret-123"),
        ),
    )
    url = (
        f"iscsi://vm-user%vm-secret-1234@127.0.0.1:{server.port}/{target_name_for('sec')}/0"
        "?target_user=cvm-user&target_password=cvm-secret-123"
    )
    config = SessionConfig(login=LoginOptions(header_digest=True, data_digest=True))
    async with BlockDevice.open(url, config) as disk:
        assert disk.session.params.header_digest and disk.session.params.data_digest
        report = await Verifier(disk, region_blocks=2048, seed=5).run(1.0, queue_depth=8)
        assert report.ok and report.writes > 10
    wrong = url.replace("vm-secret-1234", "not-the-secret")
    with pytest.raises(AuthenticationError):
        async with BlockDevice.open(wrong):
            pass
