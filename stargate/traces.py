"""The last operations of each vDisk with their phases (the 2009 page's `/h/traces`).

One ring per vDisk (`collections.deque` with a ``maxlen``): memory stays bounded at
``depth`` entries per vDisk whatever the load. An entry is one tuple appended when the
command's status is handed to the connection's send buffer; its phases are
``time.perf_counter_ns()`` stamps taken where the transport already is:

- received: the SCSI Command PDU was decoded,
- queued:   it held a slot of the command queue (at once on the fast path),
- executed: the logical unit returned its result,
- status:   its status (and Data-In) was queued for sending.

A depth of 0 keeps no traces (each completion then costs one attribute test).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

DEFAULT_TRACE_DEPTH = 64
MAX_TRACE_DEPTH = 100_000

# (itt, opcode, bytes, status, received_ns, queued_ns, executed_ns, status_ns)
TraceEntry = tuple[int, int, int, int, int, int, int, int]


@dataclass
class TraceSettings:
    """How many operations each vDisk of this process keeps (a gflag, changed live)."""

    depth: int = DEFAULT_TRACE_DEPTH


TRACE_SETTINGS = TraceSettings()

# perf_counter_ns -> wall clock, fixed once so an entry costs no time.time() call.
_WALL_MINUS_PERF = time.time() - time.perf_counter_ns() / 1e9


def new_ring(depth: int | None = None) -> deque[TraceEntry] | None:
    depth = TRACE_SETTINGS.depth if depth is None else depth
    return deque(maxlen=depth) if depth > 0 else None


def resized(ring: deque[TraceEntry] | None, depth: int) -> deque[TraceEntry] | None:
    """``ring`` holding at most ``depth`` entries (its newest ones)."""
    if depth <= 0:
        return None
    return deque(ring or (), maxlen=depth)


def entry_json(entry: TraceEntry) -> dict[str, Any]:
    itt, opcode, byte_count, status, received, queued, executed, sent = entry
    return {
        "itt": itt,
        "opcode": opcode,
        "bytes": byte_count,
        "status": status,
        "received": _WALL_MINUS_PERF + received / 1e9,
        "queued_us": (queued - received) / 1000,
        "executed_us": (executed - queued) / 1000,
        "status_us": (sent - executed) / 1000,
        "latency_us": (sent - received) / 1000,
    }
