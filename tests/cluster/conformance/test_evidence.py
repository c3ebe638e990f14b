"""The kit's recording of a connection: both directions decoded, digests switched on where
the login ends, a long segment seen as sent rather than refused by the tap."""

from __future__ import annotations

import trio

from cluster.conformance.evidence import Evidence
from cluster.conformance.target import (
    TARGET_NAME,
    KitAddresses,
    KitTarget,
    PortalSpec,
    memory_server,
)
from iscsicore.login import LoginDone, LoginProposals
from iscsicore.pdu import LoginRequest, LoginResponse, ScsiCommand, ScsiResponse
from tests.stargate.client import TestInitiator, write10


async def _record(proposals: LoginProposals) -> Evidence:
    evidence = Evidence(trio.current_time())
    async with trio.open_nursery() as nursery:
        kit = KitTarget((PortalSpec("entry"),), evidence, KitAddresses(), memory_server())
        await kit.start(nursery)
        initiator = await TestInitiator.connect(kit.entry.port)
        try:
            assert isinstance(await initiator.login(TARGET_NAME, proposals=proposals), LoginDone)
            data = bytes(range(256)) * 16
            # The first command of a new nexus gets the power-on unit attention.
            for status in (2, 0):
                assert (await initiator.scsi(write10(0, 8), write_data=data)).status == status
        finally:
            await initiator.close()
        with trio.fail_after(5):
            while evidence.connections[0].closed_at is None:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    return evidence


def test_both_directions_are_decoded_with_the_negotiated_digests() -> None:
    digests = ("CRC32C",)
    evidence = trio.run(_record, LoginProposals(header_digest=digests, data_digest=digests))
    (conn,) = evidence.connections
    assert conn.undecodable == ""
    assert conn.logged_in
    names = [(seen.direction, seen.name) for seen in conn.pdus]
    assert names[0] == ("in", LoginRequest.__name__)
    assert ("out", LoginResponse.__name__) in names
    assert ("in", ScsiCommand.__name__) in names
    assert names[-1] == ("out", ScsiResponse.__name__)
    commands = [seen for seen in conn.full_feature() if isinstance(seen.pdu, ScsiCommand)]
    assert sum(seen.data_length for seen in conn.full_feature()) == 2 * 4096
    assert commands and commands[0].summary()["pdu"] == "ScsiCommand"
    times = [seen.at for seen in conn.pdus]
    assert times == sorted(times)
