"""Jepsen-style schedules against real processes: a cluster of `python -m
cluster.cvm` and `python -m redirector` (started by the `Supervisor`, stopped by
pid), the project's initiator and qemu-io as clients."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from cluster.evidence import read_evidence
from cluster.jepsen.blocks import SECTOR, encode
from cluster.jepsen.checker import AnomalyKind, check, check_evidence
from cluster.jepsen.clients import ClientOutcome, ClientPlan, final_read, run_initiator_client
from cluster.jepsen.history import EventType, Function, History, operations
from cluster.jepsen.report import SoakReport
from cluster.jepsen.runner import SoakOptions, run_soak
from cluster.provision import create_vm
from cluster.supervisor import Supervisor
from tests.redirector.cluster import make_spec
from topology.spec import ClusterPaths


@pytest.fixture
def supervisor(tmp_data_dir: Path) -> Iterator[Supervisor]:
    """A 3-node cluster directory on addresses of this test's own; every process the test
    starts through the supervisor is stopped by pid at the end."""
    make_spec(tmp_data_dir, 3, stable_window=3.0)
    supervisor = Supervisor(tmp_data_dir, redirectors=True)
    try:
        yield supervisor
    finally:
        supervisor.stop_many(supervisor.processes)


async def _start(supervisor: Supervisor) -> None:
    for process in supervisor.processes:
        supervisor.start(process)
    assert await supervisor.wait_ready(supervisor.processes, 60.0) == []


async def _write_for(plan: ClientPlan, history: History, seconds: float) -> ClientOutcome:
    outcome = ClientOutcome(plan.name)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_initiator_client, plan, history, stop, outcome)
        await trio.sleep(seconds)
        stop.set()
    return outcome


def _plan(supervisor: Supervisor, name: str, home: int, blocks: int = 32) -> ClientPlan:
    record, _ = create_vm(supervisor.directory, name, home_node=home, disks=1, size="1M")
    portal = supervisor.spec.node(home).redirector_portal
    return ClientPlan(1, "initiator", portal, tuple(record.vdisk_ids), blocks, seed=1)


def test_stargates_record_the_epochs_they_wrote_under(supervisor: Supervisor) -> None:
    """Each CVM records, per vDisk, the epochs under which it executed writes: a failover
    shows the home CVM's epoch, then a remote CVM's newer one, each with its writes."""

    async def scenario() -> None:
        await _start(supervisor)
        plan = _plan(supervisor, "ev", home=1)
        history = History()
        await _write_for(plan, history, 1.5)
        await trio.to_thread.run_sync(supervisor.kill, supervisor.stargate(1))
        # The same blocks, a second client (its values must not repeat the first's).
        await _write_for(replace(plan, client_id=2), history, 3.0)
        assert check(operations(history.events)) == []

    trio.run(scenario)
    evidence = read_evidence(ClusterPaths(supervisor.directory).evidence)
    writers = sorted((e.epoch, e.node) for e in evidence if e.writes)
    assert writers, "no CVM recorded the epochs it executed writes under"
    assert writers[0][1] == 1 and writers[-1][1] != 1, writers
    assert writers[-1][0] > writers[0][0]
    assert check_evidence(evidence) == []


def test_a_block_rolled_back_behind_the_clients_back_is_caught(supervisor: Supervisor) -> None:
    """The whole pipeline finds a lost write on real processes: acknowledged writes, then
    the vDisk's file gets an older acknowledged value of one block back (a stale write
    landing), then the final read-back through a redirector."""

    async def scenario() -> list[AnomalyKind]:
        await _start(supervisor)
        plan = _plan(supervisor, "rb", home=2, blocks=4)
        history = History()
        await _write_for(plan, history, 2.0)
        writes = [op for op in operations(history.events)
                  if op.f is Function.WRITE and op.outcome is EventType.OK]  # fmt: skip
        key = writes[-1].key
        assert key is not None
        older = [op for op in writes if op.key == key][-2].value
        assert older is not None
        image = ClusterPaths(supervisor.directory).vdisks / f"{key.vdisk}.img"
        with image.open("r+b") as file:
            file.seek(key.lba * SECTOR)
            file.write(encode(key.vdisk, key.lba, older))
        assert await final_read(plan.portal, plan.registers(), history) == ""
        return [anomaly.kind for anomaly in check(operations(history.events))]

    assert trio.run(scenario) == [AnomalyKind.LOST_WRITE]


def test_soak_command_rejects_bad_arguments() -> None:
    for argv in (
        ["--nodes", "1"],
        ["--initiators", "0", "--qemu", "0"],
        ["--minutes", "0"],
        ["--sessions-per-disk", "9"],
    ):
        completed = subprocess.run(
            [sys.executable, "-m", "stargate", "soak", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert completed.returncode == 2, completed
        assert (
            completed.stderr.startswith("stargate soak: ") and "Traceback" not in completed.stderr
        )


@pytest.mark.slow
def test_seeded_schedules_find_no_anomaly(
    supervisor: Supervisor, require_tool: Callable[..., str], tmp_path: Path
) -> None:
    """Three schedules of kills, stops, restarts and blackholes under the initiator (two
    sessions per vDisk, as AHV Turbo opens) and qemu-io: 0 anomalies. JEPSEN_SEED=S replays
    the run that printed seed S."""
    require_tool("qemu-io")
    seed = int(os.environ.get("JEPSEN_SEED", random.randrange(1 << 31)))
    print(f"soak seed {seed}: JEPSEN_SEED={seed} replays it")
    options = SoakOptions(
        seed=seed, schedules=3, schedule_seconds=20.0, blocks=64, sessions_per_disk=2
    )
    report = SoakReport(seed, f"JEPSEN_SEED={seed}")
    lines: list[str] = []
    trio.run(run_soak, supervisor, options, report, tmp_path, lines.append)
    details = "\n".join(lines)
    assert len(report.schedules) == 3, details
    for schedule in report.schedules:
        assert schedule.steps and schedule.checked > 1000, details
        assert schedule.evidence_epochs > 0, details
        assert {"initiator-1", "initiator-2", "qemu-io-3"} <= set(schedule.longest_pause)
    assert report.ok, details
