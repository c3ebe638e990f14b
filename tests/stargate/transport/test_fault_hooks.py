"""`stargate.transport.fault_hooks` and `faulted_pdus`: a digest fault corrupts the digest
of the first response built for the PDU it fired on, where that response is serialized,
whatever path the command takes (the plain 4 KiB read path included)."""

from __future__ import annotations

import pytest
import trio

from faults import Fault, FaultKind
from iscsicore.errors import DataDigestError
from iscsicore.pdu import DataIn
from iscsicore.scsi.opcodes import ScsiStatus
from tests.stargate.client import (
    TestInitiator,
    clear_unit_attention,
    logged_in,
    proposals,
    read10,
    start_stargate,
    write10,
)

BLOCK = 512


async def _digest_session(nursery: trio.Nursery) -> tuple[TestInitiator, bytes]:
    server = await start_stargate(nursery)
    initiator = await logged_in(
        server,
        proposals=proposals(data_digest=("CRC32C",), max_recv_data_segment_length=4096),
    )
    assert initiator.data_digest
    await clear_unit_attention(initiator)
    payload = bytes(range(256)) * 48  # 24 blocks
    assert (await initiator.scsi(write10(0, 24), write_data=payload)).status == ScsiStatus.GOOD
    server.faults.add(Fault(FaultKind.CORRUPT_DATA_DIGEST, pdu_opcodes=(0x01,), count=1))
    return initiator, payload


@pytest.mark.parametrize("blocks", [8, 24], ids=["4 KiB, plain path", "12 KiB, 3 Data-Ins"])
async def test_a_data_digest_fault_corrupts_only_the_first_response(
    blocks: int, nursery: trio.Nursery
) -> None:
    initiator, payload = await _digest_session(nursery)
    length = blocks * BLOCK
    await initiator.send(initiator.command(read10(0, blocks), read_length=length))
    with pytest.raises(DataDigestError):
        await initiator.receive()
    rest = [await initiator.receive() for _ in range(length // 4096 - 1)]
    assert all(isinstance(pdu, DataIn) for pdu in rest)
    assert b"".join(bytes(pdu.data) for pdu in rest) == payload[4096:length]
    # The fault fired once: the same read again comes through whole.
    again = await initiator.scsi(read10(0, blocks), read_length=length)
    assert bytes(again.data) == payload[:length]
