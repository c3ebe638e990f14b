"""Bugs the fuzz targets found, pinned against the real stargate server on loopback."""

from __future__ import annotations

import struct

import trio

from iscsicore.pdu import ScsiResponse
from iscsicore.scsi.opcodes import ScsiStatus
from tests.stargate.client import (
    TEST_UNIT_READY,
    clear_unit_attention,
    logged_in,
    start_stargate,
)

RESIDUAL_MAX = 0xFFFFFFFF


def write16(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBQIBB", 0x8A, 0, lba, blocks, 0, 0)


async def test_write_residual_beyond_32_bits_is_saturated(nursery: trio.Nursery) -> None:
    """A WRITE(16) for 0xffffffff blocks with a 512-byte EDTL: the CDB implies ~2 TiB, so
    the overflow residual does not fit the 32-bit Residual Count. The target wrote what
    the EDTL covers and must say so (residual overflow, count saturated) instead of
    failing to encode the response: that failure killed the connection, and when the
    command had been waiting for a queue slot, whichever connection freed the slot."""
    server = await start_stargate(nursery)
    initiator = await logged_in(server)
    await clear_unit_attention(initiator)
    command = initiator.command(
        write16(0, 0xFFFFFFFF), write_data=bytes(512), immediate_data=bytes(512), edtl=512
    )
    await initiator.send(command)
    response = await initiator.receive()
    assert isinstance(response, ScsiResponse) and response.itt == command.itt
    assert response.status == ScsiStatus.GOOD
    assert response.overflow and not response.underflow
    assert response.residual_count == RESIDUAL_MAX
    # The connection goes on.
    assert (await initiator.scsi(TEST_UNIT_READY)).status == ScsiStatus.GOOD
