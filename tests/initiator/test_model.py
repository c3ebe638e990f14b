"""Random I/O against stargate with connection drops and logout requests thrown in: what
the initiator reads back always equals a simple model of the disk (hypothesis)."""

from __future__ import annotations

import random

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from initiator.device import BlockDevice
from initiator.session import SessionConfig
from tests.stargate.client import memory_target, start_stargate
from topology.naming import target_name_for

BLOCKS = 4096
operation = st.tuples(
    st.sampled_from(["write", "write", "read", "drop", "logout"]),
    st.integers(0, BLOCKS - 1),
    st.integers(1, 2100),  # up to ~1 MiB: immediate, unsolicited and R2T data
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=st.lists(operation, min_size=3, max_size=16), seed=st.integers(0, 2**32))
def test_reads_match_the_model_across_disruptions(
    operations: list[tuple[str, int, int]], seed: int
) -> None:
    trio.run(_scenario, operations, seed)


async def _scenario(operations: list[tuple[str, int, int]], seed: int) -> None:
    rng = random.Random(seed)
    model = bytearray(BLOCKS * 512)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            server = await start_stargate(nursery, memory_target("m", BLOCKS * 512))
            url = f"iscsi://127.0.0.1:{server.port}/{target_name_for('m')}/0"
            config = SessionConfig(replacement_timeout=20)
            async with BlockDevice.open(url, config) as disk:
                for kind, lba, blocks in operations:
                    blocks = min(blocks, BLOCKS - lba)
                    if kind == "write":
                        data = rng.randbytes(blocks * 512)
                        await disk.write(lba, data)
                        model[lba * 512 : (lba + blocks) * 512] = data
                    elif kind == "read":
                        got = await disk.read(lba, blocks)
                        assert got == model[lba * 512 : (lba + blocks) * 512]
                    else:
                        # Disrupt while the next command is in flight.
                        nursery.start_soon(_disrupt, server, kind, rng.random() * 0.003)
                assert await disk.read(0, BLOCKS) == model
            nursery.cancel_scope.cancel()


async def _disrupt(server: object, kind: str, delay: float) -> None:
    await trio.sleep(delay)
    if kind == "drop":
        server.drop_connections("m", time2wait=0)  # type: ignore[attr-defined]
    else:
        server.request_logout("m", seconds=1)  # type: ignore[attr-defined]
