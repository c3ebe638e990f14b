"""Many vDisks at once through one target, one connection each, and fairness between them.

Scale: N vDisks (1, 8, 32, 64) driven at once by one fio with N libiscsi jobs; every step
keeps the same total of I/Os outstanding (64: QD 64 on one vDisk, QD 1 on each of 64), so
the aggregate IOPS shows what many connections cost against one. Fairness: the p99 latency
of a QD 1 vDisk while another vDisk runs at QD 128, against the QD 1 vDisk alone.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks.clients import ClientError, FioClient, FioJob
from benchmarks.cluster import BenchCluster, ClusterError
from benchmarks.cpu import ChildrenCpuMeter, CpuMeter
from benchmarks.settings import Settings
from benchmarks.standard import alternating, median_or_none, ratio
from benchmarks.targets import BenchTarget, MiB, StargateServer, TargetKind, TgtdServer
from benchmarks.workloads import KiB, Measurement, Pattern, Workload

Log = Callable[[str], None]
FAIRNESS_BULLY_QUEUE_DEPTH = 128
CLUSTER_NODES = 3


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def scale_workload(disk_count: int, total_queue_depth: int) -> Workload:
    depth = max(1, total_queue_depth // disk_count)
    return Workload(f"randread-4k-qd{depth}", Pattern.RANDREAD, 4 * KiB, depth)


def measure_aggregate(
    fio: FioClient, target: BenchTarget, disk_count: int, workload: Workload, seconds: float
) -> Measurement:
    meter = CpuMeter(target.pid)
    client_meter = ChildrenCpuMeter()
    meter.start()
    client_meter.start()
    urls = [target.url(disk) for disk in range(disk_count)]
    measured = fio.measure_disks(urls, workload, seconds)
    return measured.with_target_cpu(meter.stop()).with_client_cpu(client_meter.stop())


def scale_steps(
    settings: Settings, fio: FioClient, targets: Sequence[BenchTarget], log: Log
) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = []
    for disk_count in settings.scale_counts:
        workload = scale_workload(disk_count, settings.scale_total_queue_depth)
        runs: dict[str, list[Measurement]] = {target.kind.value: [] for target in targets}
        errors: list[str] = []
        for run in range(settings.runs):
            for target in alternating(targets, run):
                try:
                    measured = measure_aggregate(
                        fio, target, disk_count, workload, settings.seconds
                    )
                except ClientError as error:
                    errors.append(f"{target.kind}: {error}"[:2000])
                    log(f"  scale {disk_count} {target.kind}: FAILED {error}")
                    continue
                runs[target.kind.value].append(measured)
                log(
                    f"  scale {disk_count:3} vDisks QD{workload.queue_depth:<3} {target.kind:8} "
                    f"{measured.iops:9.0f} IOPS p99 {measured.p99_latency_us or 0:8.0f} us, "
                    f"CPU/IO target {measured.target_cpu_us_per_io or 0:.1f} us, "
                    f"fio {measured.client_cpu_us_per_io or 0:.1f} us"
                )
        steps.append(
            {
                "disks": disk_count,
                "queue_depth_per_disk": workload.queue_depth,
                "runs": {kind: [m.as_dict() for m in ms] for kind, ms in runs.items()},
                "median": {
                    kind: {
                        "iops": median_or_none([m.iops for m in ms]),
                        "p99_latency_us": median_or_none([m.p99_latency_us for m in ms]),
                        "target_cpu_us_per_io": median_or_none(
                            [m.target_cpu_us_per_io for m in ms]
                        ),
                        "client_cpu_us_per_io": median_or_none(
                            [m.client_cpu_us_per_io for m in ms]
                        ),
                    }
                    for kind, ms in runs.items()
                },
                "errors": errors,
            }
        )
    return steps


def with_relative_figures(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each step's aggregate IOPS against the one-vDisk step of the same target."""
    if not steps:
        return steps
    first = steps[0]["median"]
    for step in steps:
        step["iops_vs_one_connection"] = {
            kind: ratio(figures["iops"], first.get(kind, {}).get("iops"))
            for kind, figures in step["median"].items()
        }
        stargate = step["median"].get(TargetKind.STARGATE.value, {})
        tgtd = step["median"].get(TargetKind.TGTD.value, {})
        step["stargate_vs_tgtd_iops"] = ratio(stargate.get("iops"), tgtd.get("iops"))
    return steps


def cluster_steps(settings: Settings, fio: FioClient, log: Log) -> list[dict[str, Any]]:
    """The same steps through a 3-CVM cluster, the vDisks spread over its stargates."""
    disks = max(settings.scale_counts)
    steps: list[dict[str, Any]] = []
    with BenchCluster(nodes=CLUSTER_NODES, redirectors=False) as cluster:
        size_mib = settings.scale_disk_size // MiB
        created = cluster.create_vm("scalevm", node=1, disks=disks, size=f"{size_mib}M")
        urls = cluster.direct_urls(created)
        for disk_count in settings.scale_counts:
            workload = scale_workload(disk_count, settings.scale_total_queue_depth)
            measurements: list[Measurement] = []
            errors: list[str] = []
            for _run in range(settings.runs):
                try:
                    measured = fio.measure_disks(urls[:disk_count], workload, settings.seconds)
                    measurements.append(measured)
                except ClientError as error:
                    errors.append(str(error)[:2000])
                    continue
                log(
                    f"  cluster {disk_count:3} vDisks QD{workload.queue_depth:<3} "
                    f"{measurements[-1].iops:9.0f} IOPS "
                    f"p99 {measurements[-1].p99_latency_us or 0:8.0f} us"
                )
            steps.append(
                {
                    "disks": disk_count,
                    "queue_depth_per_disk": workload.queue_depth,
                    "iops": median_or_none([m.iops for m in measurements]),
                    "p99_latency_us": median_or_none([m.p99_latency_us for m in measurements]),
                    "errors": errors,
                }
            )
    return steps


def run_scale(settings: Settings, fio: FioClient, log: Log = _stderr) -> dict[str, Any]:
    disks = max(settings.scale_counts)
    with (
        TgtdServer(disks, settings.scale_disk_size) as tgtd,
        StargateServer(disks, settings.scale_disk_size) as stargate,
    ):
        steps = scale_steps(settings, fio, [stargate, tgtd], log)
    results: dict[str, Any] = {
        "total_queue_depth": settings.scale_total_queue_depth,
        "single_stargate": with_relative_figures(steps),
    }
    try:
        results["cluster"] = cluster_steps(settings, fio, log)
    except ClusterError as error:
        results["cluster_error"] = str(error)[:2000]
        log(f"  cluster scale: FAILED {error}")
    return results


# --- fairness --------------------------------------------------------------------------------

VICTIM = Workload("randread-4k-qd1", Pattern.RANDREAD, 4 * KiB, 1)
BULLY = Workload("randread-4k-qd128", Pattern.RANDREAD, 4 * KiB, FAIRNESS_BULLY_QUEUE_DEPTH)


def fairness_once(fio: FioClient, target: BenchTarget, seconds: float) -> tuple[float, float]:
    """p99 of the QD 1 vDisk alone, then beside the QD 128 one (microseconds)."""
    alone = fio.run_jobs([FioJob("victim", target.url(0), VICTIM)], seconds)["victim"]
    crowded = fio.run_jobs(
        [FioJob("victim", target.url(0), VICTIM), FioJob("bully", target.url(1), BULLY)],
        seconds,
    )["victim"]
    if alone.p99_latency_us is None or crowded.p99_latency_us is None:
        raise ClientError("fio reported no p99 latency")
    return alone.p99_latency_us, crowded.p99_latency_us


def run_fairness(settings: Settings, fio: FioClient, log: Log = _stderr) -> dict[str, Any]:
    results: dict[str, dict[str, list[float]]] = {
        kind.value: {"alone_p99_us": [], "beside_qd128_p99_us": []} for kind in TargetKind
    }
    with (
        TgtdServer(2, settings.scale_disk_size) as tgtd,
        StargateServer(2, settings.scale_disk_size) as stargate,
    ):
        targets: list[BenchTarget] = [stargate, tgtd]
        for run in range(settings.runs):
            for target in alternating(targets, run):
                alone, crowded = fairness_once(fio, target, settings.seconds)
                results[target.kind.value]["alone_p99_us"].append(alone)
                results[target.kind.value]["beside_qd128_p99_us"].append(crowded)
                log(f"  fairness {target.kind:8} p99 alone {alone:8.0f} us, beside {crowded:8.0f}")
    summary: dict[str, Any] = {"runs": results}
    for kind, figures in results.items():
        alone_median = median_or_none(list(figures["alone_p99_us"]))
        crowded_median = median_or_none(list(figures["beside_qd128_p99_us"]))
        summary[kind] = {
            "alone_p99_us": alone_median,
            "beside_qd128_p99_us": crowded_median,
            "p99_ratio": ratio(crowded_median, alone_median),
        }
    return summary
