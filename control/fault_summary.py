"""Fault and auditor summaries for the cluster's stats page and `stargate top`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from faults.forensics import Forensics
from faults.injector import FaultInjector


def stats_section(faults: FaultInjector, forensics: Forensics | None) -> dict[str, Any]:
    """The "faults" and "auditor" entries of a stargate's /stats.json."""
    return {
        "faults": {
            "armed": len(faults.faults),
            "fired": len(faults.events),
            "network_paused": faults.network_paused,
        },
        "auditor": dict(forensics.auditor.counts) if forensics is not None else {},
    }


def top_line(documents: Iterable[dict[str, Any] | None]) -> str:
    """One line for `stargate top`: faults armed/fired and initiator findings, cluster-wide."""
    armed = fired = 0
    findings: dict[str, int] = {}
    paused = []
    for document in documents:
        if not document:
            continue
        faults = document.get("faults") or {}
        armed += int(faults.get("armed", 0))
        fired += int(faults.get("fired", 0))
        if faults.get("network_paused"):
            paused.append(str(document.get("node", "?")))
        for kind, count in (document.get("auditor") or {}).items():
            findings[kind] = findings.get(kind, 0) + int(count)
    text = f"faults: {armed} armed, {fired} fired"
    if paused:
        text += f", network paused on CVM {', '.join(paused)}"
    audit = ", ".join(f"{kind} {count}" for kind, count in sorted(findings.items()))
    return f"{text}   initiator auditor: {audit or 'nothing to report'}"
