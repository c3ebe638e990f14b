"""A Jepsen-style history: every operation's invocation and completion, in real time.

Each client records ``invoke`` before it sends a command and ``ok`` / ``fail`` / ``info``
when it knows the outcome: ``fail`` means the operation certainly had no effect, ``info``
that it may or may not have taken effect (a write whose session died; an operation still
in flight when the run ended). `operations` pairs the events into `Operation` intervals,
which is what the checker reads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from cluster.jepsen.blocks import Decoded, Value


class EventType(Enum):
    INVOKE = "invoke"
    OK = "ok"
    FAIL = "fail"
    INFO = "info"


class Function(Enum):
    READ = "read"
    WRITE = "write"
    NEMESIS = "nemesis"


@dataclass(frozen=True, slots=True, order=True)
class Key:
    """One register: a block of a vDisk."""

    vdisk: str
    lba: int

    def __str__(self) -> str:
        return f"{self.vdisk}/{self.lba}"


@dataclass(frozen=True, slots=True)
class Event:
    op: int  # the operation's id (the index of its invocation)
    time: float  # seconds since the history began (monotonic)
    process: str  # the client (or "nemesis") that did it
    type: EventType
    f: Function
    key: Key | None = None
    value: Value | None = None  # a write's value; a read's result when it decoded as one
    decoded: Decoded | None = None  # a read's result: what the sector held
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "op": self.op,
            "time": round(self.time, 6),
            "process": self.process,
            "type": self.type.value,
            "f": self.f.value,
        }
        if self.key is not None:
            document.update(vdisk=self.key.vdisk, lba=self.key.lba)
        if self.value is not None:
            document["value"] = [self.value.client, self.value.seq]
        if self.decoded is not None:
            document["decoded"] = self.decoded.value
        if self.detail:
            document["detail"] = self.detail
        return document

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Event:
        key = Key(raw["vdisk"], int(raw["lba"])) if "vdisk" in raw else None
        value = Value(*raw["value"]) if "value" in raw else None
        decoded = Decoded(raw["decoded"]) if "decoded" in raw else None
        return cls(int(raw["op"]), float(raw["time"]), raw["process"], EventType(raw["type"]),
                   Function(raw["f"]), key, value, decoded, raw.get("detail", ""))  # fmt: skip


class History:
    """Append-only; one per schedule. Not thread-safe: record from the trio thread."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._origin = time.monotonic()
        self._next_op = 0
        self._invocations: dict[int, Event] = {}  # by op: completions find theirs at once

    def now(self) -> float:
        return time.monotonic() - self._origin

    def invoke(
        self, process: str, f: Function, key: Key | None = None, value: Value | None = None
    ) -> int:
        op = self._next_op
        self._next_op += 1
        invocation = Event(op, self.now(), process, EventType.INVOKE, f, key, value)
        self.events.append(invocation)
        self._invocations[op] = invocation
        return op

    def complete(
        self,
        op: int,
        type: EventType,
        *,
        value: Value | None = None,
        decoded: Decoded | None = None,
        detail: str = "",
    ) -> None:
        invocation = self._invocations.get(op)
        if invocation is None:
            raise KeyError(f"operation {op} was never invoked")
        result = value if invocation.f is Function.READ else invocation.value
        self.events.append(Event(op, self.now(), invocation.process, type, invocation.f,
                                 invocation.key, result, decoded, detail))  # fmt: skip

    def nemesis(self, detail: str) -> None:
        """A fault applied: recorded as an instant operation, for the report's timeline."""
        op = self.invoke("nemesis", Function.NEMESIS)
        self.complete(op, EventType.OK, detail=detail)

    def dump(self, path: Path) -> None:
        with path.open("w") as out:
            for event in self.events:
                out.write(json.dumps(event.to_json()) + "\n")

    @staticmethod
    def load(path: Path) -> list[Event]:
        return [Event.from_json(json.loads(line)) for line in path.read_text().splitlines()]


@dataclass(frozen=True, slots=True)
class Operation:
    """An invocation paired with its completion (``completed`` None: never known)."""

    op: int
    process: str
    f: Function
    key: Key | None
    value: Value | None
    outcome: EventType  # OK, FAIL or INFO
    invoked: float
    completed: float | None
    decoded: Decoded | None = None
    detail: str = ""

    def __str__(self) -> str:
        end = "?" if self.completed is None else f"{self.completed:.3f}"
        shown = self.value if self.decoded in (None, Decoded.VALUE) else self.decoded.value
        return (f"{self.process} {self.f.value} {self.key} {shown} {self.outcome.value} "
                f"[{self.invoked:.3f}, {end}]")  # fmt: skip


def operations(events: Iterable[Event]) -> Iterator[Operation]:
    """Pair invocations with completions; an operation never completed is ``info`` with no
    end (it may take effect at any later time)."""
    invocations: dict[int, Event] = {}
    completions: dict[int, Event] = {}
    for event in events:
        (invocations if event.type is EventType.INVOKE else completions)[event.op] = event
    for op, invocation in sorted(invocations.items()):
        done = completions.get(op)
        if done is None:
            yield Operation(op, invocation.process, invocation.f, invocation.key,
                            invocation.value, EventType.INFO, invocation.time, None)  # fmt: skip
            continue
        yield Operation(
            op,
            invocation.process,
            invocation.f,
            invocation.key,
            done.value,
            done.type,
            invocation.time,
            # An info write may still land later: its end is unknown.
            None if done.type is EventType.INFO else done.time,
            done.decoded,
            done.detail,
        )
