"""Boot the Linux initiator in QEMU against iSCSI portals on the host's loopback.

Typical use::

    image = GuestImage.ensure()                       # cached; builds once (~15 s cold)
    portals = {"10.0.2.100": 3260_host_port}          # guest address -> host port
    with Guest(image, portals, "tgtd_basic", env={"TARGET_IQN": iqn}) as guest:
        guest.wait_for("target-kill")                 # the scenario printed WAITING target-kill
        ...                                           # act on the host
        guest.signal("target-kill")                   # the scenario's wait_host returns
        result = guest.wait_done()
    result.assert_passed("discovery", "login")

The guest reaches the portal ``10.0.2.100:3260`` (port 3260 unless the key says
``"10.0.2.101:3261"``); each connection it opens there is relayed by a fresh ``relay.py``
to the host portal (``127.0.0.1:port``, or ``(host, port)`` for another loopback address),
which `Guest.repoint` can change while the guest runs. Guest addresses should be 10.0.2.100
to 10.0.2.199. A target that redirects must name the guest-side address (10.0.2.1xx:port) in
its TargetAddress: the guest can reach nothing else.

Channels: the kernel console and every command's output go to ``<workdir>/console.log``
(ttyS0); the scenario's protocol lines (``STEP``, ``WAITING``, ``VALUE``, ``DONE``, see
``scenarios/_guestlib.sh``) travel on ttyS1, QEMU's stdin/stdout, and are also copied to
``<workdir>/control.log``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from cluster.guest.build import GuestArtifacts, ensure_guest_artifacts

SCENARIO_DIR = Path(__file__).parent / "scenarios"
GUEST_LIBRARY = SCENARIO_DIR / "_guestlib.sh"
RELAY = Path(__file__).parent / "relay.py"
DEFAULT_GUEST_PORT = 3260
KERNEL_COMMAND_LINE = "console=ttyS0,115200 panic=1 loglevel=5 mitigations=off"
_GUEST_COUNTER = itertools.count()


def default_log_root() -> Path:
    override = os.environ.get("STARGATE_GUEST_LOG_DIR")
    if override:
        return Path(override)
    return Path(tempfile.gettempdir()) / "stargate-emu-guest"


class GuestError(AssertionError):
    """The guest failed, timed out or ended early; the message carries the logs' tails."""


@dataclass(frozen=True)
class GuestImage:
    """The kernel and initramfs the guest boots."""

    kernel: Path
    initrd: Path
    kernel_version: str

    @classmethod
    def ensure(cls, cache_root: Path | None = None) -> GuestImage:
        """The cached image for the current Debian package versions, built when missing."""
        artifacts: GuestArtifacts = ensure_guest_artifacts(cache_root)
        return cls(artifacts.kernel, artifacts.initrd, artifacts.kernel_version)


@dataclass(frozen=True)
class RelayedPortal:
    """One guest-side portal relayed to one host-side portal."""

    guest_ip: str
    guest_port: int
    host: str
    host_port: int

    @property
    def guest_portal(self) -> str:
        return f"{self.guest_ip}:{self.guest_port}"

    def guestfwd(self, route_file: Path) -> str:
        """The netdev option relaying this portal through ``relay.py`` (one per connection),
        which reads the host side from ``route_file`` at each connection attempt.

        slirp runs the command (split like a shell would, no shell) with the connection as
        its stdin, stdout and stderr. QEMU splits options on commas: no commas in paths.
        """
        command = shlex.join([sys.executable, "-I", "-S", str(RELAY), str(route_file)])
        if "," in command:
            raise ValueError(f"no commas allowed in the relay command: {command}")
        return f"guestfwd=tcp:{self.guest_ip}:{self.guest_port}-cmd:{command}"

    def route_file_name(self) -> str:
        return f"route-{self.guest_ip}-{self.guest_port}"


PortalMap = Mapping[str, int | tuple[str, int]]


def parse_portals(portals: PortalMap) -> list[RelayedPortal]:
    """``{"10.0.2.100": 3261, "10.0.2.101:3261": ("127.0.0.5", 3261)}`` -> Portals."""
    parsed: list[RelayedPortal] = []
    for key, target in portals.items():
        guest_ip, _, port_text = key.partition(":")
        guest_port = int(port_text) if port_text else DEFAULT_GUEST_PORT
        if not re.fullmatch(r"10\.0\.2\.\d{1,3}", guest_ip) or guest_ip in (
            "10.0.2.2",
            "10.0.2.3",
            "10.0.2.15",
        ):
            raise ValueError(f"guest portal address {guest_ip} is not a free 10.0.2.x address")
        host, host_port = ("127.0.0.1", target) if isinstance(target, int) else target
        parsed.append(RelayedPortal(guest_ip, guest_port, host, int(host_port)))
    return parsed


@dataclass(frozen=True)
class GuestEvent:
    """One protocol line from the guest."""

    kind: str  # BOOTED, STEP, WAITING, VALUE, DONE or EXIT (QEMU ended)
    name: str
    detail: str
    at: float  # seconds since QEMU started
    passed: bool | None = None  # STEP only

    def __str__(self) -> str:
        if self.kind == "STEP":
            return f"STEP {self.name} {'PASS' if self.passed else 'FAIL'} {self.detail}"
        return f"{self.kind} {self.name} {self.detail}".rstrip()


def parse_control_line(line: str, at: float) -> GuestEvent | None:
    parts = line.strip().split(" ", 3)
    kind = parts[0] if parts else ""
    if kind == "STEP" and len(parts) >= 3 and parts[2] in ("PASS", "FAIL"):
        detail = parts[3] if len(parts) > 3 else ""
        return GuestEvent("STEP", parts[1], detail, at, parts[2] == "PASS")
    if kind in ("BOOTED", "WAITING", "VALUE", "DONE") and len(parts) >= 2:
        return GuestEvent(kind, parts[1], " ".join(parts[2:]), at)
    return None


@dataclass
class GuestResult:
    """What a finished guest reported."""

    steps: list[GuestEvent]
    values: dict[str, str]
    exit_code: int | None  # the scenario's, from DONE; None when it never finished
    elapsed: float
    console_log: Path
    control_log: Path
    timed_out: bool = False

    def step(self, name: str) -> GuestEvent | None:
        for event in self.steps:
            if event.name == name:
                return event
        return None

    @property
    def failed_steps(self) -> list[GuestEvent]:
        return [e for e in self.steps if not e.passed]

    def assert_passed(self, *expected_steps: str) -> None:
        """Every step passed, the scenario exited 0, and each expected step was reported."""
        problems: list[str] = [f"step failed: {e}" for e in self.failed_steps]
        reported = {e.name for e in self.steps}
        problems += [
            f"step never reported: {name}" for name in expected_steps if name not in reported
        ]
        if self.timed_out:
            problems.append("the guest timed out")
        if self.exit_code != 0:
            problems.append(f"scenario exit code {self.exit_code}")
        if problems:
            raise GuestError(
                "\n".join(problems) + "\n" + logs_tail(self.console_log, self.control_log)
            )


def logs_tail(console_log: Path, control_log: Path, lines: int = 60) -> str:
    def tail(path: Path, count: int = lines) -> str:
        try:
            text = path.read_text(errors="replace").replace("\r", "")
        except OSError:
            return "(missing)"
        return "\n".join(text.splitlines()[-count:])

    text = (
        f"--- control ({control_log}) ---\n{tail(control_log)}\n"
        f"--- console tail ({console_log}) ---\n{tail(console_log)}"
    )
    qemu_stderr = console_log.with_name("qemu-stderr.log")
    if qemu_stderr.exists() and qemu_stderr.stat().st_size:
        text += f"\n--- QEMU stderr ({qemu_stderr}) ---\n{tail(qemu_stderr, 20)}"
    return text


def resolve_scenario(scenario: str | Path) -> str:
    """A scenario's text: a Path, a name in scenarios/ (``"tgtd_basic"``), or shell text."""
    if isinstance(scenario, Path):
        return scenario.read_text()
    if "\n" not in scenario:
        candidate = SCENARIO_DIR / (scenario if scenario.endswith(".sh") else f"{scenario}.sh")
        if candidate.exists():
            return candidate.read_text()
        raise FileNotFoundError(f"no scenario {scenario!r} in {SCENARIO_DIR}")
    return scenario


def shell_env(env: Mapping[str, str]) -> str:
    lines = []
    for key, value in env.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"bad environment variable name {key!r}")
        lines.append(f"{key}={shlex.quote(str(value))}\n")
    return "".join(lines)


class Guest:
    """A running QEMU guest executing one scenario; a context manager.

    ``portals`` maps guest portal (``"10.0.2.100"`` or ``"10.0.2.100:3261"``) to the host port
    on 127.0.0.1, or to ``(host, port)``. ``env`` is exported to the scenario; ``PORTALS``
    (space-separated guest portals, in the given order) is always set. ``timeout`` bounds the
    whole guest: QEMU is killed when it expires, whatever the test is doing.

    ``connect_patience``: while a host portal refuses, each guest connection to it is held
    open and silent for up to this many seconds, retried, and relayed once the portal
    answers (a down target looks like a host dropping packets; the initiator's own login
    timeout decides). 0 closes it at once instead (see relay.py for why that is risky).
    ``kernel_args`` are appended to the kernel command line, ``qemu_args`` to QEMU's.

    Logs and the
    files given to QEMU go to ``workdir`` (default: a fresh ``<name>-N-xxxx`` directory under
    ``$STARGATE_GUEST_LOG_DIR`` or ``/tmp/stargate-emu-guest``; kept after the test).
    """

    def __init__(
        self,
        image: GuestImage,
        portals: PortalMap,
        scenario: str | Path,
        *,
        timeout: float = 300.0,
        env: Mapping[str, str] | None = None,
        workdir: Path | None = None,
        name: str | None = None,
        memory_mb: int = 1024,
        cpus: int = 2,
        connect_patience: float = 60.0,
        kernel_args: str = "",
        qemu_args: Sequence[str] = (),
    ) -> None:
        self.image = image
        self.portals = parse_portals(portals)
        self.scenario_text = resolve_scenario(scenario)
        self.timeout = timeout
        self.env = {"PORTALS": " ".join(p.guest_portal for p in self.portals), **(env or {})}
        self.memory_mb = memory_mb
        self.connect_patience = connect_patience
        self.kernel_args = kernel_args
        self.qemu_args = list(qemu_args)
        self.cpus = cpus
        if workdir is None:
            log_root = default_log_root()
            log_root.mkdir(parents=True, exist_ok=True)
            label = re.sub(r"[^A-Za-z0-9_.-]+", "_", name or "guest")[:80]
            workdir = Path(
                tempfile.mkdtemp(prefix=f"{label}-{next(_GUEST_COUNTER)}-", dir=log_root)
            )
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.console_log = self.workdir / "console.log"
        self.control_log = self.workdir / "control.log"
        self.steps: list[GuestEvent] = []
        self.values: dict[str, str] = {}
        self.exit_code: int | None = None
        self.timed_out = False
        self._events: queue.Queue[GuestEvent] = queue.Queue()
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._watchdog: threading.Timer | None = None
        self._started = 0.0
        self._finished = False
        self._control_file: IO[str] | None = None

    # ------------------------------------------------------------------ lifecycle

    def qemu_command(self) -> list[str]:
        files = {
            "lib": GUEST_LIBRARY.read_text(),
            "scenario": self.scenario_text,
            "env": shell_env(self.env),
        }
        fw_cfg: list[str] = []
        for name, text in files.items():
            path = self.workdir / f"{name}.sh"
            path.write_text(text)
            fw_cfg += ["-fw_cfg", f"name=opt/stargate/{name},file={path}"]
        forwards: list[str] = []
        for portal in self.portals:
            route_file = self.workdir / portal.route_file_name()
            route_file.write_text(f"{portal.host} {portal.host_port} {self.connect_patience}\n")
            forwards.append(portal.guestfwd(route_file))
        netdev = ",".join(["user", "id=n0", "restrict=on", "ipv6=off", *forwards])
        return [
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-smp",
            str(self.cpus),
            "-m",
            str(self.memory_mb),
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-kernel",
            str(self.image.kernel),
            "-initrd",
            str(self.image.initrd),
            "-append",
            f"{KERNEL_COMMAND_LINE} {self.kernel_args}".strip(),
            "-chardev",
            f"file,id=console,path={self.console_log}",
            "-serial",
            "chardev:console",
            "-chardev",
            "stdio,id=control,signal=off",
            "-serial",
            "chardev:control",
            "-netdev",
            netdev,
            "-device",
            "virtio-net-pci,netdev=n0,romfile=",
            *fw_cfg,
            *self.qemu_args,
        ]

    def start(self) -> Guest:
        command = self.qemu_command()
        (self.workdir / "qemu-command.txt").write_text(shlex.join(command) + "\n")
        self._control_file = open(self.control_log, "w", buffering=1)  # noqa: SIM115
        self._started = time.monotonic()
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(self.workdir / "qemu-stderr.log", "wb"),  # noqa: SIM115
            start_new_session=True,  # its own process group: the relays die with it
        )
        self._reader = threading.Thread(
            target=self._read_control, name="guest-control", daemon=True
        )
        self._reader.start()
        self._watchdog = threading.Timer(self.timeout, self._expire)
        self._watchdog.daemon = True
        self._watchdog.start()
        return self

    def __enter__(self) -> Guest:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.kill()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def kill(self) -> None:
        """Kill QEMU and the relays it started (its process group), then reap."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        else:
            # QEMU is gone; relays may survive it while their target connection is open.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        if self._reader is not None:
            self._reader.join(timeout=10)
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        if self._control_file is not None:
            self._control_file.close()

    def _expire(self) -> None:
        self.timed_out = True
        process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    def _read_control(self) -> None:
        process = self._process
        assert process is not None and process.stdout is not None
        for raw in iter(process.stdout.readline, b""):
            line = raw.decode(errors="replace").replace("\r", "").rstrip("\n")
            at = time.monotonic() - self._started
            if self._control_file is not None:
                self._control_file.write(f"{at:8.2f} < {line}\n")
            event = parse_control_line(line, at)
            if event is not None:
                self._events.put(event)
        code = process.wait()
        self._events.put(GuestEvent("EXIT", str(code), "", time.monotonic() - self._started))

    # ------------------------------------------------------------------ events

    def _record(self, event: GuestEvent) -> None:
        if event.kind == "STEP":
            self.steps.append(event)
        elif event.kind == "VALUE":
            self.values[event.name] = event.detail
        elif event.kind == "DONE":
            self.exit_code = int(event.name) if event.name.lstrip("-").isdigit() else -1
        elif event.kind == "EXIT":
            self._finished = True

    def _next_event(self, deadline: float) -> GuestEvent:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        try:
            event = self._events.get(timeout=remaining)
        except queue.Empty:
            raise TimeoutError from None
        self._record(event)
        return event

    def events(self, timeout: float | None = None) -> Iterator[GuestEvent]:
        """Protocol events as they arrive, until QEMU exits (or ``timeout`` passes)."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while not self._finished:
            try:
                event = self._next_event(deadline)
            except TimeoutError:
                return
            yield event

    def wait_for(self, event: str, timeout: float = 120.0) -> GuestEvent:
        """Block until the scenario prints ``WAITING event``; record steps met on the way.

        Raises GuestError when the guest ends, a step fails first is NOT an error (the
        scenario decides), or the timeout passes.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self._finished:
                raise self._error(f"guest ended before WAITING {event}")
            try:
                got = self._next_event(deadline)
            except TimeoutError:
                raise self._error(f"no WAITING {event} within {timeout:.0f} s") from None
            if got.kind == "WAITING" and got.name == event:
                return got
            if got.kind == "WAITING":
                raise self._error(f"guest waits for {got.name!r}, expected {event!r}")
            if got.kind in ("DONE", "EXIT"):
                raise self._error(f"guest finished before WAITING {event}")

    def wait_step(self, name: str, timeout: float = 120.0) -> GuestEvent:
        """Block until the scenario reports step ``name``; return it (PASS or FAIL)."""
        for event in self.steps:
            if event.name == name:
                return event
        deadline = time.monotonic() + timeout
        while True:
            if self._finished:
                raise self._error(f"guest ended before STEP {name}")
            try:
                got = self._next_event(deadline)
            except TimeoutError:
                raise self._error(f"no STEP {name} within {timeout:.0f} s") from None
            if got.kind == "STEP" and got.name == name:
                return got

    def repoint(
        self,
        guest_portal: str,
        host_port: int,
        host: str = "127.0.0.1",
        *,
        patience: float | None = None,
    ) -> None:
        """Relay the guest's NEW connections to ``guest_portal`` to another host portal
        (open connections stay where they are): e.g. a restarted target on a fresh port,
        configured before the guest can reach it. ``patience``: see ``connect_patience``."""
        guest_ip, _, port_text = guest_portal.partition(":")
        guest_port = int(port_text) if port_text else DEFAULT_GUEST_PORT
        patience = self.connect_patience if patience is None else patience
        for portal in self.portals:
            if (portal.guest_ip, portal.guest_port) == (guest_ip, guest_port):
                route_file = self.workdir / portal.route_file_name()
                staging = route_file.with_name(route_file.name + ".new")
                staging.write_text(f"{host} {host_port} {patience}\n")
                staging.replace(route_file)  # atomic: a relay never reads half a file
                if self._control_file is not None:
                    self._control_file.write(
                        f"{self.elapsed:8.2f} = {guest_portal} -> {host}:{host_port}"
                        f" (patience {patience} s)\n"
                    )
                return
        raise KeyError(f"no guest portal {guest_portal}")

    def signal(self, event: str, payload: str = "") -> None:
        """Answer ``WAITING event``: the scenario's ``wait_host`` returns, payload in HOST_REPLY."""
        self._send(f"GO {event} {payload}".rstrip())

    def abort(self) -> None:
        """Make the scenario's current (or next) ``wait_host`` return 1."""
        self._send("ABORT")

    def _send(self, line: str) -> None:
        process = self._process
        if process is None or process.stdin is None or process.poll() is not None:
            raise self._error(f"cannot send {line!r}: QEMU is not running")
        if self._control_file is not None:
            self._control_file.write(f"{self.elapsed:8.2f} > {line}\n")
        process.stdin.write(line.encode() + b"\n")
        process.stdin.flush()

    def wait_done(self, timeout: float | None = None) -> GuestResult:
        """Until the scenario reports DONE and QEMU exits; any WAITING now is an error."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while not self._finished:
            try:
                got = self._next_event(deadline)
            except TimeoutError:
                self.timed_out = True
                break
            if got.kind == "WAITING":
                self.abort()
        self.kill()
        return self.result()

    def result(self) -> GuestResult:
        return GuestResult(
            steps=list(self.steps),
            values=dict(self.values),
            exit_code=self.exit_code,
            elapsed=self.elapsed,
            console_log=self.console_log,
            control_log=self.control_log,
            timed_out=self.timed_out,
        )

    def _error(self, message: str) -> GuestError:
        if self.timed_out:
            message = f"guest timed out after {self.timeout:.0f} s (QEMU killed): {message}"
        return GuestError(f"{message}\n{logs_tail(self.console_log, self.control_log)}")


def run_scenario(
    image: GuestImage,
    portals: PortalMap,
    scenario: str | Path,
    *,
    on_wait: Mapping[str, Callable[[], str | None]] | None = None,
    **guest_options: Any,
) -> GuestResult:
    """Run a scenario to the end; ``on_wait[event]`` (returning an optional payload string)
    runs on the host for each ``WAITING event``, then the guest is signalled. An unexpected
    WAITING aborts the guest's wait. ``guest_options`` go to `Guest` (timeout, env, name...)."""
    handlers = dict(on_wait or {})
    with Guest(image, portals, scenario, **guest_options) as guest:
        for event in guest.events():
            if event.kind != "WAITING":
                continue
            handler = handlers.get(event.name)
            if handler is None:
                guest.abort()
                continue
            guest.signal(event.name, handler() or "")
        return guest.wait_done(timeout=30)


def format_steps(steps: Sequence[GuestEvent]) -> str:
    return "\n".join(f"{e.at:7.1f}s {e}" for e in steps)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one scenario by hand against portals already listening on the host::

        python -m cluster.guest.harness write_probe --portal 10.0.2.100=40123 \\
            --env TARGET_IQN=iqn.2010-06.com.nutanix:vmdisk-7 --timeout 300
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m cluster.guest.harness")
    parser.add_argument("scenario", help="a name in cluster/guest/scenarios or a .sh path")
    parser.add_argument(
        "--portal",
        action="append",
        default=[],
        metavar="GUEST[:PORT]=[HOST:]PORT",
        help="guest portal relayed to a host portal; repeatable",
    )
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--patience", type=float, default=60.0, help="connect_patience")
    args = parser.parse_args(argv)
    portals: dict[str, int | tuple[str, int]] = {}
    for spec in args.portal:
        guest_side, _, host_side = spec.partition("=")
        host, _, port = host_side.rpartition(":")
        portals[guest_side] = (host, int(port)) if host else int(port)
    env = dict(item.split("=", 1) for item in args.env)
    path = Path(args.scenario)
    scenario: str | Path = path if path.suffix == ".sh" and path.exists() else args.scenario
    image = GuestImage.ensure()
    with Guest(
        image,
        portals,
        scenario,
        env=env,
        timeout=args.timeout,
        name=path.stem,
        connect_patience=args.patience,
    ) as guest:
        print(f"logs: {guest.workdir}", flush=True)
        for event in guest.events():
            print(f"{event.at:7.1f}s {event}", flush=True)
            if event.kind == "WAITING":
                input(f"guest waits for {event.name!r}: press Enter to answer GO ")
                guest.signal(event.name)
        result = guest.wait_done(timeout=10)
    if result.timed_out:
        print(f"timed out after {args.timeout:.0f} s")
    print(f"exit code {result.exit_code}, {len(result.failed_steps)} failed steps")
    return 0 if result.exit_code == 0 and not result.failed_steps else 1


__all__ = [
    "Guest",
    "GuestError",
    "GuestEvent",
    "GuestImage",
    "GuestResult",
    "RelayedPortal",
    "format_steps",
    "main",
    "parse_portals",
    "run_scenario",
]


if __name__ == "__main__":
    raise SystemExit(main())
