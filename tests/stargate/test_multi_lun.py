"""A target with several LUNs, through the project's own initiator (raw PDUs): REPORT
LUNS, the SPC answers for an absent LUN, unit attentions, reservations and task management
per LUN, the plain READ/WRITE path and the queue's accounting honouring the LUN field."""

from __future__ import annotations

import struct

import trio

from iscsicore.pdu import (
    R2T,
    ScsiResponse,
    TaskMgmtRequest,
    TaskMgmtResponse,
    TmfFunction,
    TmfResponse,
    encode_lun,
)
from iscsicore.scsi.opcodes import ScsiStatus
from iscsicore.scsi.sense import Asc, SenseKey, parse_sense
from stargate.scsi.lu import LogicalUnit
from stargate.scsi.reserve import vdisk_reservations
from stargate.server import StargateServer
from stargate.stores.memory import MemoryStore
from stargate.target import ExtraLun, VDiskTarget
from tests.stargate.client import (
    TEST_UNIT_READY,
    CommandResult,
    TestInitiator,
    logged_in,
    proposals,
    read10,
    start_stargate,
    write10,
)
from topology.vdisk import VDiskMeta

SIZE = 4 << 20
LUNS = ("vg-0", "vg-1", "vg-2")
INQUIRY = bytes([0x12, 0, 0, 0, 96, 0])
REQUEST_SENSE = bytes([0x03, 0, 0, 0, 252, 0])
REPORT_LUNS = bytes([0xA0, 0, 0, 0, 0, 0]) + struct.pack(">I", 4096) + bytes(2)
RESERVE_6 = bytes([0x16, 0, 0, 0, 0, 0])
ABSENT = encode_lun(9)
_R2T_FIRST = proposals(initial_r2t=True, immediate_data=False)  # writes wait for an R2T


def _unit(vdisk_id: str, target_luns: int) -> LogicalUnit:
    meta = VDiskMeta(vdisk_id, SIZE)
    reservations, unit_attentions = vdisk_reservations(None, vdisk_id)
    return LogicalUnit(
        MemoryStore(meta),
        meta,
        reservations=reservations,
        unit_attentions=unit_attentions,
        target_luns=target_luns,
    )


def multi_lun_target(vdisk_ids: tuple[str, ...] = LUNS) -> VDiskTarget:
    first, *others = vdisk_ids
    count = len(vdisk_ids)
    return VDiskTarget(
        first,
        _unit(first, count),
        extra_luns=tuple(ExtraLun(vdisk_id, _unit(vdisk_id, count)) for vdisk_id in others),
    )


async def _started(nursery: trio.Nursery) -> StargateServer:
    return await start_stargate(nursery, multi_lun_target())


def _sense(result: CommandResult) -> tuple[int, tuple[int, int]]:
    sense = parse_sense(result.sense)
    return sense.key, (sense.asc, sense.ascq)


async def _clear(initiator: TestInitiator, *numbers: int) -> None:
    """Consume each LUN's POWER ON unit attention for this nexus."""
    for number in numbers:
        first = await initiator.scsi(TEST_UNIT_READY, lun=encode_lun(number))
        assert first.status == ScsiStatus.CHECK_CONDITION, number
        assert _sense(first) == (SenseKey.UNIT_ATTENTION, Asc.POWER_ON_RESET.value)
        again = await initiator.scsi(TEST_UNIT_READY, lun=encode_lun(number))
        assert again.status == ScsiStatus.GOOD, number


def _reported(data: bytes) -> list[int]:
    (length,) = struct.unpack_from(">I", data)
    return [struct.unpack_from(">Q", data, 8 + 8 * i)[0] for i in range(length // 8)]


async def test_report_luns_lists_every_lun_through_any_lun(nursery: trio.Nursery) -> None:
    server = await _started(nursery)
    initiator = await logged_in(server, "vg-0")
    expected = [encode_lun(n) for n in range(3)]
    for lun in (encode_lun(0), encode_lun(2), ABSENT):
        result = await initiator.scsi(REPORT_LUNS, read_length=4096, lun=lun)
        assert result.status == ScsiStatus.GOOD
        assert _reported(bytes(result.data)) == expected


async def test_an_absent_lun_gets_the_spc_answers(nursery: trio.Nursery) -> None:
    server = await _started(nursery)
    initiator = await logged_in(server, "vg-0")
    inquiry = await initiator.scsi(INQUIRY, read_length=96, lun=ABSENT)
    assert inquiry.status == ScsiStatus.GOOD
    assert inquiry.data[0] == 0x7F  # peripheral qualifier 011b, device type 1Fh
    sense = await initiator.scsi(REQUEST_SENSE, read_length=252, lun=ABSENT)
    assert sense.status == ScsiStatus.GOOD
    parsed = parse_sense(bytes(sense.data))
    assert (parsed.key, (parsed.asc, parsed.ascq)) == (
        SenseKey.ILLEGAL_REQUEST,
        Asc.LOGICAL_UNIT_NOT_SUPPORTED.value,
    )
    for cdb, kwargs in (
        (TEST_UNIT_READY, {}),
        (read10(0, 1), {"read_length": 512}),
        (write10(0, 1), {"write_data": bytes(512)}),
    ):
        result = await initiator.scsi(cdb, lun=ABSENT, **kwargs)
        assert result.status == ScsiStatus.CHECK_CONDITION
        assert _sense(result) == (SenseKey.ILLEGAL_REQUEST, Asc.LOGICAL_UNIT_NOT_SUPPORTED.value)
    # Hierarchical addressing the target does not use is no LUN of it either.
    odd = await initiator.scsi(TEST_UNIT_READY, lun=encode_lun(1) | 1)
    assert _sense(odd) == (SenseKey.ILLEGAL_REQUEST, Asc.LOGICAL_UNIT_NOT_SUPPORTED.value)
    # The existing LUNs are untouched: each still has its power-on unit attention.
    await _clear(initiator, 0, 1, 2)


async def test_plain_reads_and_writes_reach_the_lun_named(nursery: trio.Nursery) -> None:
    server = await _started(nursery)
    initiator = await logged_in(server, "vg-0")
    await _clear(initiator, 0, 1, 2)
    patterns = {number: bytes([0xA0 + number]) * 4096 for number in range(3)}
    for number, data in patterns.items():
        written = await initiator.scsi(write10(8, 8), write_data=data, lun=encode_lun(number))
        assert written.status == ScsiStatus.GOOD
    for number, data in patterns.items():
        # LUN 1 also by flat space addressing (the same LUN, as SAM-5 allows either).
        fields = [encode_lun(number)] + ([(0x4000 | number) << 48] if number == 1 else [])
        for field in fields:
            read = await initiator.scsi(read10(8, 8), read_length=4096, lun=field)
            assert (read.status, bytes(read.data)) == (ScsiStatus.GOOD, data)
    stats = server.stats()
    assert {vdisk: stats[vdisk]["target"] for vdisk in LUNS} == dict.fromkeys(
        LUNS, "iqn.2010-06.com.nutanix:vmdisk-vg-0"
    )
    assert [stats[vdisk]["lun"] for vdisk in LUNS] == [0, 1, 2]
    assert [stats[vdisk]["bytes_written"] for vdisk in LUNS] == [4096] * 3
    assert [stats[vdisk]["bytes_read"] for vdisk in LUNS] == [4096, 8192, 4096]


async def test_queue_charges_each_lun_to_its_own_vdisk_share(nursery: trio.Nursery) -> None:
    server = await _started(nursery)
    initiator = await logged_in(server, "vg-0", proposals=_R2T_FIRST)
    await _clear(initiator, 2)
    (connection,) = server.all_connections()
    assert connection.routes is not None
    routes = connection.routes.routes
    assert len({id(route.tenant.session) for route in routes}) == 1  # one session share
    assert len({id(route.tenant.vdisk) for route in routes}) == 3  # a share per LUN's vDisk
    assert [route.queue_key for route in routes] == [
        "iqn.2010-06.com.nutanix:vmdisk-vg-0",
        "iqn.2010-06.com.nutanix:vmdisk-vg-0;lun=1",
        "iqn.2010-06.com.nutanix:vmdisk-vg-0;lun=2",
    ]
    # A write to LUN 2 waiting for its Data-Out holds a slot charged to LUN 2 alone.
    command = initiator.command(write10(0, 8), write_data=bytes(4096), lun=encode_lun(2))
    await initiator.send(command)
    r2t = await initiator.receive()
    assert isinstance(r2t, R2T)
    assert [route.tenant.vdisk.slots for route in routes] == [0, 0, 1]
    assert routes[0].tenant.session.slots == 1
    await initiator.send_data_out(command.itt, r2t.ttt, bytes(4096), 0, 4096)
    assert (await initiator.collect(command.itt)).status == ScsiStatus.GOOD
    assert [route.tenant.vdisk.slots for route in routes] == [0, 0, 0]


async def test_a_lun_vdisk_names_its_target_sessions_to_the_control_api(
    nursery: trio.Nursery,
) -> None:
    server = await _started(nursery)
    initiator = await logged_in(server, "vg-0")
    await _clear(initiator, 0)
    assert server.request_logout("vg-2", seconds=5) == 1  # LUN 2's vDisk: the target's session
    assert server.drop_connections("vg-1") == 1
    assert await initiator.closed_by_target()
    assert server.drop_connections("not-served") == 0


async def test_capacity_change_is_news_on_its_lun_only(nursery: trio.Nursery) -> None:
    target = multi_lun_target()
    server = await start_stargate(nursery, target)
    initiator = await logged_in(server, "vg-0")
    await _clear(initiator, 0, 1, 2)
    lun1 = target.luns[1].lu
    assert isinstance(lun1, LogicalUnit)
    lun1.resize(SIZE * 2)
    changed = await initiator.scsi(TEST_UNIT_READY, lun=encode_lun(1))
    assert _sense(changed) == (SenseKey.UNIT_ATTENTION, Asc.CAPACITY_DATA_HAS_CHANGED.value)
    for number in (0, 2):
        result = await initiator.scsi(TEST_UNIT_READY, lun=encode_lun(number))
        assert result.status == ScsiStatus.GOOD


async def _tmf(initiator: TestInitiator, function: TmfFunction, lun: int) -> TmfResponse:
    await initiator.send(
        TaskMgmtRequest(function=function, itt=0x7000 + lun % 97, cmd_sn=initiator.cmd_sn, lun=lun)
    )
    for _ in range(10):
        response = await initiator.receive()
        if isinstance(response, TaskMgmtResponse):
            return TmfResponse(response.response)
    raise AssertionError("no task management response")


async def test_lun_reset_on_lun_1_leaves_the_reservation_on_lun_0(nursery: trio.Nursery) -> None:
    server = await _started(nursery)
    holder = await logged_in(server, "vg-0")
    other = await logged_in(server, "vg-0")
    await _clear(holder, 0, 1)
    await _clear(other, 0, 1)
    assert (await holder.scsi(RESERVE_6)).status == ScsiStatus.GOOD  # LUN 0
    assert (await other.scsi(read10(0, 1), read_length=512)).status == (
        ScsiStatus.RESERVATION_CONFLICT
    )
    assert (await other.scsi(read10(0, 1), read_length=512, lun=encode_lun(1))).status == (
        ScsiStatus.GOOD
    )

    assert await _tmf(other, TmfFunction.LOGICAL_UNIT_RESET, encode_lun(1)) == (
        TmfResponse.COMPLETE
    )
    # LUN 1 was reset: both nexuses hear of it there, and nowhere else.
    for initiator in (holder, other):
        reset = await initiator.scsi(TEST_UNIT_READY, lun=encode_lun(1))
        assert _sense(reset) == (SenseKey.UNIT_ATTENTION, Asc.BUS_DEVICE_RESET.value)
    assert (await holder.scsi(TEST_UNIT_READY)).status == ScsiStatus.GOOD
    # LUN 0's reservation stands.
    assert (await other.scsi(read10(0, 1), read_length=512)).status == (
        ScsiStatus.RESERVATION_CONFLICT
    )
    assert (await holder.scsi(read10(0, 1), read_length=512)).status == ScsiStatus.GOOD

    # A LOGICAL UNIT RESET of LUN 0 releases it; an absent LUN cannot be reset.
    assert await _tmf(other, TmfFunction.LOGICAL_UNIT_RESET, encode_lun(0)) == (
        TmfResponse.COMPLETE
    )
    await other.scsi(TEST_UNIT_READY)  # its BUS DEVICE RESET unit attention
    assert (await other.scsi(read10(0, 1), read_length=512)).status == ScsiStatus.GOOD
    assert await _tmf(other, TmfFunction.LOGICAL_UNIT_RESET, ABSENT) == (
        TmfResponse.LUN_DOES_NOT_EXIST
    )


async def test_a_target_warm_reset_resets_every_lun(nursery: trio.Nursery) -> None:
    server = await _started(nursery)
    holder = await logged_in(server, "vg-0")
    other = await logged_in(server, "vg-0")
    await _clear(holder, 0, 1, 2)
    await _clear(other, 0, 1, 2)
    lun2 = encode_lun(2)
    assert (await holder.scsi(RESERVE_6, lun=lun2)).status == ScsiStatus.GOOD
    assert await _tmf(other, TmfFunction.TARGET_WARM_RESET, 0) == TmfResponse.COMPLETE
    for initiator in (holder, other):
        for number in range(3):
            result = await initiator.scsi(TEST_UNIT_READY, lun=encode_lun(number))
            key, (asc, _) = _sense(result)
            assert (key, asc) == (SenseKey.UNIT_ATTENTION, 0x29), number  # a reset occurred
    # The SPC-2 reservation on LUN 2 went with the reset.
    for _ in range(3):  # past any further reset condition queued on LUN 2
        result = await other.scsi(read10(0, 1), read_length=512, lun=lun2)
        if result.status != ScsiStatus.CHECK_CONDITION:
            break
    assert result.status == ScsiStatus.GOOD


def _prout(service_action: int, key: int, service_action_key: int) -> tuple[bytes, bytes]:
    """PERSISTENT RESERVE OUT (type Write Exclusive) and its 24-byte parameter list."""
    cdb = struct.pack(">BBB2xIB", 0x5F, service_action, 0x01, 24, 0)
    return cdb, struct.pack(">QQ8x", key, service_action_key)


async def test_a_persistent_reservation_holds_on_its_lun_only(nursery: trio.Nursery) -> None:
    server = await _started(nursery)
    holder = await logged_in(server, "vg-0")
    other = await logged_in(server, "vg-0")
    await _clear(holder, 0, 1)
    await _clear(other, 0, 1)
    lun1 = encode_lun(1)
    for service_action, key, new_key in ((0x00, 0, 0xABC), (0x01, 0xABC, 0)):  # REGISTER, RESERVE
        cdb, parameters = _prout(service_action, key, new_key)
        result = await holder.scsi(cdb, write_data=parameters, lun=lun1)
        assert result.status == ScsiStatus.GOOD, service_action
    write = write10(0, 1)
    assert (await other.scsi(write, write_data=bytes(512), lun=lun1)).status == (
        ScsiStatus.RESERVATION_CONFLICT
    )
    assert (await other.scsi(write, write_data=bytes(512))).status == ScsiStatus.GOOD
    assert (await other.scsi(write, write_data=bytes(512), lun=encode_lun(2))).status == (
        ScsiStatus.CHECK_CONDITION  # LUN 2's own power-on unit attention, no conflict
    )
    assert (await holder.scsi(write, write_data=bytes(512), lun=lun1)).status == ScsiStatus.GOOD
    # LOGICAL UNIT RESET keeps persistent reservations (SPC-4), on LUN 1 as anywhere.
    assert await _tmf(other, TmfFunction.LOGICAL_UNIT_RESET, lun1) == TmfResponse.COMPLETE
    await other.scsi(TEST_UNIT_READY, lun=lun1)  # its BUS DEVICE RESET unit attention
    assert (await other.scsi(write, write_data=bytes(512), lun=lun1)).status == (
        ScsiStatus.RESERVATION_CONFLICT
    )


async def test_abort_task_set_ends_the_tasks_of_its_lun_only(nursery: trio.Nursery) -> None:
    server = await _started(nursery)
    initiator = await logged_in(server, "vg-0", proposals=_R2T_FIRST)
    await _clear(initiator, 0, 1)
    waiting: dict[int, tuple[int, int]] = {}  # LUN -> (ITT, TTT): writes waiting for data
    for number in (0, 1):
        command = initiator.command(write10(0, 8), write_data=bytes(4096), lun=encode_lun(number))
        await initiator.send(command)
        r2t = await initiator.receive()
        assert isinstance(r2t, R2T) and r2t.itt == command.itt
        waiting[number] = (command.itt, r2t.ttt)

    assert await _tmf(initiator, TmfFunction.ABORT_TASK_SET, encode_lun(1)) == (
        TmfResponse.COMPLETE
    )
    # LUN 0's write goes on and completes; LUN 1's is gone: its data gets no status.
    itt, ttt = waiting[1]
    await initiator.send_data_out(itt, ttt, bytes([1]) * 4096, 0, 4096)
    itt, ttt = waiting[0]
    await initiator.send_data_out(itt, ttt, bytes([2]) * 4096, 0, 4096)
    status = await initiator.receive()
    assert isinstance(status, ScsiResponse)
    assert (status.itt, status.status) == (waiting[0][0], ScsiStatus.GOOD)
    assert await initiator.receive_or_none(0.3) is None
    assert server.queue.in_flight == 0
    lun1 = await initiator.scsi(read10(0, 8), read_length=4096, lun=encode_lun(1))
    assert bytes(lun1.data) == bytes(4096)  # the aborted write never ran
