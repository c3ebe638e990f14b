"""Draw a timeline document (`cluster.timeline`) as a PNG: one lane per vDisk, I/O
activity coloured by the CVM serving it, faults and scenario steps marked, stalls labelled.
matplotlib is imported here only, so the rest of stargate starts without paying for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

NODE_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#17becf"]


def draw_timeline(document: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    vdisks: dict[str, Any] = document["vdisks"]
    t0 = document.get("t0") or 0.0
    lanes = list(vdisks)
    figure, axes = plt.subplots(figsize=(12, 1.2 + 0.7 * max(1, len(lanes))))
    nodes = document.get("nodes") or []
    colour = {node: NODE_COLOURS[i % len(NODE_COLOURS)] for i, node in enumerate(nodes)}
    for lane, vdisk in enumerate(lanes):
        timeline = vdisks[vdisk]
        by_node: dict[int, list[tuple[float, float]]] = {}
        for span in timeline["io_spans"]:
            start = span["start"] - t0
            by_node.setdefault(span["node"], []).append(
                (start, max(span["end"] - span["start"], 0.02))
            )
        for node, bars in by_node.items():
            axes.broken_barh(bars, (lane - 0.3, 0.6), color=colour.get(node, "grey"))
        for fault in timeline["faults"]:
            axes.plot(fault["t"] - t0, lane + 0.38, marker="v", color="red", markersize=7)
        for move in timeline["failovers"]:
            axes.annotate(f"failover →{move['to_node']}", (move["t"] - t0, lane - 0.45),
                          fontsize=7, color="darkred")  # fmt: skip
        for move in timeline["failbacks"]:
            axes.annotate(f"failback →{move['to_node']}", (move["t"] - t0, lane - 0.45),
                          fontsize=7, color="darkgreen")  # fmt: skip
        for disruption in timeline["disruptions"]:
            gap = disruption["gap_s"]
            if gap is not None and gap >= 0.1 and disruption["last_io_before"] is not None:
                axes.annotate(
                    f"{disruption['gap_s']:.2f} s",
                    (disruption["last_io_before"] - t0, lane + 0.32),
                    fontsize=7,
                )
    for step in document.get("scenario", []):
        if step.get("event") == "step":
            axes.axvline(step["t"] - t0, color="black", linestyle="--", linewidth=0.7)
            axes.annotate(str(step.get("what", "")), (step["t"] - t0, len(lanes) - 0.4),
                          fontsize=7, rotation=20)  # fmt: skip
    axes.set_yticks(range(len(lanes)), lanes)
    axes.set_ylim(-0.7, max(1, len(lanes)) - 0.2 + 0.5)
    axes.set_xlabel("seconds")
    handles = [Patch(color=colour[node], label=f"served by CVM {node}") for node in nodes]
    handles.append(Patch(color="red", label="fault fired"))
    axes.legend(handles=handles, loc="upper right", fontsize=7)
    axes.set_title("vDisk timeline: I/O by serving CVM, faults, failovers")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
