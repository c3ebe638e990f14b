"""The A/B benchmark's results as ``ab.json`` and ``ab.md``: per workload the candidate /
baseline ratio of every pair (min, median, max), each arm's median figures, every run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.report import markdown_table, number

ARMS = ("baseline", "candidate")


def spread_text(spread: dict[str, float] | None) -> str:
    if spread is None:
        return "-"
    low, high = number(spread["minimum"], 3), number(spread["maximum"], 3)
    return f"{number(spread['median'], 3)}x ({low}-{high})"


def arm_line(name: str, arm: dict[str, Any]) -> str:
    imports = ", ".join(f"{package} from `{path}`" for package, path in arm["imports"].items())
    return f"- {name}: `{arm['label']}` = {arm['commit']}; its stargate imports {imports}"


def header_lines(results: dict[str, Any]) -> list[str]:
    machine, settings = results["machine"], results["settings"]
    load_start = ", ".join(f"{x:.2f}" for x in machine.get("load_average_at_start", []))
    load_end = ", ".join(f"{x:.2f}" for x in machine.get("load_average_at_end", []))
    return [
        f"- date: {machine['date']}; runner at commit {machine.get('git_commit', '?')}",
        f"- machine: {machine['nproc']} CPUs ({machine['cpu_model']}), kernel "
        f"{machine['kernel']}, Python {machine['python']}",
        f"- load average (1, 5, 15 min) at start: {load_start}; at end: {load_end}",
        arm_line("baseline", results["arms"]["baseline"]),
        arm_line("candidate", results["arms"]["candidate"]),
        f"- client: {results['client_note']}; niceness {settings.get('nice', 0)}",
        f"- pairs per workload: {settings['runs']}, {settings['seconds']} s per run right "
        f"after a {settings['warmup_seconds']} s warm-up; order {settings['order']} "
        "(B: baseline, C: candidate); both targets started afresh for each pair, side by "
        "side, the client measuring one at a time",
    ]


def summary_row(workload: dict[str, Any], tolerance: float) -> list[str]:
    medians, ratios = workload["median"], workload["ratio"]
    within = workload["within_tolerance"]
    verdict = "-" if within is None else "yes" if within else "**no**"
    pairs = len(workload["runs"])
    return [
        workload["label"],
        number(medians["baseline"]["iops"], 0),
        number(medians["candidate"]["iops"], 0),
        spread_text(ratios["iops"]),
        f"{verdict} ({workload['pairs_outside_tolerance']} of {pairs} pairs off by > "
        f"{tolerance:.0%})",
        f"{number(medians['baseline']['target_cpu_us_per_io'], 1)} / "
        f"{number(medians['candidate']['target_cpu_us_per_io'], 1)}",
        spread_text(ratios["target_cpu_us_per_io"]),
    ]


def run_rows(workload: dict[str, Any]) -> list[list[str]]:
    rows = []
    for index, run in enumerate(workload["runs"], start=1):
        figures = [run[arm] or {} for arm in ARMS]
        iops = [figure.get("iops") for figure in figures]
        cpu = [figure.get("target_cpu_us_per_io") for figure in figures]
        pair_ratio = iops[1] / iops[0] if iops[0] and iops[1] is not None else None
        rows.append(
            [
                workload["name"],
                str(index),
                " ".join(arm[0].upper() for arm in run["order"]),
                number(run["load_average"]),
                *(number(value, 0) for value in iops),
                number(pair_ratio, 3),
                *(number(value, 1) for value in cpu),
            ]
        )
    return rows


def within_tolerance(results: dict[str, Any]) -> bool | None:
    """Every workload's median IOPS ratio within tolerance; None if one was not measured."""
    verdicts = [workload["within_tolerance"] for workload in results["workloads"]]
    if results["errors"] or not verdicts or None in verdicts:
        return None
    return all(verdicts)


def render_ab_markdown(results: dict[str, Any]) -> str:
    tolerance = results["settings"]["tolerance"]
    lines = ["# stargate A/B: candidate against baseline", "", *header_lines(results), ""]
    header = ["workload", "baseline IOPS", "candidate IOPS", "IOPS ratio, median (min-max)",
              f"within {tolerance:.0%}", "target CPU µs/IO baseline / candidate",
              "CPU/IO ratio, median (min-max)"]  # fmt: skip
    lines += markdown_table(header, [summary_row(w, tolerance) for w in results["workloads"]])
    overall = within_tolerance(results)
    verdict = "not measured" if overall is None else "yes" if overall else "**no**"
    lines += [
        "",
        f"Both workloads' median IOPS ratio within {tolerance:.0%} of 1: {verdict}.",
        "",
        "Ratios are candidate / baseline of each pair (the two runs measured one after the "
        "other); IOPS and CPU figures are each arm's median over its runs. CPU per I/O depends "
        "less than IOPS on the share of the cores the target got, except at QD 1, where the "
        "reader hub's busy polling counts as target CPU.",
        "",
        "## Runs",
        "",
        "Load: the machine's 1-minute load average when the pair started.",
        "",
    ]
    header = ["workload", "run", "order", "load", "baseline IOPS", "candidate IOPS", "ratio",
              "baseline CPU µs/IO", "candidate CPU µs/IO"]  # fmt: skip
    rows = [row for workload in results["workloads"] for row in run_rows(workload)]
    lines += markdown_table(header, rows)
    errors = [f"- {w['name']}: `{e[:300]}`" for w in results["workloads"] for e in w["errors"]]
    errors += [f"- {name}: `{error[:300]}`" for name, error in results["errors"].items()]
    if errors:
        lines += ["", "## Errors", "", *errors]
    return "\n".join(lines) + "\n"


def write_ab_reports(results: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "ab.json"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    markdown_path = out_dir / "ab.md"
    markdown_path.write_text(render_ab_markdown(results))
    return [json_path, markdown_path]
