"""A VM's workload over all its vDisks at once: verify (data-loss detection) or bench I/O
on each vDisk, through one portal, with per-vDisk live statistics. The cluster demo's
"guest"."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from iscsicore.portal import Portal

from .bench import Pattern, run_bench
from .device import BlockDevice
from .errors import InitiatorError
from .session import SessionConfig
from .verify import Verifier, VerifyReport
from .vm import VM


@dataclass(slots=True)
class DiskRun:
    """What one vDisk did: the session's statistics plus the verify outcome."""

    vdisk: str
    device: BlockDevice | None = None
    verify: VerifyReport | None = None
    error: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    def snapshot(self) -> dict[str, object]:
        result: dict[str, object] = {"vdisk": self.vdisk}
        if self.device is not None:
            result.update(self.device.stats.snapshot())
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
) -> list[DiskRun]:
    """Attach every vDisk, run the workload on each for ``seconds`` (0: until ``stop``),
    detach; per-vDisk outcomes and statistics in the returned runs."""
    stop = stop if stop is not None else trio.Event()
    runs = [DiskRun(vdisk) for vdisk in vdisks]
    async with VM(portal, name=vm_name, config=config) as vm:
        for run in runs:
            try:
                run.device = await vm.attach(run.vdisk)
            except InitiatorError as error:
                run.error = f"attach failed: {error}"

        async def drive(run: DiskRun) -> None:
            assert run.device is not None
            try:
                if workload == "verify":
                    region = region_bytes // run.device.block_size
                    verifier = Verifier(run.device, region_blocks=region)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_stop_when, stop, verifier.stop)
                        run.verify = await verifier.run(seconds, queue_depth=queue_depth)
                        nursery.cancel_scope.cancel()
                else:
                    report = await run_bench(
                        run.device,
                        Pattern(workload),
                        block_size=block_size,
                        queue_depth=queue_depth,
                        seconds=seconds,
                        region_bytes=region_bytes,
                        stop=stop,
                    )
                    run.extra = report.as_dict()
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


async def _stop_when(event: trio.Event, stop: Callable[[], None]) -> None:
    await event.wait()
    stop()
