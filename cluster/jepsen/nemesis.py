"""The nemesis: a seeded random schedule of CVM faults, and its executor on a real cluster.

`generate` is pure: the same seed, node count and length give the same schedule, which is
how a failing run is replayed. It keeps at least one CVM healthy at all times (the clients
must be able to make progress) and only applies an action that makes sense in the state
the node will be in (a killed CVM is started, a stopped one continued). `NemesisExecutor`
applies it through the project's own tools: the cluster `Supervisor` (what `stargate cvm
kill|stop|cont|start` does) and `stargate fault add drop_connection --mode blackhole`.
"""

from __future__ import annotations

import random
import signal
import sys
from dataclasses import dataclass
from enum import Enum

import trio

from cluster.jepsen.history import History
from cluster.supervisor import Health, Supervisor

FAULT_COMMAND_TIMEOUT = 20.0
HEAL_TIMEOUT = 60.0


class Action(Enum):
    KILL = "kill"  # SIGKILL the CVM's stargate
    START = "start"  # start a killed one again
    STOP = "stop"  # SIGSTOP: a hung CVM, found out by NOP timeouts
    CONT = "cont"  # SIGCONT: the hung CVM resumes (its stale work must not land)
    BLACKHOLE = "blackhole"  # every connection to the CVM goes dark for a while


IMPAIRING = (Action.KILL, Action.STOP, Action.BLACKHOLE)


@dataclass(frozen=True, slots=True)
class Step:
    at: float  # seconds after the schedule starts
    action: Action
    node: int
    duration: float = 0.0  # a blackhole's

    def __str__(self) -> str:
        extra = f" for {self.duration:.1f} s" if self.action is Action.BLACKHOLE else ""
        return f"t+{self.at:5.2f}s {self.action.value} node {self.node}{extra}"


@dataclass(frozen=True, slots=True)
class Schedule:
    seed: int
    nodes: int
    seconds: float
    steps: tuple[Step, ...]
    pattern: str = ""  # "stop-pair" when the schedule holds that pattern

    def describe(self) -> list[str]:
        steps = [str(step) for step in self.steps]
        return [f"pattern: {self.pattern}", *steps] if self.pattern else steps


def generate(
    seed: int,
    nodes: int,
    seconds: float,
    *,
    mean_gap: float = 1.5,
    blackhole_seconds: tuple[float, float] = (1.0, 4.0),
    stop_pair_probability: float = 0.5,
) -> Schedule:
    """A random schedule of ``seconds``; at most ``nodes - 1`` CVMs impaired at once.

    With ``stop_pair_probability`` it holds the pattern that hunts stale parked writes
    (`stop_pair`); the pattern's nodes count as impaired for all of it, so random steps
    touch only the other nodes, and its steps past the end are left to the heal."""
    if nodes < 2:
        raise ValueError("a nemesis needs at least 2 nodes (one stays healthy)")
    rng = random.Random(seed)
    planned = stop_pair(rng, nodes) if nodes > 2 and rng.random() < stop_pair_probability else []
    planned = [step for step in planned if step.at < seconds]
    reserved = {step.node for step in planned}
    reserved_until = planned[-1].at if planned else 0.0
    down: dict[int, Action] = {}  # node -> KILL or STOP: what must be undone
    dark_until: dict[int, float] = {}
    steps: list[Step] = []

    def apply(step: Step) -> None:
        if step.action in (Action.KILL, Action.STOP):
            down[step.node] = step.action
        elif step.action in (Action.START, Action.CONT):
            del down[step.node]
        else:
            dark_until[step.node] = step.at + step.duration
        steps.append(step)

    at = round(rng.uniform(0.5, 2 * mean_gap), 2)
    while at < seconds or planned:
        if planned and (planned[0].at <= at or at >= seconds):
            apply(planned.pop(0))
            continue
        held = reserved if at <= reserved_until else set()
        impaired = set(down) | held | {n for n, until in dark_until.items() if until > at}
        choices: list[tuple[Action, int]] = []
        for node in range(1, nodes + 1):
            if node in held:
                continue
            if node in down:
                choices.append((Action.START if down[node] is Action.KILL else Action.CONT, node))
            elif node not in impaired and len(impaired) < nodes - 1:
                choices += [(action, node) for action in IMPAIRING]
        if choices:
            action, node = rng.choice(choices)
            duration = 0.0
            if action is Action.BLACKHOLE:
                duration = round(rng.uniform(*blackhole_seconds), 2)
            apply(Step(at, action, node, duration))
        # The step's time as shown is the time the state changes: keep it rounded.
        at = round(at + rng.expovariate(1 / mean_gap) + 0.2, 2)
    return Schedule(seed, nodes, seconds, tuple(steps), "stop-pair" if reserved else "")


def stop_pair(rng: random.Random, nodes: int) -> list[Step]:
    """Stop CVM A (the owner of some vDisks); once their sessions moved to CVM B, which is
    still waiting for A to release them (the release times out after 5 s), stop B too. The
    sessions move on to a third CVM, which takes the vDisks over from A (no answer again)
    and acknowledges newer writes; only then continue B, then A: whatever either kept
    parked must not land over the newer writes."""
    first, second = rng.sample(range(1, nodes + 1), 2)
    start = rng.uniform(0.5, 2.0)
    stop_second = start + rng.uniform(4.5, 7.5)  # sessions re-logged in to B after ~4 s
    cont_second = stop_second + rng.uniform(12.0, 15.0)  # the third CVM serves by ~10 s
    cont_first = cont_second + rng.uniform(0.5, 2.0)
    times = [round(t, 2) for t in (start, stop_second, cont_second, cont_first)]
    return [
        Step(times[0], Action.STOP, first),
        Step(times[1], Action.STOP, second),
        Step(times[2], Action.CONT, second),
        Step(times[3], Action.CONT, first),
    ]


class NemesisExecutor:
    """Applies a schedule to a running cluster, recording every step in the history."""

    def __init__(self, supervisor: Supervisor, history: History) -> None:
        self.supervisor = supervisor
        self.history = history

    async def run(self, schedule: Schedule) -> None:
        start = trio.current_time()
        for step in schedule.steps:
            await trio.sleep_until(start + step.at)
            outcome = await self.apply(step)
            self.history.nemesis(f"{step}{': ' + outcome if outcome else ''}")

    async def apply(self, step: Step) -> str:
        """Apply one step; returns why it could not be, or ""."""
        process = self.supervisor.stargate(step.node)
        try:
            if step.action is Action.KILL:
                await trio.to_thread.run_sync(self.supervisor.kill, process)
            elif step.action is Action.STOP:
                await trio.to_thread.run_sync(self.supervisor.send, process, signal.SIGSTOP)
            elif step.action is Action.CONT:
                await trio.to_thread.run_sync(self.supervisor.send, process, signal.SIGCONT)
            elif step.action is Action.START:
                await trio.to_thread.run_sync(self.supervisor.start, process)
            else:
                return await self._blackhole(step.node, step.duration)
        except ProcessLookupError as error:
            return str(error)
        return ""

    async def _blackhole(self, node: int, duration: float) -> str:
        argv = [sys.executable, "-m", "stargate", "fault", "add", "drop_connection", "--dir",
                str(self.supervisor.directory), "--node", str(node), "--mode", "blackhole",
                "--duration", f"{duration:g}"]  # fmt: skip
        return await _run_cli(argv)

    async def heal(self) -> list[str]:
        """Every CVM running and answering, every fault cleared; returns what would not."""
        problems = []
        for node in self.supervisor.spec.node_ids:
            process = self.supervisor.stargate(node)
            _, state = self.supervisor.state(process)
            if state == "stopped":
                await trio.to_thread.run_sync(self.supervisor.send, process, signal.SIGCONT)
            elif state != "running":
                await trio.to_thread.run_sync(self.supervisor.start, process)
        not_ready = await self.supervisor.wait_ready(self.supervisor.processes, HEAL_TIMEOUT)
        problems += [f"{process.name} did not come back" for process in not_ready]
        argv = [sys.executable, "-m", "stargate", "fault", "clear", "--dir",
                str(self.supervisor.directory)]  # fmt: skip
        cleared = await _run_cli(argv)
        if cleared:
            problems.append(cleared)
        self.history.nemesis("heal: every CVM running, faults cleared")
        return problems

    async def healthy(self) -> bool:
        healths = [await self.supervisor.probe(p) for p in self.supervisor.processes]
        return all(health is Health.UP for health in healths)


async def _run_cli(argv: list[str]) -> str:
    """Run a `stargate` command; "" when it succeeded, else its complaint."""
    with trio.move_on_after(FAULT_COMMAND_TIMEOUT):
        completed = await trio.run_process(argv, capture_stdout=True, capture_stderr=True,
                                           check=False)  # fmt: skip
        if completed.returncode == 0:
            return ""
        return f"{' '.join(argv[3:6])} failed: {completed.stderr.decode(errors='replace')}".strip()
    return f"{' '.join(argv[3:6])} did not finish in {FAULT_COMMAND_TIMEOUT:g} s"
