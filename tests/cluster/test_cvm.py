"""Cluster stargates in this process (two CVMs in one trio loop), driven by the initiator
library: ownership moves on login, the HTTP page, the logout control."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from cluster.cvm import ClusterStargate
from cluster.provision import create_vm
from control.http import http_json, http_request
from faults.model import Fault, FaultKind
from initiator.device import BlockDevice
from initiator.session import SessionConfig
from stargate.queue import Admission, Tenant
from tests.cluster.conftest import unique_cluster_base
from topology.naming import target_name_for
from topology.ownership import OwnershipFile, read_record
from topology.spec import ClusterPaths, ClusterSpec

BLOCK = 512
CONFIG = SessionConfig(replacement_timeout=30)


@asynccontextmanager
async def two_cvms(directory: Path, **options: float) -> AsyncIterator[list[ClusterStargate]]:
    ClusterSpec.create(directory, 2, base_address=unique_cluster_base())
    create_vm(directory, "vm", home_node=1, disks=2, size="8M")
    cvms = [ClusterStargate(directory, node_id, **options) for node_id in (1, 2)]  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        for cvm in cvms:
            await nursery.start(cvm.run)
        try:
            yield cvms
        finally:
            for cvm in cvms:
                await cvm.shutdown()
            nursery.cancel_scope.cancel()


def url(cvm: ClusterStargate, vdisk_id: str) -> str:
    return f"iscsi://{cvm.node.cvm_portal}/iqn.2010-06.com.nutanix:vmdisk-{vdisk_id}/0"


async def vdisk_entry(cvm: ClusterStargate, vdisk_id: str) -> dict[str, object]:
    status, document = await http_json("GET", f"{cvm.node.http_url}/vdisks")
    assert status == 200
    return next(entry for entry in document if entry["id"] == vdisk_id)


async def wait_for(
    predicate_coroutine: Callable[[], Awaitable[bool]], timeout: float = 5.0
) -> None:
    with trio.fail_after(timeout):
        while not await predicate_coroutine():
            await trio.sleep(0.02)


async def test_login_at_another_stargate_moves_the_vdisk_and_keeps_acked_writes(
    tmp_data_dir: Path,
) -> None:
    async with two_cvms(tmp_data_dir / "c") as (first, second):
        pattern = bytes(range(256)) * 16  # 8 blocks
        async with BlockDevice.open(url(first, "vm-0"), CONFIG) as on_first:
            await on_first.write(0, pattern)
            assert (await vdisk_entry(first, "vm-0"))["serving"] is True
            assert (await vdisk_entry(first, "vm-0"))["connections"] == 1
            async with BlockDevice.open(url(second, "vm-0"), CONFIG) as on_second:
                assert await on_second.read(0, 8) == pattern  # acknowledged by 1, read via 2

                async def first_dropped() -> bool:
                    entry = await vdisk_entry(first, "vm-0")
                    return entry["serving"] is False and entry["connections"] == 0

                await wait_for(first_dropped)
                assert (await vdisk_entry(second, "vm-0"))["serving"] is True
                record = read_record(ClusterPaths(tmp_data_dir / "c").ownership_file("vm-0"))
                assert record is not None and record.node_id == 2 and record.epoch == 2


async def test_ownership_ping_pong_never_loses_an_acknowledged_write(tmp_data_dir: Path) -> None:
    async with two_cvms(tmp_data_dir / "c") as cvms:
        for round_number in range(6):
            cvm = cvms[round_number % 2]
            async with BlockDevice.open(url(cvm, "vm-1"), CONFIG) as disk:
                if round_number:
                    previous = bytes([round_number - 1]) * BLOCK
                    assert await disk.read(round_number - 1, 1) == previous
                await disk.write(round_number, bytes([round_number]) * BLOCK)
        record = read_record(ClusterPaths(tmp_data_dir / "c").ownership_file("vm-1"))
        assert record is not None and record.epoch == 6
        for cvm in cvms:  # counters survive the vDisk moving away and back
            _, document = await http_json("GET", f"{cvm.node.http_url}/stats.json")
            assert document["vdisks"]["vm-1"]["writes"] == 3
            assert document["vdisks"]["vm-1"]["logins"] == 3


async def test_take_over_when_the_owner_does_not_answer(tmp_data_dir: Path) -> None:
    """The owner's HTTP page is gone (as if dead): the new stargate takes over anyway, and
    the old one, still running, drops the vDisk when it sees the epoch moved."""
    async with (
        two_cvms(tmp_data_dir / "c", release_timeout=0.5) as (first, second),
        BlockDevice.open(url(first, "vm-0"), CONFIG) as on_first,
    ):
        await on_first.write(0, b"\x11" * BLOCK)
        first.node = first.node.__class__(  # point others' release requests nowhere
            **{**first.node.to_json(), "http_port": 1}
        )
        second.spec = ClusterSpec([first.node, second.node], base_address=second.spec.base_address)
        async with BlockDevice.open(url(second, "vm-0"), CONFIG) as on_second:
            assert await on_second.read(0, 1) == b"\x11" * BLOCK
            await on_second.write(0, b"\x22" * BLOCK)

            async def first_let_go() -> bool:
                return "iqn.2010-06.com.nutanix:vmdisk-vm-0" not in first.claims

            await wait_for(first_let_go)
            assert await on_second.read(0, 1) == b"\x22" * BLOCK


async def test_stats_pages_count_ios_in_json_and_prometheus(tmp_data_dir: Path) -> None:
    async with (
        two_cvms(tmp_data_dir / "c") as (first, _),
        BlockDevice.open(url(first, "vm-0"), CONFIG) as disk,
    ):
        for lba in range(5):
            await disk.write(lba, b"\xab" * BLOCK)
        for lba in range(3):
            await disk.read(lba, 2)
        status, document = await http_json("GET", f"{first.node.http_url}/stats.json")
        metrics = await http_request("GET", f"{first.node.http_url}/metrics")
    assert status == 200
    counters = document["vdisks"]["vm-0"]
    assert counters["writes"] == 5 and counters["bytes_written"] == 5 * BLOCK
    assert counters["reads"] >= 3 and counters["bytes_read"] >= 3 * 2 * BLOCK
    assert counters["state"] == "owned" and document["node"] == 1
    assert (counters["owner_node"], counters["owner_epoch"]) == (1, counters["epoch"])
    assert sum(counters["latency"]["counts"]) >= 8
    assert metrics.status == 200 and metrics.content_type.startswith("text/plain")
    samples = parse_prometheus(metrics.body.decode())
    labels = '{node="1",vdisk="vm-0"}'
    assert samples[f"stargate_vdisk_writes_total{labels}"] == 5
    assert samples[f"stargate_vdisk_reads_total{labels}"] == counters["reads"]
    assert samples[f"stargate_vdisk_owned{labels}"] == 1
    inf_bucket = 'stargate_vdisk_latency_seconds_bucket{le="+Inf",node="1",vdisk="vm-0"}'
    assert samples[inf_bucket] == samples[f"stargate_vdisk_latency_seconds_count{labels}"]


_LABEL = re.compile(r'[a-zA-Z_]+="[^"]*"')
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_]+="[^"]*",?)*\})? (\S+)$')


def parse_prometheus(text: str) -> dict[str, float]:
    """A strict reader of the text format: every line a comment (HELP/TYPE) or a sample;
    samples keyed by name and labels in sorted order (the format leaves the order free)."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        match = _SAMPLE.match(line)
        assert match is not None, f"not a Prometheus sample line: {line!r}"
        labels = ",".join(sorted(_LABEL.findall(match[2] or "")))
        samples[f"{match[1]}{{{labels}}}" if labels else match[1]] = float(match[3])
    return samples


async def test_control_logout_asks_the_sessions_and_release_of_unknown_is_harmless(
    tmp_data_dir: Path,
) -> None:
    async with (
        two_cvms(tmp_data_dir / "c") as (first, _),
        BlockDevice.open(url(first, "vm-0"), CONFIG) as disk,
    ):
        await disk.write(0, b"\x01" * BLOCK)
        base = f"{first.node.http_url}/control/vdisks"
        token = first.page.token
        status, answer = await http_json("POST", f"{base}/vm-0/logout?seconds=2", token=token)
        assert (status, answer["sessions_asked"]) == (200, 1)
        # The initiator logs out, logs in again (same stargate here) and goes on.
        await disk.write(1, b"\x02" * BLOCK)
        assert await disk.read(0, 2) == b"\x01" * BLOCK + b"\x02" * BLOCK
        assert disk.stats.reconnects >= 1
        status, answer = await http_json("POST", f"{base}/vm-1/release?by=2", token=token)
        assert status == 200 and answer["was_serving"] is False
        status, _ = await http_json("POST", f"{base}/vm-0/nonsense", token=token)
        assert status == 404


@pytest.mark.parametrize("chunk_blocks", [1, 512], ids=["512B-writes", "256KiB-writes-with-R2T"])
async def test_two_initiators_pulling_a_vdisk_back_and_forth_lose_no_acked_write(
    tmp_data_dir: Path, chunk_blocks: int
) -> None:
    """Each initiator writes its own chunks through its own stargate: every login moves the
    vDisk, the other is dropped mid-stream and comes back (large writes are mid-R2T when
    that happens). No write fails, and every chunk ends up holding the last generation
    acknowledged for it, or a later one that was sent."""
    chunks_each, duration = 4, 6.0
    acked: dict[int, int] = {}
    sent: dict[int, int] = {}

    async def writer(cvm: ClusterStargate, first_chunk: int) -> None:
        async with BlockDevice.open(url(cvm, "vm-0"), CONFIG) as disk:
            generation = 0
            with trio.move_on_after(duration):
                while True:
                    generation += 1
                    for chunk in range(first_chunk, first_chunk + chunks_each):
                        payload = generation.to_bytes(4, "big") * (chunk_blocks * BLOCK // 4)
                        sent[chunk] = generation
                        await disk.write(chunk * chunk_blocks, payload)
                        acked[chunk] = generation

    async with two_cvms(tmp_data_dir / "c") as (first, second):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer, first, 0)
            await trio.sleep(0.3)
            nursery.start_soon(writer, second, chunks_each)
        record = read_record(ClusterPaths(tmp_data_dir / "c").ownership_file("vm-0"))
        assert record is not None and record.epoch >= 3  # it did move back and forth
        async with BlockDevice.open(url(first, "vm-0"), CONFIG) as reader:
            data = await reader.read(0, 2 * chunks_each * chunk_blocks)
    for chunk in range(2 * chunks_each):
        generations = {
            int.from_bytes(data[offset : offset + 4], "big")
            for offset in range(
                chunk * chunk_blocks * BLOCK, (chunk + 1) * chunk_blocks * BLOCK, BLOCK
            )
        }
        assert len(generations) == 1, f"chunk {chunk} is torn: {sorted(generations)}"
        found = generations.pop()
        assert acked[chunk] <= found <= sent[chunk], (chunk, acked[chunk], found, sent[chunk])


CHUNKS = 16  # 16 x 256 KiB: half the vDisk


@pytest.mark.parametrize("chunk_blocks", [1, 512], ids=["512B-writes", "256KiB-writes-with-R2T"])
async def test_a_take_over_under_load_costs_the_initiator_latency_not_errors(
    tmp_data_dir: Path, chunk_blocks: int
) -> None:
    """The record moves to node 2 behind stargate 1's back while an initiator writes through
    1 (what a resumed, stopped owner finds): commands caught in between are answered BUSY
    or parked, the session is dropped, and the initiator's retries all succeed."""
    async with two_cvms(tmp_data_dir / "c") as (first, _):
        async with BlockDevice.open(url(first, "vm-0"), CONFIG) as disk:
            written = 0

            async def keep_writing() -> None:
                nonlocal written
                while True:
                    payload = written.to_bytes(4, "big") * (chunk_blocks * BLOCK // 4)
                    await disk.write((written % CHUNKS) * chunk_blocks, payload)
                    written += 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(keep_writing)
                await trio.sleep(0.3)
                before = written
                OwnershipFile(ClusterPaths(tmp_data_dir / "c").ownership_file("vm-0")).claim(2)
                with trio.fail_after(15):
                    while written < before + 50 or disk.stats.reconnects < 1:
                        await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
            for lba in range(CHUNKS):  # the last acknowledged write of each block is on disk
                last = max(n for n in range(written) if n % CHUNKS == lba)
                found = int.from_bytes((await disk.read(lba * chunk_blocks, 1))[:4], "big")
                in_flight = (
                    written if written % CHUNKS == lba else last
                )  # cancelled, may have landed
                assert found in (last, in_flight), (lba, last, found)
        record = read_record(ClusterPaths(tmp_data_dir / "c").ownership_file("vm-0"))
        assert record is not None and record.node_id == 1 and record.epoch == 3


@pytest.mark.parametrize(("action", "async_event"), [("kill", False), ("release?by=2", True)])
async def test_control_kill_quiesces_then_closes_without_an_async_event(
    tmp_data_dir: Path, caplog: pytest.LogCaptureFixture, action: str, async_event: bool
) -> None:
    """Failback's "quiesce then kill": writes in flight when it comes are either finished
    (and acknowledged) or re-issued after the reconnect, none lost; the initiator learns it
    from the closed connection, not from an AsyncEvent (a release sends one: the control)."""
    caplog.set_level(logging.INFO, logger="initiator")
    async with (
        two_cvms(tmp_data_dir / "c") as (first, _),
        BlockDevice.open(url(first, "vm-0"), CONFIG) as disk,
    ):
        acked: dict[int, int] = {}
        stop = trio.Event()

        async def writer(lba: int) -> None:
            generation = 0
            while not stop.is_set():
                generation += 1
                await disk.write(lba, bytes([generation % 256]) * BLOCK)
                acked[lba] = generation

        async with trio.open_nursery() as nursery:
            for lba in range(4):
                nursery.start_soon(writer, lba)
            with trio.fail_after(10):
                while len(acked) < 4:
                    await trio.sleep(0.01)
            base = f"{first.node.http_url}/control/vdisks"
            status, answer = await http_json(
                "POST", f"{base}/vm-0/{action}", token=first.page.token
            )
            assert status == 200 and answer["was_serving"] is True, answer
            assert answer["connections_closed"] == 1, answer
            before = dict(acked)
            with trio.fail_after(20):  # the writers go on after the reconnect
                while any(acked[lba] <= before[lba] for lba in before):
                    await trio.sleep(0.01)
            stop.set()
        assert disk.stats.reconnects >= 1
        assert disk.stats.errors == 0
        for lba, generation in acked.items():
            assert await disk.read(lba, 1) == bytes([generation % 256]) * BLOCK, lba
    assert ("AsyncEvent" in caplog.text) is async_event, caplog.text


@dataclass
class _Parked:
    """A queued command stand-in: what the gate parks."""

    cancelled: bool = False
    buffer_bytes: int = 0
    tenant: Tenant | None = None

    def dispatch(self) -> None:
        raise AssertionError("an unowned vDisk's command must not run")


async def test_a_cvms_server_is_built_with_its_ownership_and_fault_hooks(
    tmp_data_dir: Path,
) -> None:
    """Without a network: the server a CVM builds parks the commands of a vDisk it does not
    own yet, records fired faults in the CVM's forensics file, and judges "failed over" by
    the VM's home node."""
    directory = tmp_data_dir / "c"
    ClusterSpec.create(directory, 2, base_address=unique_cluster_base())
    create_vm(directory, "vm", home_node=1, disks=1, size="8M")
    home, away = ClusterStargate(directory, 1), ClusterStargate(directory, 2)
    try:
        name = target_name_for("vm-0")
        server = away.server
        assert server.registry.get(name) is not None  # opened on first use: a claim, IDLE
        claim = away.claims[name]
        assert not server.queue.admit_now(name)  # not owned: the inline path stays shut
        parked = _Parked()
        assert server.queue.admit(name, parked) is Admission.QUEUED
        assert [entry.command for entry in claim.parked] == [parked]
        assert server.queue.in_flight == 0
        assert server.observer is away.forensics  # sessions are recorded there
        read = bytes([0x28]) + bytes(9)
        for cvm in (home, away):
            cvm.server.faults.add(Fault(FaultKind.BUSY, only_failed_over=True))
        assert home.server.faults.scsi_fault("vm-0", read) is None  # its home: not moved
        assert away.server.faults.scsi_fault("vm-0", read) is not None
        assert [e["event"] for e in away.forensics.events] == ["fault"]
        assert not home.forensics.events
        written = (directory / "forensics" / "stargate-2.jsonl").read_text().splitlines()
        assert len(written) == 1 and '"event": "fault"' in written[0]
    finally:
        await home.shutdown()
        await away.shutdown()
