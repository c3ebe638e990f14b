"""Runs schedules against a real cluster: per schedule, fresh vDisks, the clients, the
nemesis, a heal, a final read-back of every block, the checker.

The cluster (a stargate and a redirector per node, `Supervisor` processes) is started once
and kept across schedules; each schedule starts from every process running and answering.
Schedule ``i`` of a soak with seed ``S`` uses seed ``S + i``: ``--seed S+i --schedules 1``
replays it (same nemesis schedule, same client choices; timing is the machine's).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from cluster.evidence import read_evidence
from cluster.jepsen.checker import check
from cluster.jepsen.clients import (
    ClientOutcome,
    ClientPlan,
    final_read,
    run_initiator_client,
    run_qemu_io_client,
)
from cluster.jepsen.history import EventType, History, operations
from cluster.jepsen.nemesis import NemesisExecutor, generate
from cluster.jepsen.report import ScheduleResult, SoakReport, count_operations, longest_pauses
from cluster.provision import create_vm
from cluster.supervisor import Supervisor
from topology.spec import ClusterPaths

ATTACH_TIMEOUT = 60.0
STOP_GRACE = 60.0  # clients finish their commands in flight, then are cancelled
OVERHEAD_ESTIMATE = 30.0  # a schedule's set-up, heal, settle and read-back, for the budget


@dataclass(frozen=True, slots=True)
class SoakOptions:
    seed: int
    schedules: int | None = None  # at most this many
    minutes: float | None = None  # start no schedule that would not end in time
    schedule_seconds: float = 30.0
    settle_seconds: float = 3.0  # clients keep going after the heal
    initiator_clients: int = 2
    qemu_clients: int = 1
    vdisks_per_client: int = 2
    sessions_per_disk: int = 1  # the initiator clients' (qemu-io opens one)
    blocks: int = 128
    vdisk_size: str = "16M"
    keep_histories: bool = False  # else only those of schedules that found something


Log = Callable[[str], None]
ClientRun = Callable[[ClientPlan, History, trio.Event, ClientOutcome], Awaitable[None]]


@dataclass(slots=True)
class _Client:
    plan: ClientPlan
    run: ClientRun
    outcome: ClientOutcome
    attached: trio.Event = field(default_factory=trio.Event)


async def run_soak(
    supervisor: Supervisor, options: SoakOptions, report: SoakReport, out: Path, log: Log
) -> SoakReport:
    """Start the cluster, run schedules while the budget lasts, stop the cluster (by pid)."""
    deadline = math.inf if options.minutes is None else time.monotonic() + options.minutes * 60
    limit = options.schedules if options.schedules is not None else math.inf
    try:
        not_ready = await supervisor.start_all(60.0)
        if not_ready:
            raise RuntimeError(f"the cluster did not start: {not_ready}")
        index = 0
        while index < limit:
            needed = options.schedule_seconds + OVERHEAD_ESTIMATE
            if index and time.monotonic() + needed > deadline:
                break
            seed = options.seed + index
            log(f"schedule {index} (seed {seed})")
            result = await run_schedule(supervisor, options, index, seed, out, log)
            report.schedules.append(result)
            verdict = "ok" if result.ok else "ANOMALIES"
            log(f"schedule {index} (seed {seed}): {verdict}, {result.checked} operations "
                f"checked, {len(result.anomalies)} anomalies")  # fmt: skip
            for finding in [*result.problems, *map(str, result.anomalies[:10])]:
                log(f"  {finding}")
            index += 1
    finally:
        await trio.to_thread.run_sync(supervisor.stop_many, supervisor.processes)
    return report


def _plans(supervisor: Supervisor, options: SoakOptions, index: int, seed: int) -> list[_Client]:
    spec = supervisor.spec
    kinds = ["initiator"] * options.initiator_clients + ["qemu-io"] * options.qemu_clients
    clients = []
    for number, kind in enumerate(kinds, start=1):
        home = spec.node_ids[(number - 1) % len(spec.node_ids)]
        sessions = options.sessions_per_disk if kind == "initiator" else 1
        record, _ = create_vm(supervisor.directory, f"j{index}-{seed}-c{number}",
                              home_node=home, disks=options.vdisks_per_client,
                              size=options.vdisk_size, sessions_per_disk=sessions)  # fmt: skip
        plan = ClientPlan(number, kind, spec.node(home).redirector_portal,
                          tuple(record.vdisk_ids), options.blocks, seed * 100 + number,
                          sessions_per_disk=sessions)  # fmt: skip
        runner = run_initiator_client if kind == "initiator" else run_qemu_io_client
        clients.append(_Client(plan, runner, ClientOutcome(plan.name)))
    return clients


async def run_schedule(
    supervisor: Supervisor, options: SoakOptions, index: int, seed: int, out: Path, log: Log
) -> ScheduleResult:
    started = time.monotonic()
    schedule = generate(seed, len(supervisor.spec.nodes), options.schedule_seconds)
    result = ScheduleResult(index, seed, schedule.describe())
    history = History()
    nemesis = NemesisExecutor(supervisor, history)
    result.problems += await nemesis.heal()
    clients = _plans(supervisor, options, index, seed)
    stop = trio.Event()

    async def client(entry: _Client) -> None:
        try:
            await entry.run(entry.plan, history, stop, entry.outcome)
        except Exception as error:  # one client's failure is reported, not fatal to the run
            entry.outcome.error = f"{type(error).__name__}: {error}"

    async with trio.open_nursery() as nursery:
        for entry in clients:
            nursery.start_soon(client, entry)
        await _until_flowing(history, clients)
        log(f"  nemesis: {len(schedule.steps)} steps over {options.schedule_seconds:g} s")
        nemesis_started = trio.current_time()
        await nemesis.run(schedule)
        await trio.sleep_until(nemesis_started + options.schedule_seconds)
        result.problems += await nemesis.heal()
        await trio.sleep(options.settle_seconds)
        stop.set()
        # Commands in flight finish (they are in the history either way); then cancel.
        nursery.cancel_scope.deadline = trio.current_time() + STOP_GRACE
    result.problems += [f"{c.plan.name}: {c.outcome.error}" for c in clients if c.outcome.error]
    keys = [key for entry in clients for key in entry.plan.registers()]
    problem = await final_read(supervisor.spec.node(1).redirector_portal, keys, history)
    if problem:
        result.problems.append(problem)

    vdisks = {vdisk for entry in clients for vdisk in entry.plan.vdisks}
    evidence = [e for e in read_evidence(ClusterPaths(supervisor.directory).evidence)
                if e.vdisk in vdisks]  # fmt: skip
    ops = list(operations(history.events))
    result.anomalies = check(ops, evidence)
    result.operations = count_operations(ops)
    result.checked = sum(1 for op in ops if op.key is not None and op.completed is not None)
    result.evidence_epochs = len(evidence)
    result.longest_pause = longest_pauses(history.events)
    if not result.ok or options.keep_histories:  # tens of MB each: kept when needed
        out.mkdir(parents=True, exist_ok=True)
        history_path = out / f"history-{index}-seed{seed}.jsonl"
        history.dump(history_path)
        result.history = str(history_path)
    result.seconds = time.monotonic() - started
    return result


async def _until_flowing(history: History, clients: list[_Client]) -> None:
    """Wait (bounded) until every client completed an operation: the nemesis starts on a
    cluster under load, not on clients still logging in."""
    with trio.move_on_after(ATTACH_TIMEOUT):
        while True:
            done = {e.process for e in history.events if e.type is not EventType.INVOKE}
            for entry in clients:
                if entry.plan.name in done or entry.outcome.error:
                    entry.attached.set()
            if all(entry.attached.is_set() for entry in clients):
                return
            await trio.sleep(0.1)
