"""`stargate top`: rates from consecutive /stats.json snapshots, and the rendered view."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from cluster.provision import create_vm
from cluster.supervisor import Supervisor
from cluster.top import TopModel, render, vdisk_rates
from control.client import PageAnswer
from stargate.stats import LATENCY_BUCKET_BOUNDS_US
from topology.spec import ClusterSpec

BUCKETS = len(LATENCY_BUCKET_BOUNDS_US) + 1


def counters(ios: int, nbytes: int, latency_counts: list[int], mean_us: float) -> dict[str, Any]:
    counts = latency_counts + [0] * (BUCKETS - len(latency_counts))
    return {
        "vdisk_id": "vm-0",
        "reads": ios,
        "writes": ios,
        "other_commands": 0,
        "bytes_read": nbytes,
        "bytes_written": 2 * nbytes,
        "connections": 1,
        "queue_depth": 3,
        "state": "owned",
        "latency": {"counts": counts, "mean_us": mean_us},
    }


def test_rates_are_differences_over_the_interval() -> None:
    before = counters(100, 1_000_000, [100, 100], 50.0)  # 200 samples, 10 ms total
    after = counters(300, 3_000_000, [100, 500], 40.0)  # 600 samples, 24 ms total
    rates = vdisk_rates(1, before, after, 2.0)
    assert rates.iops == (600 - 200) / 2
    assert rates.read_mbps == 1.0 and rates.write_mbps == 2.0
    assert rates.mean_latency_us == (24000 - 10000) / 400
    assert rates.p99_latency_us == LATENCY_BUCKET_BOUNDS_US[1]  # all new samples in bucket 1
    assert (rates.connections, rates.queue_depth, rates.state) == (1, 3, "owned")


def test_restarted_counters_count_from_zero() -> None:
    before = counters(1000, 9_000_000, [2000], 10.0)
    after = counters(10, 1_000_000, [20], 10.0)  # moved away and back: counters restarted
    rates = vdisk_rates(2, before, after, 1.0)
    assert rates.iops == 20 and rates.read_mbps == 1.0
    assert rates.mean_latency_us == 10.0


def test_render_shows_each_cvm_and_the_serving_node(tmp_path: Path) -> None:
    spec = ClusterSpec.create(tmp_path, 2)
    create_vm(tmp_path, "vm", home_node=1, disks=1, size="1M")
    model = TopModel(spec)
    document = {
        "vdisks": {"vm-0": counters(5, 4096, [10], 30.0)},
        "queue": {"in_flight": 2, "depth": 128, "connections": 4},
    }
    model.update([PageAnswer(1, None, "refused"), PageAnswer(2, document)], now=10.0)
    later = {**document, "vdisks": {"vm-0": counters(105, 8192, [210], 30.0)}}
    model.update([PageAnswer(1, None, "refused"), PageAnswer(2, later)], now=11.0)
    console = Console(record=True, width=160)
    console.print(render(model, Supervisor(tmp_path)))
    text = console.export_text()
    assert "no answer" in text  # node 1
    assert "2/128" in text  # node 2's queue
    row = next(line for line in text.splitlines() if "vm-0" in line)
    assert "200" in row  # IOPS: 200 I/Os in 1 s
    assert " 2 " in row  # served by node 2 (home is 1)


def test_the_first_frame_shows_rates_since_the_stargate_started() -> None:
    spec = ClusterSpec.build(1)
    model = TopModel(spec)
    document = {"uptime_s": 10.0, "vdisks": {"a": {"vdisk_id": "a", "reads": 500}}}
    model.update([PageAnswer(1, document)], now=100.0)
    (rates,) = model.rates()
    assert rates.iops == 50.0  # not 500 in a microsecond
