"""The soak report: schedules run, operations checked, anomalies, longest client-seen pause;
as JSON (report.json) and markdown (report.md)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.jepsen.checker import Anomaly
from cluster.jepsen.history import Event, EventType, Function, Operation


@dataclass(slots=True)
class ScheduleResult:
    index: int
    seed: int
    steps: list[str]
    seconds: float = 0.0
    operations: dict[str, int] = field(default_factory=dict)  # "write ok": count, ...
    checked: int = 0  # completed reads and writes the checker looked at
    evidence_epochs: int = 0  # (vDisk, node, epoch) slots of write evidence checked
    anomalies: list[Anomaly] = field(default_factory=list)
    longest_pause: dict[str, float] = field(default_factory=dict)  # per client
    problems: list[str] = field(default_factory=list)  # the run itself went wrong
    history: str = ""  # the history file (JSON lines)

    @property
    def ok(self) -> bool:
        return not self.anomalies and not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "seed": self.seed,
            "ok": self.ok,
            "seconds": round(self.seconds, 1),
            "steps": self.steps,
            "operations": self.operations,
            "checked": self.checked,
            "evidence_epochs": self.evidence_epochs,
            "anomalies": [anomaly.to_json() for anomaly in self.anomalies],
            "longest_pause_s": {k: round(v, 3) for k, v in self.longest_pause.items()},
            "problems": self.problems,
            "history": self.history,
        }


def count_operations(operations: Iterable[Operation]) -> dict[str, int]:
    counts = Counter(
        f"{op.f.value} {op.outcome.value}" for op in operations if op.f is not Function.NEMESIS
    )
    return dict(sorted(counts.items()))


def longest_pauses(events: Iterable[Event]) -> dict[str, float]:
    """Per client, the longest time it had operations outstanding and none completed (the
    final read-back is not a client)."""
    outstanding: Counter[str] = Counter()
    since: dict[str, float] = {}
    longest: dict[str, float] = {}
    for event in events:
        process = event.process
        if event.f is Function.NEMESIS or process == "final":
            continue
        if event.type is EventType.INVOKE:
            if not outstanding[process]:
                since[process] = event.time
            outstanding[process] += 1
        else:
            pause = event.time - since.get(process, event.time)
            longest[process] = max(longest.get(process, 0.0), pause)
            outstanding[process] -= 1
            since[process] = event.time
    return dict(sorted(longest.items()))


@dataclass(slots=True)
class SoakReport:
    seed: int
    command: str  # how to run the same soak again
    replay: str = ""  # the command without seed and budget: + "--seed S --schedules 1"
    schedules: list[ScheduleResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(schedule.ok for schedule in self.schedules)

    def totals(self) -> dict[str, Any]:
        pauses = [p for s in self.schedules for p in s.longest_pause.values()]
        return {
            "schedules": len(self.schedules),
            "operations_checked": sum(s.checked for s in self.schedules),
            "evidence_epochs": sum(s.evidence_epochs for s in self.schedules),
            "anomalies": sum(len(s.anomalies) for s in self.schedules),
            "failed_schedules": [s.seed for s in self.schedules if not s.ok],
            "longest_pause_s": round(max(pauses, default=0.0), 3),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "command": self.command,
            "ok": self.ok,
            "totals": self.totals(),
            "schedules": [s.to_json() for s in self.schedules],
        }

    def to_markdown(self) -> str:
        totals = self.totals()
        lines = [
            "# Soak report",
            "",
            f"Seed {self.seed}: `{self.command}`. Verdict: **{'OK' if self.ok else 'ANOMALIES'}**.",
            "",
            f"- schedules run: {totals['schedules']}",
            f"- operations checked: {totals['operations_checked']}",
            f"- write-evidence epochs checked: {totals['evidence_epochs']}",
            f"- anomalies: {totals['anomalies']}",
            f"- longest client-seen pause: {totals['longest_pause_s']} s",
            "",
            "| # | seed | steps | operations checked | anomalies | longest pause (s) | replay |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for s in self.schedules:
            pause = max(s.longest_pause.values(), default=0.0)
            lines.append(
                f"| {s.index} | {s.seed} | {len(s.steps)} | {s.checked} | "
                f"{len(s.anomalies) + len(s.problems)} | {pause:.3f} | "
                f"`{self.replay} --seed {s.seed} --schedules 1` |"
            )
        for s in self.schedules:
            if s.ok:
                continue
            lines += ["", f"## Schedule {s.index} (seed {s.seed})", "", "Steps:", ""]
            lines += [f"    {step}" for step in s.steps]
            lines += ["", "Findings:", ""]
            lines += [f"- {problem}" for problem in s.problems]
            lines += [f"- {anomaly}" for anomaly in s.anomalies[:50]]
            if len(s.anomalies) > 50:
                lines.append(f"- ... and {len(s.anomalies) - 50} more (report.json)")
            lines += ["", f"History: `{s.history}`"]
        return "\n".join(lines) + "\n"

    def write(self, directory: Path) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        json_path, markdown_path = directory / "report.json", directory / "report.md"
        json_path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        markdown_path.write_text(self.to_markdown())
        return json_path, markdown_path
