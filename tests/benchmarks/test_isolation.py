"""The isolation section: its summaries, goals and table (recorded figures), the deadline
flags it looks for, and one tiny real run (stargate and tgtd, fio, a hostile client)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.clients import FioClient, fio_measurement, fio_milliseconds
from benchmarks.hostile import HostileKind
from benchmarks.isolation import (
    VictimRun,
    merge_hostile_reports,
    run_isolation,
    stargate_deadline_args,
    summarize_kind,
    worst_of,
)
from benchmarks.machine import machine_description
from benchmarks.report import isolation_lines, judge_goals, write_reports
from benchmarks.settings import Settings
from benchmarks.targets import MiB
from tests.conftest import require_tool

GARBAGE_REPORT = {
    "kind": "garbage",
    "connections": 40,
    "drops": 40,
    "commands_sent": 10,
    "received": {"LoginResponse": 60, "Reject": 20},
    "statuses": {},
    "rejects": {"COMMAND_NOT_SUPPORTED": 12, "PROTOCOL_ERROR": 8},
    "garbage": {"undefined-opcode": {"rejected, dropped": 10}},
    "held_max": 0,
    "errors": [],
}


def runs(
    alone_p99: float,
    beside_p99: float | None,
    error: str | None = None,
    beside_max: float | None = None,
) -> list[VictimRun]:
    alone = VictimRun(None, alone_p99, alone_p99 * 2, 20000.0, 40 * MiB)
    beside = VictimRun(
        HostileKind.GARBAGE,
        beside_p99,
        max_latency_us=None if beside_p99 is None else beside_max or beside_p99 * 2,
        iops=None if error else 15000.0,
        peak_rss_bytes=45 * MiB,
        error=error,
        hostile_report=GARBAGE_REPORT,
    )
    return [alone, beside]


def isolation_section(stargate_kinds: dict[str, Any]) -> dict[str, Any]:
    tgtd_kinds = {"garbage": summarize_kind(runs(100.0, 300.0), 8 * MiB)}
    return {
        "victim": "fio 4 KiB randread QD1 on vDisk B",
        "seconds": 1.5,
        "ramp_seconds": 1.0,
        "stargate_args": ["--data-out-timeout", "1"],
        "stargate": {"kinds": stargate_kinds, **worst_of(stargate_kinds)},
        "tgtd": {"kinds": tgtd_kinds, **worst_of(tgtd_kinds)},
    }


def goal(goals: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (found,) = [entry for entry in goals if entry["goal"] == name]
    return found


P99_GOAL = "isolation: victim p99 beside hostile vs alone"
RSS_GOAL = "isolation: target RSS with a hostile session"


def test_summary_ratio_rss_and_what_the_hostile_got() -> None:
    summary = summarize_kind(runs(80.0, 120.0), 50 * MiB)
    assert summary["p99_ratio"] == 1.5
    assert summary["peak_rss_bytes"] == 50 * MiB  # VmHWM above the sampled 45 MiB
    assert summary["hostile"]["rejects"] == {"COMMAND_NOT_SUPPORTED": 12, "PROTOCOL_ERROR": 8}

    goals = judge_goals({"isolation": isolation_section({"garbage": summary})})
    assert goal(goals, P99_GOAL)["verdict"] == "PASS"
    assert goal(goals, P99_GOAL)["measured"] == 1.5
    assert goal(goals, RSS_GOAL)["verdict"] == "PASS"
    assert round(goal(goals, RSS_GOAL)["measured"], 1) == 52.4  # MB, not MiB


def test_the_worst_kind_decides_and_a_failed_victim_fails_the_goal() -> None:
    kinds = {
        "garbage": summarize_kind(runs(80.0, 120.0), None),
        "slot-hog": summarize_kind(runs(80.0, 400.0), 200 * MiB),
    }
    goals = judge_goals({"isolation": isolation_section(kinds)})
    assert goal(goals, P99_GOAL)["measured"] == 5.0
    assert goal(goals, P99_GOAL)["verdict"] == "NOT YET"
    assert goal(goals, RSS_GOAL)["verdict"] == "NOT YET"

    kinds["slot-hog"] = summarize_kind(runs(80.0, None, error="fio exited with 1"), None)
    goals = judge_goals({"isolation": isolation_section(kinds)})
    assert goal(goals, P99_GOAL)["verdict"] == "NOT YET"
    lines = isolation_lines(isolation_section(kinds))
    assert any("| stargate | slot-hog | 80 | FAILED |" in line for line in lines)
    assert "- stargate, slot-hog: the victim failed: `fio exited with 1`" in lines


def test_a_kind_not_measured_leaves_the_goals_not_measured() -> None:
    section = isolation_section({"garbage": summarize_kind(runs(80.0, 120.0), 50 * MiB)})
    section["errors"] = {"slot-hog": "hostile slot-hog: expected 'ready', got None"}
    goals = judge_goals({"isolation": section})
    assert goal(goals, P99_GOAL)["verdict"] == "not measured"
    assert goal(goals, RSS_GOAL)["verdict"] == "not measured"
    expected = (
        "- slot-hog: not measured, the hostile client failed: "
        "`hostile slot-hog: expected 'ready', got None`"
    )
    assert expected in isolation_lines(section)


def test_table_rows() -> None:
    section = isolation_section({"garbage": summarize_kind(runs(80.0, 120.0), 50 * MiB)})
    lines = isolation_lines(section)
    assert "Deadline flags given to stargate: --data-out-timeout 1." in lines[0]
    row = next(line for line in lines if line.startswith("| stargate | garbage |"))
    assert "| 80 | 120 | 1.50x | 240 | 20,000 / 15,000 | 40.0 / 50.0 |" in row
    assert "connections 40, dropped 40" in row
    assert "Reject 20 (COMMAND_NOT_SUPPORTED 12, PROTOCOL_ERROR 8)" in row
    assert any(line.startswith("| tgtd | garbage | 100 | 300 | 3.00x |") for line in lines)


def test_a_stall_hidden_below_p99_is_judged_on_the_slowest_io() -> None:
    # 100 I/Os in the run, one held 6 s by a slot hog: p99 is a fast one
    stalled = summarize_kind(runs(80.0, 120.0, beside_max=6_000_000.0), None)
    assert stalled["stalled"] and stalled["p99_ratio"] == 1.5
    assert stalled["judged_ratio"] == 75_000.0
    goals = judge_goals({"isolation": isolation_section({"slot-hog": stalled})})
    assert goal(goals, P99_GOAL)["measured"] == 75_000.0
    assert goal(goals, P99_GOAL)["verdict"] == "NOT YET"
    row = next(line for line in isolation_lines(isolation_section({"slot-hog": stalled}))
               if line.startswith("| stargate | slot-hog |"))  # fmt: skip
    assert "| 6,000,000 **stalled** |" in row


def test_merged_reports_add_counts_and_keep_maxima() -> None:
    first = {"drops": 2, "held_max": 100, "received": {"R2T": 100}, "errors": ["a"]}
    first["cpu_seconds"] = None
    second = {"drops": 3, "held_max": 128, "received": {"R2T": 128, "NopIn": 1}, "errors": []}
    second["cpu_seconds"] = 0.5
    merged = merge_hostile_reports([first, None, second])
    assert merged == {
        "cpu_seconds": 0.5,
        "drops": 5,
        "held_max": 128,
        "received": {"R2T": 228, "NopIn": 1},
        "errors": ["a"],
    }


def test_deadline_flags_only_when_the_target_has_them() -> None:
    assert stargate_deadline_args("  --queue-depth QUEUE_DEPTH\n  --nop-timeout S\n") == []
    help_text = (
        "  --data-out-timeout SECONDS  give up on a write's Data-Out\n"
        "  --pdu-deadline-ms MS        a PDU must arrive whole within this\n"
        "  --r2t-timeout S\n"
        "  --max-pdu-bytes N\n"
    )
    assert stargate_deadline_args(help_text) == [
        "--data-out-timeout",
        "1",
        "--pdu-deadline-ms",
        "1000",
        "--r2t-timeout",
        "1",
    ]
    # this tree's stargate: whatever it has is accepted by `stargate target`
    args = stargate_deadline_args()
    assert len(args) % 2 == 0


def test_tiny_isolation_run(tmp_path: Path) -> None:
    require_tool("tgtd")
    settings = Settings(runs=1, seconds=1.0, scale_disk_size=16 * MiB, quick=True)
    lines: list[str] = []
    section = run_isolation(settings, FioClient(), lines.append, kinds=[HostileKind.GARBAGE])

    for target in ("stargate", "tgtd"):
        figures = section[target]["kinds"]["garbage"]
        assert figures["alone_p99_us"] is not None and not figures["alone_errors"]
        assert figures["peak_rss_bytes"] > 0
        assert figures["hostile"]["connections"] >= 1
        (alone, beside) = section["runs"][target]["garbage"]
        assert alone["hostile"] is None and alone["hostile_report"] is None
        assert beside["hostile"] == "garbage" and beside["hostile_report"]["kind"] == "garbage"
        # it attacked during the victim's counted second, from after the ramp to the end
        assert 0.3 <= beside["hostile_report"]["seconds"] <= 1.0
    assert section["stargate"]["kinds"]["garbage"]["hostile"]["drops"] >= 1
    assert len(lines) == 4

    results = {
        "machine": machine_description(),
        "settings": {**settings.__dict__},
        "sections": {"isolation": section},
        "errors": {},
    }
    write_reports(results, tmp_path)
    markdown = (tmp_path / "results.md").read_text()
    assert "## Isolation (hostile neighbour)" in markdown
    assert "| stargate | garbage |" in markdown and "| tgtd | garbage |" in markdown
    written = json.loads((tmp_path / "results.json").read_text())
    verdicts = {entry["goal"]: entry["verdict"] for entry in written["goals"]}
    assert verdicts[RSS_GOAL] in ("PASS", "NOT YET")


def test_fio_times_keep_their_fraction() -> None:
    # fio reads "1.5s" as 1 s and "0.5s" as no limit at all
    assert fio_milliseconds(1.5) == "1500ms"
    assert fio_milliseconds(0.5) == "500ms"
    assert fio_milliseconds(0.0001) == "1ms"


def test_fio_slowest_io_of_either_direction() -> None:
    def direction(ios: int, max_ns: float) -> dict[str, Any]:
        percentile = {"99.000000": 1_000_000.0}
        return {"total_ios": ios, "io_bytes": ios * 4096,
                "clat_ns": {"percentile": percentile, "max": max_ns}}  # fmt: skip

    report = {"job_runtime": 1000, "read": direction(10, 7e9), "write": direction(0, 9e9)}
    assert fio_measurement(report).max_latency_us == 7e6  # no writes: their max is not one
