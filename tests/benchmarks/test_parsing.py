"""The runner's parsers, ratios and goal verdicts on recorded tool output (no processes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.clients import (
    ClientError,
    ClientKind,
    fio_measurement,
    initiator_measurement,
    parse_fio_report,
    parse_qemu_img_bench_seconds,
    scattered_stride,
)
from benchmarks.cpu import ChildrenCpuMeter, parse_stat_cpu_ticks
from benchmarks.failover import slowest_qemu_io_command_seconds
from benchmarks.profile import summarize_collapsed, without_line_numbers
from benchmarks.report import goal_rows, judge_goals, scale_lines
from benchmarks.runner import merge_previous
from benchmarks.standard import Comparison, alternating, median_or_none, ratio
from benchmarks.targets import TargetKind
from benchmarks.workloads import STANDARD_WORKLOADS, Measurement

FIO_NOTE = (
    "note: both iodepth >= 1 and synchronous I/O engine are selected, "
    "queue depth will be capped at 1\n"
)


def fio_job(read_ios: int, write_ios: int, runtime_ms: int) -> dict[str, Any]:
    def direction(ios: int, p99_ns: float) -> dict[str, Any]:
        return {
            "total_ios": ios,
            "io_bytes": ios * 4096,
            "clat_ns": {"percentile": {"99.000000": p99_ns}},
        }

    return {
        "jobname": "job",
        "job_runtime": runtime_ms,
        "read": direction(read_ios, 2_000_000.0),
        "write": direction(write_ios, 5_000_000.0),
    }


def test_stat_line_with_spaces_and_parentheses_in_the_name() -> None:
    fields_after_name = ["S"] + ["0"] * 10 + ["120", "30"] + ["0"] * 30
    line = "4242 (odd) name (x)) " + " ".join(fields_after_name)
    assert parse_stat_cpu_ticks(line) == 150


def test_fio_report_after_the_engine_note() -> None:
    report = parse_fio_report(FIO_NOTE + '{"jobs": [{"jobname": "job"}]}')
    assert report["jobs"][0]["jobname"] == "job"
    with pytest.raises(ClientError):
        parse_fio_report(FIO_NOTE)


def test_fio_measurement_adds_directions_and_takes_the_worst_p99() -> None:
    measured = fio_measurement(fio_job(700, 300, 2000))
    assert measured.ios == 1000
    assert measured.bytes == 1000 * 4096
    assert measured.iops == pytest.approx(500.0)
    assert measured.p99_latency_us == pytest.approx(5000.0)


def test_fio_group_runtime_is_shared_by_its_jobs() -> None:
    grouped = fio_measurement(fio_job(8000, 0, 8 * 2000), runtime_divisor=8)
    assert grouped.seconds == pytest.approx(2.0)
    assert grouped.iops == pytest.approx(4000.0)
    assert grouped.p99_latency_us == pytest.approx(2000.0)  # no writes: their p99 is ignored


def test_qemu_img_bench_output() -> None:
    output = (
        "Sending 20000 read requests, 4096 bytes each, 32 in parallel "
        "(starting at offset 0, step size 268439552)\nRun completed in 2.945 seconds.\n"
    )
    assert parse_qemu_img_bench_seconds(output) == pytest.approx(2.945)
    with pytest.raises(ClientError):
        parse_qemu_img_bench_seconds("qemu-img: Could not open")


@pytest.mark.parametrize("disk_blocks", [64, 1024, 65536])
def test_scattered_stride_visits_every_block_once_per_pass(disk_blocks: int) -> None:
    block_size = 4096
    stride_blocks = scattered_stride(disk_blocks * block_size, block_size) // block_size
    visited = {(request * stride_blocks) % disk_blocks for request in range(disk_blocks)}
    assert len(visited) == disk_blocks


def test_initiator_report() -> None:
    report = {
        "ios": 300,
        "block_size": 4096,
        "seconds": 1.5,
        "latency_us": {"p99": 812.5},
        "longest_pause_s": 0.25,
    }
    measured = initiator_measurement(report)
    assert measured.iops == pytest.approx(200.0)
    assert measured.bytes == 300 * 4096
    assert measured.p99_latency_us == 812.5
    assert measured.longest_pause_s == 0.25


def test_qemu_io_pause_is_the_slowest_read() -> None:
    output = (
        "read 4096/4096 bytes at offset 0\n"
        "4 KiB, 1 ops; 00.00 sec (23.917 MiB/sec and 5000.0000 ops/sec)\n"
        "read 4096/4096 bytes at offset 0\n"
        "4 KiB, 1 ops; 00.25 sec (0.016 MiB/sec and 4.0000 ops/sec)\n"
    )
    assert slowest_qemu_io_command_seconds(output) == pytest.approx(0.25)


def test_cpu_per_io_and_ratios() -> None:
    measured = Measurement(ios=2000, bytes=2000 * 4096, seconds=1.0).with_target_cpu(0.05)
    assert measured.target_cpu_us_per_io == pytest.approx(25.0)
    assert Measurement(0, 0, 1.0).with_target_cpu(0.1).target_cpu_us_per_io is None
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None and ratio(1.0, 0.0) is None
    assert median_or_none([3.0, None, 1.0, 2.0]) == 2.0
    assert median_or_none([None]) is None


def test_client_cpu_per_io_is_what_the_client_process_spent() -> None:
    measured = Measurement(ios=1000, bytes=0, seconds=1.0).with_client_cpu(0.02)
    assert measured.client_cpu_us_per_io == pytest.approx(20.0)
    assert measured.as_dict()["client_cpu_us_per_io"] == pytest.approx(20.0)
    meter = ChildrenCpuMeter()
    meter.start()
    busy = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    subprocess.run([sys.executable, "-c", busy], check=True, timeout=60)
    assert meter.stop() >= 0.25  # the child's CPU, counted once it was waited for


def test_scale_table_shows_target_and_client_cpu_per_io() -> None:
    def step(disks: int, iops: float, cpu: tuple[float, float] | None) -> dict[str, Any]:
        figures = {"iops": iops, "p99_latency_us": 100.0}
        if cpu is not None:
            figures |= {"target_cpu_us_per_io": cpu[0], "client_cpu_us_per_io": cpu[1]}
        return {
            "disks": disks,
            "queue_depth_per_disk": 64 // disks,
            "median": {"stargate": figures, "tgtd": {"iops": iops / 2, "p99_latency_us": 200.0}},
            "iops_vs_one_connection": {"stargate": 1.0, "tgtd": 1.0},
            "stargate_vs_tgtd_iops": 2.0,
        }

    scale = {"total_queue_depth": 64, "single_stargate": [step(1, 90e3, (10.4, 8.0)),
                                                          step(64, 45e3, None)]}  # fmt: skip
    lines = scale_lines(scale)
    assert "| 1 | 64 | 90,000 | 1.00x | 100 | 10.4 / 8.0 | 45,000 |" in "\n".join(lines)
    assert "| - / - |" in lines[-1]  # results from before the client was measured


def test_targets_alternate() -> None:
    assert alternating(["a", "b"], 0) == ["a", "b"]
    assert alternating(["a", "b"], 1) == ["b", "a"]


def test_goal_verdicts() -> None:
    def comparison(workload: str, iops: float, cpu: float = 1.0) -> dict[str, Any]:
        return {
            "client": "fio",
            "workload": workload,
            "ratio": {"iops": iops, "mb_per_s": iops, "target_cpu_us_per_io": cpu},
        }

    sections = {
        "standard": [
            comparison("randread-4k-qd32", 1.6, cpu=0.4),
            comparison("randwrite-4k-qd32", 1.2),
        ],
        "memory": {"rss_bytes": {"stargate_1000_vdisks": 151e6}},
    }
    verdicts = {goal["goal"]: goal["verdict"] for goal in judge_goals(sections)}
    assert verdicts["4 KiB randread QD32 IOPS vs tgtd"] == "PASS"
    assert verdicts["4 KiB randwrite QD32 IOPS vs tgtd"] == "NOT YET"
    assert verdicts["target CPU per 4 KiB I/O vs tgtd (randread QD32)"] == "PASS"
    assert verdicts["stargate RSS with 1000 vDisks"] == "NOT YET"
    assert verdicts["fairness: QD1 p99 beside QD128 vs alone"] == "not measured"


def test_collapsed_stacks_summed_per_function() -> None:
    collapsed = (
        "main (a.py:1);serve (b.py:2);read (c.py:3) 6\n"
        "main (a.py:1);serve (b.py:2) 3\n"
        "main (a.py:1);serve (b.py:2);serve (b.py:2) 1\n"
        "garbage\n"
    )
    samples, functions = summarize_collapsed(collapsed)
    by_name = {entry.function: entry for entry in functions}
    assert samples == 10
    assert by_name["read (c.py:3)"].self_samples == 6
    assert by_name["serve (b.py:2)"].self_samples == 4
    assert by_name["serve (b.py:2)"].total_samples == 10  # recursion counted once
    assert by_name["main (a.py:1)"].self_samples == 0


def test_profile_lines_fold_into_functions() -> None:
    collapsed = "main (a.py:1);read (c.py:3) 2\nmain (a.py:1);read (c.py:9) 3\n"
    samples, functions = summarize_collapsed(without_line_numbers(collapsed))
    by_name = {entry.function: entry for entry in functions}
    assert samples == 5
    assert by_name["read (c.py)"].self_samples == 5


def test_merge_keeps_the_other_sections(tmp_path: Path) -> None:
    previous = {
        "machine": {"date": "2026-11-24 00:44 UTC"},
        "sections": {"standard": [], "memory": {"rss_bytes": {}}},
        "errors": {"failover": "boom"},
    }
    path = tmp_path / "results.json"
    path.write_text(json.dumps(previous))
    results: dict[str, Any] = {"sections": {}, "errors": {}, "section_dates": {}}
    merge_previous(results, path)
    assert set(results["sections"]) == {"standard", "memory"}
    assert results["section_dates"]["memory"] == "2026-11-24 00:44 UTC"
    assert results["errors"] == {"failover": "boom"}
    merge_previous(results, tmp_path / "missing.json")  # nothing to merge: no error


def test_a_goal_met_on_the_median_but_not_by_every_run_pair_is_unsteady() -> None:
    def run(iops: float, cpu_seconds: float) -> Measurement:
        return Measurement(ios=int(iops), bytes=int(iops) * 4096, seconds=1.0).with_target_cpu(
            cpu_seconds
        )

    comparison = Comparison(ClientKind.FIO, STANDARD_WORKLOADS[0])
    # Three pairs: stargate/tgtd IOPS 2.0x, 1.6x and, in one unlucky pair, 1.2x.
    comparison.runs[TargetKind.STARGATE] = [run(20e3, 0.2), run(16e3, 0.2), run(12e3, 0.2)]
    comparison.runs[TargetKind.TGTD] = [run(10e3, 0.5), run(10e3, 0.5), run(10e3, 0.5)]
    document = comparison.as_dict()
    spread = document["ratio_spread"]["iops"]
    assert (spread["min"], spread["median"], spread["max"], spread["pairs"]) == (1.2, 1.6, 2.0, 3)
    assert document["ratio"]["iops"] == pytest.approx(1.6)

    sections = {"standard": [document | {"workload": "randread-4k-qd32", "client": "fio"}]}
    judged = {g["goal"]: g for g in judge_goals(sections)}
    qd32 = judged["4 KiB randread QD32 IOPS vs tgtd"]
    assert qd32["verdict"] == "UNSTEADY" and qd32["spread"] == [1.2, 2.0]
    # CPU per I/O: 10, 12.5 and 16.7 µs against 50: every pair within the <= 0.5x goal.
    cpu = judged["target CPU per 4 KiB I/O vs tgtd (randread QD32)"]
    assert cpu["verdict"] == "PASS" and cpu["spread"] == pytest.approx([0.2, 1 / 3])
    assert "1.60x (1.20-2.00)" in goal_rows([qd32])[0][2]
