"""`stargate.transport.outbox`: the sequence numbers stamped on every response, against the
real server on loopback (RFC 7143 sections 3.2.2.2, 11.7.4, 11.8)."""

from __future__ import annotations

import trio

from iscsicore.pdu import (
    R2T,
    DataIn,
    NopIn,
    NopOut,
    Reject,
    ScsiResponse,
    SnackRequest,
)
from iscsicore.seqnum import SERIAL_MASK, sn_lt
from tests.stargate.client import (
    TEST_UNIT_READY,
    TestInitiator,
    clear_unit_attention,
    logged_in,
    proposals,
    read10,
    start_stargate,
    write10,
)

BLOCK = 512
Response = DataIn | R2T | NopIn | Reject | ScsiResponse


def _carries_status(pdu: Response) -> bool:
    """Responses that use up a StatSN (a Data-In only with its S bit)."""
    if isinstance(pdu, DataIn):
        return pdu.status_present
    return isinstance(pdu, ScsiResponse | NopIn | Reject) and not (
        isinstance(pdu, NopIn) and pdu.itt == 0xFFFFFFFF
    )


async def _receive_all(initiator: TestInitiator, count: int) -> list[Response]:
    responses: list[Response] = []
    for _ in range(count):
        pdu = await initiator.receive()
        assert isinstance(pdu, Response), pdu
        responses.append(pdu)
    return responses


async def test_stat_sn_counts_each_status_once_and_r2t_announces_the_next(
    nursery: trio.Nursery,
) -> None:
    server = await start_stargate(nursery)
    initiator = await logged_in(
        server,
        proposals=proposals(
            initial_r2t=True, immediate_data=False, max_recv_data_segment_length=4096
        ),
    )
    await clear_unit_attention(initiator)
    first_stat_sn = initiator.exp_stat_sn
    # A read split over several Data-Ins, a write that needs an R2T, an echoed NOP-Out,
    # a rejected SNACK and a TEST UNIT READY: pipelined, answered in one go.
    read = initiator.command(read10(0, 24), read_length=24 * BLOCK)
    write = initiator.command(write10(0, 1), write_data=bytes(BLOCK))
    nop = NopOut(itt=0x77, cmd_sn=initiator.cmd_sn, data=b"echo")
    initiator.cmd_sn += 1
    tur = initiator.command(TEST_UNIT_READY)
    for request in (read, write, nop, SnackRequest(itt=0x78), tur):
        await initiator.send(request)
    seen = await _receive_all(initiator, 3 + 1 + 1 + 1 + 1)  # Data-In x3, R2T, NOP, Reject, TUR
    r2t = next(pdu for pdu in seen if isinstance(pdu, R2T))
    statuses = [pdu for pdu in seen if _carries_status(pdu)]
    assert len(statuses) == 4
    stat_sns = [pdu.stat_sn for pdu in statuses]
    assert stat_sns == [(first_stat_sn + n) & SERIAL_MASK for n in range(4)]
    assert all(
        pdu.stat_sn == 0 for pdu in seen if isinstance(pdu, DataIn) and not pdu.status_present
    )
    position = seen.index(r2t)
    sent_before = sum(1 for pdu in seen[:position] if _carries_status(pdu))
    assert r2t.stat_sn == (first_stat_sn + sent_before) & SERIAL_MASK  # not used up
    # Every response says how far the CmdSNs went and how far they may go.
    for pdu in seen:
        assert not sn_lt(initiator.cmd_sn, pdu.exp_cmd_sn)
        assert not sn_lt(pdu.max_cmd_sn, (pdu.exp_cmd_sn - 1) & SERIAL_MASK)
    # The write's status comes once its data is in, with the next StatSN.
    await initiator.send_data_out(write.itt, r2t.ttt, bytes(BLOCK), 0, BLOCK)
    status = await initiator.receive()
    assert isinstance(status, ScsiResponse) and status.itt == write.itt
    assert status.stat_sn == (first_stat_sn + 4) & SERIAL_MASK
    assert status.exp_cmd_sn == initiator.cmd_sn


async def test_exp_cmd_sn_follows_each_command_as_it_is_handled(nursery: trio.Nursery) -> None:
    server = await start_stargate(nursery)
    initiator = await logged_in(server)
    await clear_unit_attention(initiator)
    commands = [initiator.command(TEST_UNIT_READY) for _ in range(5)]
    for command in commands:
        await initiator.send(command)
    received = [await initiator.receive() for _ in commands]
    responses = [pdu for pdu in received if isinstance(pdu, ScsiResponse)]
    assert len(responses) == len(received)
    assert [pdu.itt for pdu in responses] == [c.itt for c in commands]
    assert [pdu.exp_cmd_sn for pdu in responses] == [(c.cmd_sn + 1) & SERIAL_MASK for c in commands]
