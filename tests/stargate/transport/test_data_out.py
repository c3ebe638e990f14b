"""`stargate.transport.data_out`: Data-Out that breaks its sequence (RFC 7143 10.7) is
Rejected and fails its command (ErrorRecoveryLevel 0), against the real server."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
import trio

from iscsicore.pdu import R2T, RESERVED_TAG, DataOut, Reject, RejectReason, ScsiResponse
from iscsicore.scsi.opcodes import ScsiStatus
from iscsicore.scsi.sense import parse_sense
from tests.stargate.client import (
    TEST_UNIT_READY,
    clear_unit_attention,
    logged_in,
    proposals,
    read10,
    start_stargate,
    write10,
)

BLOCK = 512
BLOCKS = 4
LBA = 40
PAYLOAD = bytes([0x5A]) * (BLOCKS * BLOCK)
HALF = len(PAYLOAD) // 2

# Each case: the one Data-Out sent for the R2T of a 2 KiB write, given its ITT and the
# R2T's TTT.
BROKEN: dict[str, Callable[[int, int], DataOut]] = {
    "DataSN not 0": lambda itt, ttt: DataOut(final=True, itt=itt, ttt=ttt, data_sn=1, data=PAYLOAD),
    "offset past the start": lambda itt, ttt: DataOut(
        final=True, itt=itt, ttt=ttt, buffer_offset=BLOCK, data=PAYLOAD[BLOCK:]
    ),
    "more than the R2T asked for": lambda itt, ttt: DataOut(
        final=True, itt=itt, ttt=ttt, data=PAYLOAD + bytes(BLOCK)
    ),
    "F bit before the end": lambda itt, ttt: DataOut(
        final=True, itt=itt, ttt=ttt, data=PAYLOAD[:HALF]
    ),
    "a TTT never given": lambda itt, ttt: DataOut(final=True, itt=itt, ttt=ttt + 100, data=PAYLOAD),
    "unsolicited with InitialR2T=Yes": lambda itt, ttt: DataOut(
        final=True, itt=itt, ttt=RESERVED_TAG, data=PAYLOAD
    ),
}


@pytest.mark.parametrize("case", BROKEN)
async def test_a_broken_data_out_sequence_fails_its_command(
    case: str, nursery: trio.Nursery
) -> None:
    server = await start_stargate(nursery)
    initiator = await logged_in(server, proposals=proposals(initial_r2t=True, immediate_data=False))
    await clear_unit_attention(initiator)
    command = initiator.command(write10(LBA, BLOCKS), write_data=PAYLOAD)
    await initiator.send(command)
    r2t = await initiator.receive()
    assert isinstance(r2t, R2T) and r2t.desired_data_transfer_length == len(PAYLOAD)
    await initiator.send(BROKEN[case](command.itt, r2t.ttt))
    reject = await initiator.receive()
    assert isinstance(reject, Reject) and reject.reason == RejectReason.PROTOCOL_ERROR
    assert reject.data[16:20] == struct.pack(">I", command.itt)  # the Data-Out's header
    response = await initiator.receive()
    assert isinstance(response, ScsiResponse) and response.itt == command.itt
    assert response.status == ScsiStatus.CHECK_CONDITION
    (length,) = struct.unpack_from(">H", response.data)
    sense = parse_sense(bytes(response.data[2 : 2 + length]))
    assert (int(sense.key), sense.asc, sense.ascq) == (0x0B, 0x4B, 0x00)  # DATA PHASE ERROR
    # Nothing was written, and the session goes on.
    read = await initiator.scsi(read10(LBA, BLOCKS), read_length=len(PAYLOAD))
    assert read.status == ScsiStatus.GOOD and bytes(read.data) == bytes(len(PAYLOAD))
    assert (await initiator.scsi(TEST_UNIT_READY)).status == ScsiStatus.GOOD


async def test_a_sequence_in_several_pdus_in_order_is_accepted(nursery: trio.Nursery) -> None:
    """The same write, in four Data-Outs with DataSN 0..3 and the F bit on the last."""
    server = await start_stargate(nursery)
    initiator = await logged_in(server, proposals=proposals(initial_r2t=True, immediate_data=False))
    await clear_unit_attention(initiator)
    command = initiator.command(write10(LBA, BLOCKS), write_data=PAYLOAD)
    await initiator.send(command)
    r2t = await initiator.receive()
    assert isinstance(r2t, R2T)
    initiator.target_mrdsl = BLOCK
    await initiator.send_data_out(command.itt, r2t.ttt, PAYLOAD, 0, len(PAYLOAD))
    response = await initiator.receive()
    assert isinstance(response, ScsiResponse) and response.status == ScsiStatus.GOOD
    read = await initiator.scsi(read10(LBA, BLOCKS), read_length=len(PAYLOAD))
    assert bytes(read.data) == PAYLOAD
