"""Results as JSON, a markdown page (goals first, then every figure) and PNG plots."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

#: the client whose figures the goals are judged on (the other clients are shown beside it)
GOAL_CLIENT = "fio"
MB = 1e6


class Verdict(StrEnum):
    PASS = "PASS"
    # The median meets the goal but some run pair does not: not to be relied on.
    UNSTEADY = "UNSTEADY"
    NOT_YET = "NOT YET"
    NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class Goal:
    name: str
    threshold: float
    higher_is_better: bool
    unit: str  # "x" for ratios, "s", "MB"
    extract: Callable[[dict[str, Any]], float | None]
    # (min, max) over the run pairs of a ratio, when the figure has pairs.
    spread: Callable[[dict[str, Any]], tuple[float, float] | None] = lambda sections: None

    @property
    def target_text(self) -> str:
        comparison = ">=" if self.higher_is_better else "<=" if self.unit == "x" else "<"
        unit = self.unit if self.unit == "x" else f" {self.unit}"
        return f"{comparison} {self.threshold:g}{unit}"

    def met_by(self, measured: float) -> bool:
        if self.higher_is_better:
            return measured >= self.threshold
        return measured <= self.threshold if self.unit == "x" else measured < self.threshold

    def judge(self, sections: dict[str, Any]) -> dict[str, Any]:
        try:
            measured = self.extract(sections)
        except (KeyError, IndexError, TypeError, ValueError):
            measured = None
        try:
            spread = self.spread(sections)
        except (KeyError, IndexError, TypeError, ValueError):
            spread = None
        if measured is None:
            verdict = Verdict.NOT_MEASURED
        elif not self.met_by(measured):
            verdict = Verdict.NOT_YET
        elif spread is not None and not self.met_by(self.worst(spread)):
            verdict = Verdict.UNSTEADY
        else:
            verdict = Verdict.PASS
        return {
            "goal": self.name,
            "target": self.target_text,
            "measured": measured,
            "spread": None if spread is None else list(spread),
            "unit": self.unit,
            "verdict": verdict.value,
        }

    def worst(self, spread: tuple[float, float]) -> float:
        low, high = spread
        return low if self.higher_is_better else high


def _comparison(sections: dict[str, Any], workload: str, client: str) -> dict[str, Any] | None:
    for comparison in sections["standard"]:
        if comparison["workload"] == workload and comparison["client"] == client:
            found: dict[str, Any] = comparison
            return found
    return None


def standard_ratio(workload: str, figure: str, client: str = GOAL_CLIENT) -> Callable[..., Any]:
    def extract(sections: dict[str, Any]) -> float | None:
        comparison = _comparison(sections, workload, client)
        value: float | None = None if comparison is None else comparison["ratio"][figure]
        return value

    return extract


def standard_spread(workload: str, figure: str, client: str = GOAL_CLIENT) -> Callable[..., Any]:
    """(min, max) of the per-pair ratios; None for results measured before pairs were kept."""

    def spread(sections: dict[str, Any]) -> tuple[float, float] | None:
        comparison = _comparison(sections, workload, client)
        if comparison is None:
            return None
        pairs = comparison.get("ratio_spread", {}).get(figure)
        return None if pairs is None else (pairs["min"], pairs["max"])

    return spread


def scale_ratio(sections: dict[str, Any]) -> float | None:
    steps = sections["scale"]["single_stargate"]
    largest = max(steps, key=lambda step: step["disks"])
    if largest["disks"] == 1:
        return None
    value: float | None = largest["iops_vs_one_connection"]["stargate"]
    return value


def fairness_ratio(sections: dict[str, Any]) -> float | None:
    value: float | None = sections["fairness"]["stargate"]["p99_ratio"]
    return value


def isolation_p99_ratio(sections: dict[str, Any]) -> float | None:
    """The worst kind's ratio; infinite when the victim failed beside a hostile session;
    None when a kind could not be measured (its hostile client failed)."""
    if sections["isolation"].get("errors"):
        return None
    stargate = sections["isolation"]["stargate"]
    if stargate.get("victim_failed"):
        return math.inf
    value: float | None = stargate["worst_p99_ratio"]
    return value


def isolation_rss(sections: dict[str, Any]) -> float | None:
    if sections["isolation"].get("errors"):
        return None
    value = sections["isolation"]["stargate"]["peak_rss_bytes"]
    return None if value is None else value / MB


def failover_pause(sections: dict[str, Any]) -> float | None:
    value: float | None = sections["failover"]["initiator"]["kill"]["max_s"]
    return value


def rss_with_most_vdisks(sections: dict[str, Any]) -> float | None:
    rss = sections["memory"]["rss_bytes"]
    value = rss.get("stargate_1000_vdisks")
    return None if value is None else value / MB


GOALS = (
    Goal("4 KiB randread QD32 IOPS vs tgtd", 1.5, True, "x",
         standard_ratio("randread-4k-qd32", "iops"),
         standard_spread("randread-4k-qd32", "iops")),
    Goal("4 KiB randwrite QD32 IOPS vs tgtd", 1.5, True, "x",
         standard_ratio("randwrite-4k-qd32", "iops"),
         standard_spread("randwrite-4k-qd32", "iops")),
    Goal("128 KiB seq read QD8 MB/s vs tgtd", 1.0, True, "x",
         standard_ratio("seqread-128k-qd8", "mb_per_s"),
         standard_spread("seqread-128k-qd8", "mb_per_s")),
    Goal("4 KiB randread QD1 IOPS vs tgtd", 1.0, True, "x",
         standard_ratio("randread-4k-qd1", "iops"),
         standard_spread("randread-4k-qd1", "iops")),
    Goal("target CPU per 4 KiB I/O vs tgtd (randread QD32)", 0.5, False, "x",
         standard_ratio("randread-4k-qd32", "target_cpu_us_per_io"),
         standard_spread("randread-4k-qd32", "target_cpu_us_per_io")),
    Goal("64 vDisks at once vs one connection, aggregate IOPS", 0.9, True, "x", scale_ratio),
    Goal("fairness: QD1 p99 beside QD128 vs alone", 3.0, False, "x", fairness_ratio),
    Goal("isolation: victim p99 beside hostile vs alone", 2.0, False, "x", isolation_p99_ratio),
    Goal("isolation: target RSS with a hostile session", 150.0, False, "MB", isolation_rss),
    Goal("client I/O pause when the local stargate dies (initiator, max)", 1.0, False, "s",
         failover_pause),
    Goal("stargate RSS with 1000 vDisks", 150.0, False, "MB", rss_with_most_vdisks),
)  # fmt: skip


def judge_goals(sections: dict[str, Any]) -> list[dict[str, Any]]:
    return [goal.judge(sections) for goal in GOALS]


# --- markdown --------------------------------------------------------------------------------


def number(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def machine_lines(results: dict[str, Any]) -> list[str]:
    machine = results["machine"]
    settings = results["settings"]
    load_start = ", ".join(f"{x:.2f}" for x in machine.get("load_average_at_start", []))
    load_end = ", ".join(f"{x:.2f}" for x in machine.get("load_average_at_end", []))
    return [
        f"- date: {machine['date']}, commit {machine.get('git_commit', '?')}",
        f"- machine: {machine['nproc']} CPUs ({machine['cpu_model']}), kernel "
        f"{machine['kernel']}, Python {machine['python']}, tgtd {machine['tgtd_version']}",
        f"- load average (1, 5, 15 min) at start: {load_start}; at end: {load_end} "
        "(the cores are shared with other work: compare ratios, not absolute figures)",
        f"- runs per figure: {settings['runs']} (median), {settings['seconds']} s each, "
        f"stargate and tgtd alternated; vDisk/LUN: {settings['disk_size'] >> 20} MiB file in "
        f"/dev/shm; quick: {settings['quick']}; wall time {machine.get('wall_seconds', '?')} s",
        "- sections measured: "
        + ", ".join(f"{name} ({date})" for name, date in results.get("section_dates", {}).items()),
    ]


def goal_rows(goals: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for goal in goals:
        unit = goal["unit"]
        measured = goal["measured"]
        shown = "-" if measured is None else number(measured) + ("x" if unit == "x" else f" {unit}")
        if goal.get("spread"):
            low, high = goal["spread"]
            shown += f" ({number(low)}-{number(high)})"
        rows.append([goal["goal"], goal["target"], shown, f"**{goal['verdict']}**"])
    return rows


def standard_rows(standard: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for comparison in standard:
        stargate, tgtd = comparison["median"]["stargate"], comparison["median"]["tgtd"]
        ratios = comparison["ratio"]
        rows.append(
            [
                comparison["label"],
                comparison["client"],
                number(stargate["iops"], 0),
                number(tgtd["iops"], 0),
                number(ratios["iops"]) + "x",
                number(stargate["mb_per_s"], 1),
                number(tgtd["mb_per_s"], 1),
                number(stargate["p99_latency_us"], 0),
                number(tgtd["p99_latency_us"], 0),
                number(stargate["target_cpu_us_per_io"], 1),
                number(tgtd["target_cpu_us_per_io"], 1),
                number(ratios["target_cpu_us_per_io"]) + "x",
            ]
        )
    return rows


def cpu_pair(figures: dict[str, Any]) -> str:
    """ "target / client" CPU µs per I/O (older results have no client figure)."""
    target = number(figures.get("target_cpu_us_per_io"), 1)
    client = number(figures.get("client_cpu_us_per_io"), 1)
    return f"{target} / {client}"


def scale_lines(scale: dict[str, Any]) -> list[str]:
    rows = []
    for step in scale["single_stargate"]:
        median = step["median"]
        relative = step["iops_vs_one_connection"]
        rows.append(
            [
                str(step["disks"]),
                str(step["queue_depth_per_disk"]),
                number(median["stargate"]["iops"], 0),
                number(relative["stargate"]) + "x",
                number(median["stargate"]["p99_latency_us"], 0),
                cpu_pair(median["stargate"]),
                number(median["tgtd"]["iops"], 0),
                number(relative["tgtd"]) + "x",
                number(median["tgtd"]["p99_latency_us"], 0),
                cpu_pair(median["tgtd"]),
                number(step["stargate_vs_tgtd_iops"]) + "x",
            ]
        )
    header = ["vDisks", "QD each", "stargate IOPS", "vs 1", "p99 µs", "CPU µs/IO", "tgtd IOPS",
              "vs 1", "p99 µs", "CPU µs/IO", "stargate/tgtd"]  # fmt: skip
    lines = [
        f"4 KiB random read, fio, one libiscsi connection per vDisk, "
        f"{scale['total_queue_depth']} I/Os outstanding in all. CPU µs/IO: target / fio (the "
        "client's own CPU per I/O; on 2 cores the two share the machine).",
        "",
    ]
    lines += markdown_table(header, rows)
    cluster = scale.get("cluster", [])
    if cluster:
        single = {
            step["disks"]: step["median"]["stargate"]["iops"] for step in scale["single_stargate"]
        }
        first = cluster[0]["iops"]
        rows = [
            [
                str(step["disks"]),
                str(step["queue_depth_per_disk"]),
                number(step["iops"], 0),
                number(ratio_of(step["iops"], first)) + "x",
                number(step["p99_latency_us"], 0),
                number(ratio_of(step["iops"], single.get(step["disks"]))) + "x",
            ]
            for step in cluster
        ]
        lines += ["", "The same through a 3-CVM cluster (vDisks spread over the stargates):", ""]
        lines += markdown_table(
            ["vDisks", "QD each", "cluster IOPS", "vs 1", "p99 µs", "vs one stargate"], rows
        )
    if "cluster_error" in scale:
        lines.append(f"- cluster: not measured: `{scale['cluster_error'][:300]}`")
    return lines


def ratio_of(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def fairness_lines(fairness: dict[str, Any]) -> list[str]:
    rows = [
        [
            kind,
            number(fairness[kind]["alone_p99_us"], 0),
            number(fairness[kind]["beside_qd128_p99_us"], 0),
            number(fairness[kind]["p99_ratio"]) + "x",
        ]
        for kind in ("stargate", "tgtd")
        if kind in fairness
    ]
    return markdown_table(["target", "QD1 p99 alone µs", "beside QD128 µs", "ratio"], rows)


def hostile_summary(report: dict[str, Any]) -> str:
    """What a hostile client sent and got back, in a few words."""
    received = report.get("received", {})
    parts = [f"connections {report.get('connections', 0)}, dropped {report.get('drops', 0)}"]
    if report.get("cpu_seconds") is not None:
        parts.append(f"client CPU {report['cpu_seconds']:.1f} s")
    if report.get("commands_sent"):
        parts.append(f"{report['commands_sent']} commands")
    if report.get("r2ts"):
        parts.append(f"R2T {report['r2ts']} (at most {report.get('held_max', 0)} held at once)")
    if report.get("nop_outs_sent"):
        parts.append(f"NOP-In {received.get('NopIn', 0)} for {report['nop_outs_sent']} NOP-Outs")
    if report.get("trickled_bytes"):
        parts.append(f"{report['trickled_bytes']} bytes trickled")
    statuses = report.get("statuses", {})
    parts.append(f"TASK SET FULL {statuses.get('TASK_SET_FULL', 0)}")
    others = {name: count for name, count in statuses.items() if name != "TASK_SET_FULL"}
    if others:
        parts.append("statuses " + ", ".join(f"{name} {n}" for name, n in others.items()))
    rejects = report.get("rejects", {})
    parts.append(f"Reject {sum(rejects.values())}")
    if rejects:
        parts[-1] += " (" + ", ".join(f"{reason} {n}" for reason, n in rejects.items()) + ")"
    return "; ".join(parts)


def isolation_lines(isolation: dict[str, Any]) -> list[str]:
    rows = []
    for kind in ("stargate", "tgtd"):
        for hostile, figures in isolation.get(kind, {}).get("kinds", {}).items():
            failed = bool(figures.get("victim_errors")) and figures["p99_us"] is None
            rows.append(
                [
                    kind,
                    hostile,
                    number(figures["alone_p99_us"], 0),
                    "FAILED" if failed else number(figures["p99_us"], 0),
                    number(figures["p99_ratio"]) + "x",
                    number(figures.get("max_latency_us"), 0)
                    + (" **stalled**" if figures.get("stalled") else ""),
                    f"{number(figures['alone_iops'], 0)} / {number(figures['iops'], 0)}",
                    f"{number(mib(figures['alone_peak_rss_bytes']), 1)} / "
                    f"{number(mib(figures['peak_rss_bytes']), 1)}",
                    f"{percent(figures.get('alone_target_cpu_share'))} / "
                    f"{percent(figures.get('target_cpu_share'))}",
                    hostile_summary(figures["hostile"]),
                ]
            )
    header = ["target", "hostile on vDisk A", "victim p99 alone µs", "beside µs", "ratio",
              "slowest I/O beside µs",
              "victim IOPS alone / beside", "target RSS MiB alone / peak",
              "target CPU alone / beside", "what the hostile client got"]  # fmt: skip
    args = " ".join(isolation.get("stargate_args", [])) or "none (defaults)"
    lines = [
        f"Victim: {isolation['victim']}; {isolation['seconds']} s counted after a "
        f"{isolation['ramp_seconds']} s ramp, the hostile client starting "
        f"{isolation.get('hostile_starts_after_ramp_seconds', '?')} s after the ramp and "
        "attacking until the victim is done; fresh targets for each hostile kind. Deadline "
        f"flags given to stargate: {args}. Peak RSS: the larger of VmRSS sampled during the "
        "hostile runs and the process's VmHWM. fio at QD 1 sends nothing while an I/O is "
        "held, so a stall is one slow I/O among hundreds and hides below p99: a kind whose "
        f"slowest victim I/O took over {isolation.get('stall_seconds', 1.0):g} s is "
        "**stalled**, and its goal ratio is that I/O against the p99 alone.",
        "",
    ]
    lines += markdown_table(header, rows)
    for kind in ("stargate", "tgtd"):
        for hostile, figures in isolation.get(kind, {}).get("kinds", {}).items():
            for error in figures.get("victim_errors") or []:
                lines.append(f"- {kind}, {hostile}: the victim failed: `{error[:300]}`")
    for hostile, error in isolation.get("errors", {}).items():
        lines.append(f"- {hostile}: not measured, the hostile client failed: `{error[:300]}`")
    return lines


def percent(share: float | None) -> str:
    return "-" if share is None else f"{share:.0%}"


def mib(value: float | None) -> float | None:
    return None if value is None else value / (1 << 20)


def failover_lines(failover: dict[str, Any]) -> list[str]:
    rows = []
    for client in ("initiator", "qemu-io"):
        for event in ("kill", "failback", "failback-logout"):
            figures = failover.get(client, {}).get(event)
            if figures:
                rows.append(
                    [
                        client,
                        event,
                        str(figures.get("count", 0)),
                        number(figures.get("median_s"), 3),
                        number(figures.get("max_s"), 3),
                    ]
                )
    lines = markdown_table(["client", "event", "repeats", "median pause s", "max pause s"], rows)
    for note in failover.get("notes", []):
        lines.append(f"- {note}")
    return lines


def memory_lines(memory: dict[str, Any]) -> list[str]:
    rows = [[key.replace("_", " "), number(value, 1)] for key, value in memory["rss_mib"].items()]
    return markdown_table(["process and state", "RSS MiB"], rows)


def profile_lines(profile: dict[str, Any]) -> list[str]:
    lines = [
        f"py-spy on stargate under fio 4 KiB randread QD32, {profile.get('seconds_each')} s "
        "per sampling: *wall* counts every non-idle sample (also time descheduled inside a "
        "system call), *gil* only samples holding the GIL (Python running). profile.txt has "
        "the inclusive view."
    ]
    for sampling in ("wall", "gil"):
        if sampling not in profile:
            continue
        rows = [
            [number(100 * (entry["self_share"] or 0), 1) + "%", f"`{entry['function']}`"]
            for entry in profile[sampling]["top_self"][:12]
        ]
        lines += ["", f"{sampling}: {profile[sampling]['samples']} samples", ""]
        lines += markdown_table(["self", "function (file:line)"], rows)
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    sections = results["sections"]
    lines = ["# stargate vs tgtd", "", *machine_lines(results), "", "## Goals", ""]
    lines += markdown_table(["goal", "target", "measured", "verdict"], goal_rows(results["goals"]))
    lines += [
        "",
        f"Ratios are stargate / tgtd from the same run; the goals use {GOAL_CLIENT} figures "
        "(every client is listed below). In brackets: the lowest and highest ratio of a "
        "single run pair (stargate and tgtd measured back to back); a goal whose median "
        "meets it while a pair does not is UNSTEADY, not PASS.",
    ]
    if "standard" in sections:
        header = ["workload", "client", "stargate IOPS", "tgtd IOPS", "IOPS ratio",
                  "stargate MB/s", "tgtd MB/s", "stargate p99 µs", "tgtd p99 µs",
                  "stargate CPU µs/IO", "tgtd CPU µs/IO", "CPU ratio"]  # fmt: skip
        lines += ["", "## Workloads", ""]
        lines += markdown_table(header, standard_rows(sections["standard"]))
    renderers: list[tuple[str, str, Callable[[Any], list[str]]]] = [
        ("scale", "Scale", scale_lines),
        ("fairness", "Fairness", fairness_lines),
        ("isolation", "Isolation (hostile neighbour)", isolation_lines),
        ("failover", "Failover", failover_lines),
        ("memory", "Memory", memory_lines),
        ("profile", "Profile", profile_lines),
    ]
    for key, title, render in renderers:
        if key in sections:
            lines += ["", f"## {title}", "", *render(sections[key])]
    if results.get("errors"):
        lines += ["", "## Errors", ""]
        lines += [f"- {key}: `{message[:300]}`" for key, message in results["errors"].items()]
    return "\n".join(lines) + "\n"


# --- plots -----------------------------------------------------------------------------------


def plot_standard(standard: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clients = sorted({comparison["client"] for comparison in standard})
    workloads = list(dict.fromkeys(comparison["label"] for comparison in standard))
    figure, axis = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / max(1, len(clients))
    for index, client in enumerate(clients):
        values = []
        for label in workloads:
            found = [
                c["ratio"]["iops"]
                for c in standard
                if c["client"] == client and c["label"] == label
            ]
            values.append(found[0] if found and found[0] is not None else 0.0)
        positions = [position + index * width for position in range(len(workloads))]
        axis.bar(positions, values, width, label=client)
    axis.axhline(1.0, color="black", linewidth=0.8)
    axis.set_xticks(
        [position + width * (len(clients) - 1) / 2 for position in range(len(workloads))]
    )
    axis.set_xticklabels(workloads, rotation=20, ha="right")
    axis.set_ylabel("stargate IOPS / tgtd IOPS")
    axis.set_title("stargate vs tgtd, same run (1.0 = parity)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_scale(scale: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = scale["single_stargate"]
    disks = [step["disks"] for step in steps]
    figure, (iops_axis, p99_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for kind in ("stargate", "tgtd"):
        iops_axis.plot(disks, [s["median"][kind]["iops"] or 0 for s in steps], "o-", label=kind)
        p99_axis.plot(
            disks, [s["median"][kind]["p99_latency_us"] or 0 for s in steps], "o-", label=kind
        )
    iops_axis.set_xlabel("vDisks at once (one connection each)")
    iops_axis.set_ylabel("aggregate IOPS")
    p99_axis.set_xlabel("vDisks at once")
    p99_axis.set_ylabel("p99 latency µs")
    for axis in (iops_axis, p99_axis):
        axis.set_xscale("log", base=2)
        axis.legend()
    figure.suptitle(f"4 KiB random read, {scale['total_queue_depth']} I/Os outstanding in all")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_reports(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Judge the goals (into ``results``), write results.json, results.md and the plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results["goals"] = judge_goals(results["sections"])
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    markdown_path = out_dir / "results.md"
    markdown_path.write_text(render_markdown(results))
    paths = [json_path, markdown_path]
    sections = results["sections"]
    if sections.get("standard"):
        paths.append(plot_standard(sections["standard"], out_dir / "standard.png"))
    if sections.get("scale", {}).get("single_stargate"):
        paths.append(plot_scale(sections["scale"], out_dir / "scale.png"))
    return paths
