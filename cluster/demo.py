"""`stargate demo`: a CVM fails and comes back while a VM keeps writing and verifying.

1. A 3-node cluster starts (stargate + redirector per node) and a VM with 3 vDisks is
   created on node 1.
2. The VM (the project's initiator, `initiator.VM`) logs in to every vDisk through node 1's
   redirector and runs the data-loss detector (`initiator.verify`) on each.
3. Node 1's stargate is killed (or, with ``--failure hang``, SIGSTOPped: found out by NOP
   timeouts): each vDisk's re-login is redirected to a remote CVM.
4. It is restarted (or continued): after the stable window the remote stargates log the
   sessions out and the re-logins land on node 1 again.
5. The workload stops, a final pass re-reads every block written; the summary gives the
   I/O pause per vDisk at failover and at failback, bytes verified and errors.

Exit status 0 only when every vDisk failed over and back without an error or a mismatch.
The cluster is taken down at the end, whatever happened.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import trio
from rich.console import Console

from cluster.demo_view import DemoView, DiskSummary
from cluster.demo_watch import SAMPLE_INTERVAL, DiskWatch, Phase, portal_to_node
from cluster.provision import create_vm
from cluster.supervisor import Supervisor
from initiator.errors import InitiatorError
from initiator.session import SessionConfig
from initiator.verify import Verifier, VerifyReport, split_region
from initiator.vm import VM
from topology.spec import DEFAULT_BASE_ADDRESS, ClusterPaths, ClusterSpec, ClusterSpecError

NODES = 3
HOME_NODE = 1
VM_NAME = "demo-vm"
DEFAULT_DEMO_STABLE_WINDOW = 20.0
# Like QEMU/libiscsi, with a quicker NOP timeout so that a hung CVM is noticed sooner.
GUEST_SESSION = SessionConfig(nop_interval=1.0, nop_timeout=3.0, replacement_timeout=90.0)
FAILOVER_TIMEOUT = 60.0
FAILBACK_SLACK = 60.0  # beyond the stable window
FLOWING = 0.2  # a disk whose last I/O completed this recently has I/O flowing
LOG_POLL_INTERVAL = 0.25
SUMMARY_WIDTH = 150


class Failure(Enum):
    KILL = "kill"  # SIGKILL, then start it again
    HANG = "hang"  # SIGSTOP, then SIGCONT


@dataclass(frozen=True)
class DemoOptions:
    directory: Path | None
    stable_window: float
    base_address: str
    disks: int = 3
    disk_size: str = "64M"
    sessions_per_disk: int = 1
    region_bytes: int = 16 << 20
    queue_depth: int = 4
    steady_seconds: float = 5.0
    hold_seconds: float = 5.0
    failure: Failure = Failure.KILL
    live: bool = False


class DemoFailed(Exception):
    """The scenario could not go on (cluster did not start, a failover did not happen)."""


# -- command line ---------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="a 3-node cluster; node 1's stargate is killed and restarted under a VM's I/O",
    )
    demo.add_argument("--dir", type=Path, help="a fresh cluster directory (default: a temp dir)")
    demo.add_argument(
        "--stable-window",
        type=float,
        default=DEFAULT_DEMO_STABLE_WINDOW,
        metavar="SECONDS",
        help="how long node 1's stargate must be healthy before failback",
    )
    demo.add_argument("--base-address", default=DEFAULT_BASE_ADDRESS)
    demo.add_argument("--disk-size", default="64M")
    demo.add_argument(
        "--sessions-per-disk",
        type=int,
        default=1,
        metavar="N",
        help="the VM's sessions per vDisk (AHV Turbo: 2); each is watched and verified",
    )
    demo.add_argument("--steady-seconds", type=float, default=5.0)
    demo.add_argument("--hold-seconds", type=float, default=5.0)
    demo.add_argument(
        "--failure",
        choices=[failure.value for failure in Failure],
        default=Failure.KILL.value,
        help="kill node 1's stargate (SIGKILL) or hang it (SIGSTOP)",
    )
    demo.add_argument(
        "--plain", action="store_true", help="plain lines, even on a terminal (no live view)"
    )
    demo.set_defaults(handler=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    options = DemoOptions(
        directory=args.dir,
        stable_window=args.stable_window,
        base_address=args.base_address,
        disk_size=args.disk_size,
        sessions_per_disk=args.sessions_per_disk,
        steady_seconds=args.steady_seconds,
        hold_seconds=args.hold_seconds,
        failure=Failure(args.failure),
        live=sys.stdout.isatty() and not args.plain,
    )
    # Without a terminal rich assumes 80 columns: too narrow for the summary table.
    return run_demo(options, Console() if options.live else Console(width=SUMMARY_WIDTH))


def run_demo(options: DemoOptions, console: Console) -> int:
    temporary = options.directory is None
    directory = Path(tempfile.mkdtemp(prefix="stargate-demo-")) if temporary else options.directory
    assert directory is not None
    directory = directory.resolve()
    try:
        if ClusterPaths(directory).spec_file.exists():
            message = f"{directory} holds a cluster already: give the demo a fresh --dir"
            console.print(message, markup=False)
            return 2
        try:
            spec = ClusterSpec.create(
                directory,
                NODES,
                stable_window=options.stable_window,
                base_address=options.base_address,
            )
        except ClusterSpecError as error:
            console.print(f"demo: {error}", markup=False)
            return 2
        supervisor = Supervisor(directory, redirectors=True)
        supervisor.remember_mode(redirectors=True)
        try:
            return trio.run(_interruptible_demo, options, spec, supervisor, console)
        finally:
            # Outside trio, whatever ended the run (an error, SIGINT, SIGTERM): the cluster's
            # processes run in their own sessions and would outlive us.
            console.print("taking the cluster down", markup=False)
            _stop_all(supervisor)
    finally:
        if temporary:
            shutil.rmtree(directory, ignore_errors=True)


async def _interruptible_demo(
    options: DemoOptions, spec: ClusterSpec, supervisor: Supervisor, console: Console
) -> int:
    """The demo, ended early (status 130) by SIGINT or SIGTERM."""
    result = 130
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def play() -> None:
                nonlocal result
                result = await _demo(options, spec, supervisor, console)
                nursery.cancel_scope.cancel()

            nursery.start_soon(play)
            async for signum in signals:
                console.print(f"{signal.Signals(signum).name}: stopping the demo", markup=False)
                nursery.cancel_scope.cancel()
                break
    return result


# -- the scenario ---------------------------------------------------------------------------


async def _demo(
    options: DemoOptions, spec: ClusterSpec, supervisor: Supervisor, console: Console
) -> int:
    directory = supervisor.directory
    view = DemoView(console, live=options.live)
    try:
        view.event(f"starting a {NODES}-node cluster in {directory}")
        for process in supervisor.processes:
            supervisor.start(process)
        not_ready = await supervisor.wait_ready(supervisor.processes)
        if not_ready:
            for process in not_ready:
                view.event(
                    f"{process.name} did not start; its log ends:\n"
                    f"{supervisor.log_tail(process, 10)}"
                )
            return 1
        record, _ = create_vm(
            directory,
            VM_NAME,
            home_node=HOME_NODE,
            disks=options.disks,
            size=options.disk_size,
            sessions_per_disk=options.sessions_per_disk,
        )
        view.event(f"VM {VM_NAME} on node {HOME_NODE}: vDisks {', '.join(record.vdisk_ids)}")
        with view:
            rows, failure = await _run_vm(options, spec, supervisor, record.vdisk_ids, view)
    except DemoFailed as error:
        console.print(f"demo failed: {error}", markup=False)
        return 1
    view.summary(rows)
    if failure:
        console.print(f"FAILED: {failure}", markup=False)
        return 1
    failed = [row.vdisk for row in rows if not row.ok or row.final_node != HOME_NODE]
    if failed:
        console.print(f"FAILED: {', '.join(failed)}", markup=False)
        return 1
    console.print("OK: every vDisk failed over and back; no error, no mismatch", markup=False)
    return 0


def _stop_all(supervisor: Supervisor) -> None:
    # Redirectors first: no new logins go to stargates about to stop.
    for process in sorted(supervisor.processes, key=lambda p: p.kind.value != "redirector"):
        supervisor.stop(process)


async def _run_vm(
    options: DemoOptions,
    spec: ClusterSpec,
    supervisor: Supervisor,
    vdisks: list[str],
    view: DemoView,
) -> tuple[list[DiskSummary], str]:
    """The VM's run: a summary row per vDisk, and why the scenario stopped early ("")."""
    home = spec.node(HOME_NODE)
    reports: dict[str, VerifyReport] = {}
    async with VM(home.redirector_portal, name=VM_NAME, config=GUEST_SESSION) as vm:
        disks: list[DiskWatch] = []
        for vdisk in vdisks:
            try:
                await vm.attach(vdisk, sessions=options.sessions_per_disk)
            except InitiatorError as error:
                raise DemoFailed(f"attaching {vdisk}: {error}") from None
            # Each session (vm-0, vm-0#2, ...) verifies its own slice of the region.
            sessions = vm.sessions(vdisk)
            slices = split_region(options.region_bytes // sessions[0].block_size, len(sessions))
            for index, (device, (first, blocks)) in enumerate(zip(sessions, slices, strict=True)):
                label = vdisk if index == 0 else f"{vdisk}#{index + 1}"
                verifier = Verifier(device, region_blocks=blocks, first_block=first)
                disks.append(DiskWatch(label, device, verifier))

        async def verify(disk: DiskWatch) -> None:
            reports[disk.vdisk] = await disk.verifier.run(0, queue_depth=options.queue_depth)

        scenario = _Scenario(options, spec, supervisor, disks, view)
        async with trio.open_nursery() as watchers:
            watchers.start_soon(scenario.sample_forever)
            watchers.start_soon(scenario.follow_redirector_log)
            async with trio.open_nursery() as workload:
                for disk in disks:
                    workload.start_soon(verify, disk)
                try:
                    await scenario.play()
                finally:
                    view.announce(Phase.FINISHING, "stopping the workload: final verification")
                    for disk in disks:
                        disk.verifier.stop()
            watchers.cancel_scope.cancel()
    return [_summary(disk, reports.get(disk.vdisk)) for disk in disks], scenario.failure


def _summary(disk: DiskWatch, report: VerifyReport | None) -> DiskSummary:
    block = disk.device.block_size
    longest = disk.device.stats.pauses.longest_so_far(time.monotonic())
    if report is None:
        return DiskSummary(disk.vdisk, None, None, longest, 0, 0, 0, 1, disk.serving_node)
    return DiskSummary(
        disk.vdisk,
        disk.pause_in(Phase.FAILOVER),
        disk.pause_in(Phase.FAILBACK),
        longest,
        report.blocks_verified * block,
        report.blocks_written * block,
        report.mismatch_count,
        report.errors,
        disk.serving_node,
    )


class _Scenario:
    def __init__(
        self,
        options: DemoOptions,
        spec: ClusterSpec,
        supervisor: Supervisor,
        disks: list[DiskWatch],
        view: DemoView,
    ) -> None:
        self.options = options
        self.spec = spec
        self.supervisor = supervisor
        self.disks = disks
        self.view = view
        self.node_of = portal_to_node(spec)
        self.failure = ""

    async def play(self) -> None:
        """The script; a step that does not happen in time ends it, recorded in
        ``failure`` (raising would come out of the nurseries wrapped in a group)."""
        try:
            await self._play()
        except DemoFailed as error:
            self.failure = str(error)
            self.view.event(f"demo failed: {error}")

    async def _play(self) -> None:
        options, supervisor, view = self.options, self.supervisor, self.view
        home_cvm = supervisor.stargate(HOME_NODE)
        remotes = {node.node_id for node in self.spec.nodes} - {HOME_NODE}

        view.announce(Phase.STEADY, f"VM I/O through node {HOME_NODE}'s redirector")
        await self._wait("every vDisk served by node 1", self._all_on({HOME_NODE}), 30.0)
        await trio.sleep(options.steady_seconds)

        hang = options.failure is Failure.HANG
        if hang:
            view.announce(Phase.FAILOVER, f"hanging node {HOME_NODE}'s stargate (SIGSTOP)")
            supervisor.send(home_cvm, signal.SIGSTOP)
        else:
            view.announce(Phase.FAILOVER, f"killing node {HOME_NODE}'s stargate (SIGKILL)")
            await trio.to_thread.run_sync(supervisor.kill, home_cvm)
        await self._wait("every vDisk on a remote CVM", self._all_on(remotes), FAILOVER_TIMEOUT)
        placement = ", ".join(f"{d.vdisk} -> CVM {d.serving_node}" for d in self.disks)
        view.announce(Phase.FAILED_OVER, f"failed over: {placement}")
        await trio.sleep(options.hold_seconds)

        window = self.spec.stable_window
        view.announce(
            Phase.FAILBACK,
            f"{'continuing' if hang else 'restarting'} node {HOME_NODE}'s stargate; "
            f"failback once healthy for {window:g} s",
        )
        if hang:
            supervisor.send(home_cvm, signal.SIGCONT)
        else:
            supervisor.start(home_cvm)
        if await supervisor.wait_ready([home_cvm]):
            raise DemoFailed(f"{home_cvm.name} did not come back:\n{supervisor.log_tail(home_cvm)}")
        await self._wait(
            "every vDisk back on node 1", self._all_on({HOME_NODE}), window + FAILBACK_SLACK
        )
        view.announce(Phase.BACK_HOME, f"failed back: every vDisk on CVM {HOME_NODE}")
        await trio.sleep(options.hold_seconds)

    def _all_on(self, nodes: set[int]) -> Callable[[], bool]:
        def check() -> bool:
            return all(
                disk.serving_node in nodes and disk.current_pause < FLOWING for disk in self.disks
            )

        return check

    async def _wait(self, what: str, condition: Callable[[], bool], timeout: float) -> None:
        with trio.move_on_after(timeout):
            while not condition():
                await trio.sleep(SAMPLE_INTERVAL)
            return
        raise DemoFailed(f"not within {timeout:g} s: {what}")

    async def sample_forever(self) -> None:
        while True:
            now = time.monotonic()  # not trio's clock: DiskWatch keeps monotonic times
            for disk in self.disks:
                event = disk.sample(now, self.view.phase, self.node_of)
                if event is not None:
                    self.view.disk_event(disk, event)
            self.view.cvm_states = {
                node.node_id: self.supervisor.state(self.supervisor.stargate(node.node_id))[1]
                for node in self.spec.nodes
            }
            self.view.refresh(self.disks)
            await trio.sleep(SAMPLE_INTERVAL)

    async def follow_redirector_log(self) -> None:
        """The redirector's own log lines (AHV format) as cluster events."""
        path = self.supervisor.paths.log_file(self.spec.node(HOME_NODE).redirector_name)
        offset = 0
        while True:
            try:
                with path.open("rb") as log:
                    log.seek(offset)
                    chunk = log.read()
            except FileNotFoundError:
                chunk = b""
            complete = chunk[: chunk.rfind(b"\n") + 1]
            offset += len(complete)
            for line in complete.decode(errors="replace").splitlines():
                if " - " in line:  # the AHV-format lines, not the process banner
                    self.view.event("redirector-1: " + line.split(" - ", 2)[-1])
            await trio.sleep(LOG_POLL_INTERVAL)


def main(argv: list[str] | None = None) -> int:
    """`python -m cluster.demo`: the same as `stargate demo`."""
    parser = argparse.ArgumentParser(prog="stargate demo")
    subparsers = parser.add_subparsers(dest="command", required=True)
    register(subparsers)
    args = parser.parse_args(["demo", *(sys.argv[1:] if argv is None else argv)])
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
