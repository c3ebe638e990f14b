"""Declarative fault scenarios: a TOML file scripting a cluster, a workload and a timeline
of faults and cluster events, for reproducible failover runs (`stargate scenario run FILE
--dir DIR`, or `run_scenario` from Python).

    name = "failover, then a fault during failback"
    duration = 30                  # seconds from the start of the workload

    [cluster]                      # created in DIR unless DIR holds one already
    nodes = 2
    stable_window = 4
    base_address = "127.0.0.1"

    [[vm]]
    name = "vm1"
    home = 1
    disks = 2
    size = "16M"
    sessions_per_disk = 2          # AHV Turbo: each session verifies its own slice

    [workload]                     # the project's initiator, verifying what it wrote
    nop_interval = 1.0
    nop_timeout = 3.0
    queue_depth = 2

    [[step]]
    at = 3
    cvm = "stop"                   # kill | stop | cont | start | restart
    node = 1

    [[step]]
    at = 8
    node = 2                       # omit for every CVM
    fault = { kind = "delay", io = "read", delay = 0.2, duration = 10 }

    [[step]]
    at = 12
    redirector = 1                 # a fault at node 1's redirector (login faults only)
    fault = { kind = "login_delay", delay = 2, count = 3 }

    [[step]]
    at = 20
    clear_faults = true            # every CVM and redirector (or node = N, redirector = N)

Every step is recorded in DIR/forensics/scenario.jsonl; at the end the timeline is built
(DIR/forensics/timeline.json, timeline.png).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from cluster.provision import create_vm
from cluster.supervisor import Supervisor
from cluster.timeline import build_timeline, write_timeline
from cluster.timeline_png import draw_timeline
from control.control_token import cluster_token
from control.faults_api import stargate_fault_error
from control.http import HttpError, http_json
from faults.model import Fault
from initiator.session import SessionConfig
from initiator.verify import Verifier, VerifyReport, split_region
from initiator.vm import VM
from iscsicore.portal import Portal
from redirector.config import redirector_page_url
from redirector.faults import redirector_fault_error
from topology.spec import MAX_SESSIONS_PER_DISK, ClusterPaths, ClusterSpec

log = logging.getLogger(__name__)

CVM_OPERATIONS = ("kill", "stop", "cont", "start", "restart")
VERIFY_REGION_BLOCKS = 2048  # blocks of each vDisk the workload writes and verifies
WORKLOAD_GRACE = 90.0  # seconds past the scenario's duration for the workload to wind down


class ScenarioError(Exception):
    pass


@dataclass(frozen=True)
class Step:
    at: float
    node: int | None = None
    redirector: int | None = None  # the step's fault or clearing is for this redirector
    cvm: str | None = None
    fault: dict[str, Any] | None = None
    clear_faults: bool = False

    def describe(self) -> str:
        where = f"CVM {self.node}" if self.node is not None else "every CVM"
        if self.redirector is not None:
            where = f"redirector {self.redirector}"
        elif self.node is None and self.clear_faults:
            where = "every CVM and redirector"
        if self.cvm is not None:
            return f"cvm {self.cvm} {self.node}"
        if self.fault is not None:
            return f"fault {self.fault['kind']} on {where}"
        return f"clear faults on {where}"


def _check_fault(step: Step, name: str) -> None:
    """Validated when the file is loaded, not mid-run."""

    assert step.fault is not None
    try:
        fault = Fault.from_dict(dict(step.fault))
    except (ValueError, TypeError) as error:
        raise ScenarioError(f"{name}: step at {step.at}: {error}") from None
    check = redirector_fault_error if step.redirector is not None else stargate_fault_error
    reason = check(fault)
    if reason is not None:
        raise ScenarioError(f"{name}: step at {step.at}: {reason}")


@dataclass(frozen=True)
class VmSpec:
    name: str
    home: int
    disks: int = 1
    size: str = "16M"
    sessions_per_disk: int = 1


@dataclass(frozen=True)
class Scenario:
    name: str
    duration: float
    nodes: int = 2
    stable_window: float = 5.0
    base_address: str = "127.0.0.1"
    vms: tuple[VmSpec, ...] = ()
    workload: dict[str, Any] = field(default_factory=dict)
    steps: tuple[Step, ...] = ()

    @classmethod
    def load(cls, path: Path) -> Scenario:
        try:
            document = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ScenarioError(f"{path}: {error}") from None
        return cls.from_dict(document, str(path))

    @classmethod
    def from_dict(cls, document: dict[str, Any], name: str = "scenario") -> Scenario:
        cluster = document.get("cluster", {})
        try:
            vms = tuple(VmSpec(**vm) for vm in document.get("vm", []))
            steps = tuple(
                sorted((Step(**step) for step in document.get("step", [])), key=lambda s: s.at)
            )
        except TypeError as error:
            raise ScenarioError(f"{name}: {error}") from None
        for step in steps:
            actions = [step.cvm is not None, step.fault is not None, step.clear_faults]
            if sum(actions) != 1:
                raise ScenarioError(f"{name}: a step does one of cvm, fault, clear_faults")
            if step.cvm is not None and (step.cvm not in CVM_OPERATIONS or step.node is None):
                raise ScenarioError(f"{name}: cvm step needs node and one of {CVM_OPERATIONS}")
            if step.redirector is not None and (step.cvm is not None or step.node is not None):
                raise ScenarioError(f"{name}: step at {step.at}: redirector or node, not both")
            if step.fault is not None:
                _check_fault(step, name)
        if not vms:
            raise ScenarioError(f"{name}: no [[vm]]: nothing to run I/O against")
        for vm in vms:
            if not 1 <= vm.sessions_per_disk <= MAX_SESSIONS_PER_DISK:
                raise ScenarioError(
                    f"{name}: vm {vm.name}: sessions_per_disk must be 1..{MAX_SESSIONS_PER_DISK},"
                    f" not {vm.sessions_per_disk}"
                )
        return cls(
            name=str(document.get("name", name)),
            duration=float(document.get("duration", 30.0)),
            nodes=int(cluster.get("nodes", 2)),
            stable_window=float(cluster.get("stable_window", 5.0)),
            base_address=str(cluster.get("base_address", "127.0.0.1")),
            vms=vms,
            workload=dict(document.get("workload", {})),
            steps=steps,
        )


@dataclass
class ScenarioResult:
    directory: Path
    timeline_json: Path
    timeline_png: Path | None
    verify: dict[str, dict[str, Any]]  # per vDisk: the initiator's verify report
    document: dict[str, Any]

    @property
    def mismatches(self) -> int:
        return sum(int(report["mismatch_count"]) for report in self.verify.values())


class _Recorder:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def emit(self, event: str, *, moment: float | None = None, **fields: Any) -> None:
        record = {"t": time.time() if moment is None else moment, "event": event, **fields}
        with self.path.open("a") as out:
            out.write(json.dumps(record) + "\n")


def prepare_cluster(scenario: Scenario, directory: Path) -> None:

    paths = ClusterPaths(directory)
    if not paths.spec_file.exists():
        ClusterSpec.create(
            directory,
            scenario.nodes,
            stable_window=scenario.stable_window,
            base_address=scenario.base_address,
        )
    for vm in scenario.vms:
        if not paths.vm_file(vm.name).exists():
            create_vm(
                directory,
                vm.name,
                home_node=vm.home,
                disks=vm.disks,
                size=vm.size,
                sessions_per_disk=vm.sessions_per_disk,
            )


async def run_scenario(
    scenario: Scenario, directory: Path, *, keep: bool = False
) -> ScenarioResult:
    """Start the cluster, run the workload and the steps, stop, build the timeline."""

    directory = directory.resolve()
    prepare_cluster(scenario, directory)
    recorder = _Recorder(directory / "forensics" / "scenario.jsonl")
    supervisor = Supervisor(directory, redirectors=True)
    supervisor.remember_mode(redirectors=True)
    try:
        not_ready = await supervisor.start_all(60.0)
        if not_ready:
            raise ScenarioError(f"cluster did not come up: {not_ready}")
        recorder.emit("start", name=scenario.name)
        verify = await _run_workload_and_steps(scenario, supervisor, recorder)
        recorder.emit("end", name=scenario.name)
    finally:
        if not keep:
            supervisor.stop_many(list(reversed(supervisor.processes)))
    document = build_timeline(directory)
    document["verify"] = verify
    json_path = write_timeline(directory, document)
    png_path: Path | None = directory / "forensics" / "timeline.png"
    try:
        assert png_path is not None
        draw_timeline(document, png_path)
    except ImportError:
        png_path = None  # matplotlib is in the optional `bench` dependencies
    return ScenarioResult(directory, json_path, png_path, verify, document)


async def _run_workload_and_steps(
    scenario: Scenario, supervisor: Any, recorder: _Recorder
) -> dict[str, dict[str, Any]]:

    spec = supervisor.spec
    workload = scenario.workload
    config = SessionConfig(
        nop_interval=float(workload.get("nop_interval", 1.0)),
        nop_timeout=float(workload.get("nop_timeout", 3.0)),
        replacement_timeout=float(workload.get("replacement_timeout", 120.0)),
    )
    depth = int(workload.get("queue_depth", 2))
    reports: dict[str, dict[str, Any]] = {}
    verifiers: list[Any] = []
    # Bounded: a workload that cannot finish (a hung target by design) is abandoned.
    with trio.move_on_after(scenario.duration + WORKLOAD_GRACE):
        async with trio.open_nursery() as nursery:
            for vm_spec in scenario.vms:
                node = spec.node(vm_spec.home)
                portal = Portal(node.redirector_advertised_address, node.redirector_advertised_port)
                await nursery.start(
                    _vm_workload, vm_spec, portal, config, depth, reports, verifiers
                )
            started = trio.current_time()
            for step in scenario.steps:
                await trio.sleep_until(started + step.at)
                begun = time.time()  # the step's moment: when it began, not when it was done
                detail = await perform_step(step, supervisor)
                vdisk = step.fault.get("vdisk") if step.fault is not None else None
                recorder.emit(
                    "step",
                    moment=begun,
                    at=step.at,
                    what=step.describe(),
                    detail=detail,
                    node=step.node,
                    vdisk=vdisk,
                )
            await trio.sleep_until(started + scenario.duration)
            for verifier in verifiers:
                verifier.stop()
    return reports


async def _vm_workload(
    vm_spec: VmSpec,
    portal: Any,
    config: Any,
    depth: int,
    reports: dict[str, dict[str, Any]],
    verifiers: list[Any],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """One VM: its disks attached through its home node's redirector, each verifying what
    it wrote until stopped; then logged out."""

    async def verify(vdisk: str, disk_verifiers: list[Verifier]) -> None:
        session_reports: list[VerifyReport] = []

        async def one(verifier: Verifier) -> None:
            session_reports.append(await verifier.run(0, queue_depth=depth))

        async with trio.open_nursery() as sessions:
            for verifier in disk_verifiers:
                sessions.start_soon(one, verifier)
        report = session_reports[0]
        for other in session_reports[1:]:
            report.add(other)
        values = {item.name: getattr(report, item.name) for item in dataclasses.fields(report)}
        reports[vdisk] = {
            name: value for name, value in values.items() if isinstance(value, int | float | str)
        }
        reports[vdisk]["sessions"] = len(disk_verifiers)

    async with VM(portal, name=vm_spec.name, config=config) as vm, trio.open_nursery() as disks:
        for index in range(vm_spec.disks):
            vdisk = f"{vm_spec.name}-{index}"
            await vm.attach(vdisk, sessions=vm_spec.sessions_per_disk)
            sessions = vm.sessions(vdisk)
            # Each session verifies its own slice: two writers on one block would race.
            slices = split_region(VERIFY_REGION_BLOCKS, len(sessions))
            disk_verifiers = [
                Verifier(session, region_blocks=blocks, first_block=first, seed=index + 1)
                for session, (first, blocks) in zip(sessions, slices, strict=True)
            ]
            verifiers.extend(disk_verifiers)
            disks.start_soon(verify, vdisk, disk_verifiers)
        task_status.started()


async def perform_step(step: Step, supervisor: Any) -> str:
    """Do one step: a CVM operation (needs the `Supervisor`), or arm or clear faults
    through the pages of `supervisor.spec`'s CVMs and redirectors; says what happened."""
    spec = supervisor.spec
    if step.cvm is not None:
        assert step.node is not None
        process = supervisor.stargate(step.node)
        operation = step.cvm
        if operation == "kill":
            return f"pid {supervisor.kill(process)} killed"
        if operation == "stop":
            return f"pid {supervisor.send(process, signal.SIGSTOP)} stopped"
        if operation == "cont":
            return f"pid {supervisor.send(process, signal.SIGCONT)} continued"
        if operation == "restart":
            supervisor.stop(process)
        pid = supervisor.start(process)
        await supervisor.wait_ready([process], 30.0)
        return f"pid {pid} started"

    token = cluster_token(supervisor.directory)
    answers = []
    for label, url in _step_pages(step, spec):
        try:
            if step.fault is not None:
                status, _answer = await http_json(
                    "POST", f"{url}/faults", document=step.fault, timeout=5, token=token
                )
            else:
                status, _ = await http_json("DELETE", f"{url}/faults", timeout=5, token=token)
            answers.append(f"{label}: {status}")
        except HttpError as error:
            answers.append(f"{label}: {error}")
    return "; ".join(answers)


def _step_pages(step: Step, spec: Any) -> list[tuple[str, str]]:
    """(label, page URL) of the CVMs and redirectors a fault or clearing step is for."""

    if step.redirector is not None:
        node = spec.node(step.redirector)
        return [(f"redirector {node.node_id}", redirector_page_url(node))]
    nodes = [spec.node(step.node)] if step.node is not None else spec.nodes
    pages = [(f"node {node.node_id}", node.http_url) for node in nodes]
    if step.clear_faults and step.node is None:
        pages += [(f"redirector {node.node_id}", redirector_page_url(node)) for node in nodes]
    return pages
