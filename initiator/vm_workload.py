"""A VM's workload over all its vDisks at once: verify (data-loss detection) or bench I/O
on each vDisk, through one portal, with per-vDisk live statistics. The cluster demo's
"guest".

With N sessions per disk (AHV Turbo: one per guest queue) each session runs its share:
for verify, a verifier on its own slice of the region (its writes never race another
session's), for a bench the whole pattern."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from iscsicore.portal import Portal

from .bench import Pattern, run_bench
from .device import BlockDevice
from .errors import InitiatorError
from .session import SessionConfig
from .verify import Verifier, VerifyReport, split_region
from .vm import VM


@dataclass(slots=True)
class DiskRun:
    """What one vDisk did: the session's statistics plus the verify outcome."""

    vdisk: str
    device: BlockDevice | None = None  # the first session
    sessions: list[BlockDevice] = field(default_factory=list)
    verify: VerifyReport | None = None
    error: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    def snapshot(self) -> dict[str, object]:
        result: dict[str, object] = {"vdisk": self.vdisk}
        if self.device is not None:
            result.update(self.device.stats.snapshot())
            result["sessions"] = len(self.sessions)
        if self.verify is not None:
            result["mismatches"] = self.verify.mismatch_count
            result["verify_errors"] = self.verify.errors
            result["verify_ok"] = self.verify.ok
        if self.error:
            result["error"] = self.error
        return result


async def run_vm_workload(
    portal: Portal,
    vdisks: Sequence[str],
    *,
    seconds: float,
    workload: str = "verify",  # "verify" or a bench pattern (randrw, randread, ...)
    queue_depth: int = 4,
    block_size: int = 4096,
    region_bytes: int = 64 << 20,
    config: SessionConfig | None = None,
    on_tick: Callable[[list[DiskRun]], None] | None = None,
    vm_name: str = "vm",
    stop: trio.Event | None = None,
    sessions_per_disk: int = 1,
) -> list[DiskRun]:
    """Attach every vDisk (``sessions_per_disk`` sessions each), run the workload on each
    for ``seconds`` (0: until ``stop``), detach; per-vDisk outcomes and statistics in the
    returned runs (the statistics are the first session's)."""
    stop = stop if stop is not None else trio.Event()
    runs = [DiskRun(vdisk) for vdisk in vdisks]
    async with VM(portal, name=vm_name, config=config) as vm:
        for run in runs:
            try:
                run.device = await vm.attach(run.vdisk, sessions=sessions_per_disk)
                run.sessions = vm.sessions(run.vdisk)
            except InitiatorError as error:
                run.error = f"attach failed: {error}"

        async def drive(run: DiskRun) -> None:
            assert run.device is not None
            try:
                if workload == "verify":
                    run.verify = await _verify(run, region_bytes, seconds, queue_depth, stop)
                else:
                    reports: list[dict[str, object]] = [{} for _ in run.sessions]

                    async def bench(index: int, device: BlockDevice) -> None:
                        report = await run_bench(
                            device,
                            Pattern(workload),
                            block_size=block_size,
                            queue_depth=queue_depth,
                            seconds=seconds,
                            region_bytes=region_bytes,
                            stop=stop,
                        )
                        reports[index] = report.as_dict()

                    async with trio.open_nursery() as benches:
                        for index, device in enumerate(run.sessions):
                            benches.start_soon(bench, index, device)
                    run.extra = (
                        reports[0]
                        if len(reports) == 1
                        else {
                            **reports[0],
                            "per_session": reports,
                        }
                    )
            except InitiatorError as error:
                run.error = f"{type(error).__name__}: {error}"

        async def ticker() -> None:
            assert on_tick is not None
            while True:
                on_tick(runs)
                await trio.sleep(0.5)

        async with trio.open_nursery() as nursery:
            if on_tick is not None:
                nursery.start_soon(ticker)
            async with trio.open_nursery() as workers:
                for run in runs:
                    if run.device is not None:
                        workers.start_soon(drive, run)
            nursery.cancel_scope.cancel()
        if on_tick is not None:
            on_tick(runs)
    return runs


async def _verify(
    run: DiskRun, region_bytes: int, seconds: float, queue_depth: int, stop: trio.Event
) -> VerifyReport:
    """One verifier per session, each on its slice of the region; one report for the disk."""
    assert run.device is not None
    slices = split_region(region_bytes // run.device.block_size, len(run.sessions))
    verifiers = [
        Verifier(device, region_blocks=blocks, first_block=first)
        for device, (first, blocks) in zip(run.sessions, slices, strict=True)
    ]
    reports: list[VerifyReport] = []

    async def one(verifier: Verifier) -> None:
        reports.append(await verifier.run(seconds, queue_depth=queue_depth))

    async with trio.open_nursery() as nursery:
        for verifier in verifiers:
            nursery.start_soon(_stop_when, stop, verifier.stop)
        async with trio.open_nursery() as running:
            for verifier in verifiers:
                running.start_soon(one, verifier)
        nursery.cancel_scope.cancel()
    total = reports[0]
    for report in reports[1:]:
        total.add(report)
    return total


async def _stop_when(event: trio.Event, stop: Callable[[], None]) -> None:
    await event.wait()
    stop()
