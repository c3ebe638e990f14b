"""Typed wrappers around the real iSCSI clients the tests drive: libiscsi's tools and QEMU's.

Every call has a timeout and raises `PeerToolError` (command, exit code, stdout, stderr) when
the tool fails, so a failing test shows what the client said. URLs are libiscsi URLs:
``iscsi://[user%password@]host:port/target-iqn/lun``.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import quote

DEFAULT_TIMEOUT_SECONDS = 30.0


class PeerToolError(RuntimeError):
    """A peer tool exited non-zero, timed out or printed something we could not parse."""


def run_tool(
    argv: Sequence[str | Path], *, timeout: float = DEFAULT_TIMEOUT_SECONDS, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a tool with a timeout, capturing its output; raise `PeerToolError` on failure."""
    words = [str(word) for word in argv]
    command = " ".join(words)
    try:
        completed = subprocess.run(
            words,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise PeerToolError(
            f"{command} timed out after {timeout} s\n"
            f"stdout: {_text(error.stdout)}\nstderr: {_text(error.stderr)}"
        ) from error
    except FileNotFoundError as error:
        raise PeerToolError(f"{words[0]} is not installed (`./run tests` installs it)") from error
    if check and completed.returncode != 0:
        raise PeerToolError(
            f"{command} exited with {completed.returncode}\n"
            f"stdout: {completed.stdout.strip()}\nstderr: {completed.stderr.strip()}"
        )
    return completed


def _text(output: bytes | str | None) -> str:
    if output is None:
        return ""
    return output.decode(errors="replace") if isinstance(output, bytes) else output


def iscsi_url(
    host: str,
    port: int,
    target: str | None = None,
    lun: int = 0,
    *,
    user: str | None = None,
    password: str | None = None,
) -> str:
    """libiscsi URL: ``iscsi://[user[%password]@]host:port[/target/lun]``.

    Without ``target`` it names a portal (for discovery, as iscsi-ls wants). IPv6 hosts get
    brackets. stargate serves each vDisk on LUN 0, tgtd numbers its data LUNs from 1.
    """
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    credentials = ""
    if user is not None:
        credentials = quote(user, safe="")
        if password is not None:
            credentials += "%" + quote(password, safe="")
        credentials += "@"
    url = f"iscsi://{credentials}{host}:{port}"
    return url if target is None else f"{url}/{target}/{lun}"


# --- iscsi-ls --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListedLun:
    lun: int
    device_type: str  # e.g. DIRECT_ACCESS, STORAGE_ARRAY_CONTROLLER
    size_text: str | None  # iscsi-ls rounds down and counts from the last LBA: only indicative


@dataclass(frozen=True)
class ListedTarget:
    name: str
    portal: str  # host:port,tpgt as the target reported it in SendTargets
    luns: list[ListedLun] = field(default_factory=list)


_LS_TARGET = re.compile(r"^Target:(?P<name>\S+) Portal:(?P<portal>\S+)$")
_LS_LUN = re.compile(r"^Lun:(?P<lun>\d+)\s+Type:(?P<type>\S+)(?: \(Size:(?P<size>[^)]*)\))?$")


def iscsi_ls(
    portal_url: str, *, initiator: str | None = None, timeout: float = DEFAULT_TIMEOUT_SECONDS
) -> list[ListedTarget]:
    """Discovery plus REPORT LUNS on each target: ``iscsi-ls -s iscsi://host:port`` (as
    ``initiator``, ``-i``, when given)."""
    naming = ["-i", initiator] if initiator is not None else []
    completed = run_tool(["iscsi-ls", *naming, "-s", portal_url], timeout=timeout)
    targets: list[ListedTarget] = []
    for line in completed.stdout.splitlines():
        if target := _LS_TARGET.match(line.strip()):
            targets.append(ListedTarget(target["name"], target["portal"]))
        elif (lun := _LS_LUN.match(line.strip())) and targets:
            targets[-1].luns.append(ListedLun(int(lun["lun"]), lun["type"], lun["size"]))
    return targets


# --- iscsi-inq / iscsi-readcapacity16 --------------------------------------------------------


@dataclass(frozen=True)
class Inquiry:
    """``Key:value`` lines of iscsi-inq; ``fields`` keeps the last value of a repeated key."""

    fields: dict[str, str]
    lines: list[tuple[str, str]]
    output: str

    @property
    def device_type(self) -> str:
        return self.fields.get("Peripheral Device Type", "")

    @property
    def vendor(self) -> str:
        return self.fields.get("Vendor", "").strip()

    @property
    def product(self) -> str:
        return self.fields.get("Product", "").strip()

    def all(self, key: str) -> list[str]:
        return [value for name, value in self.lines if name == key]


def iscsi_inq(
    url: str,
    *,
    vpd_page: int | None = None,
    initiator: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> Inquiry:
    """Standard INQUIRY, or the VPD page ``vpd_page`` (``iscsi-inq -e 1 -c PAGE``), as
    ``initiator`` (``-i``) when given."""
    argv = ["iscsi-inq"] if initiator is None else ["iscsi-inq", "-i", initiator]
    if vpd_page is not None:
        argv += ["-e", "1", "-c", str(vpd_page)]
    completed = run_tool([*argv, url], timeout=timeout)
    lines = _key_value_lines(completed.stdout)
    if not lines:
        raise PeerToolError(f"iscsi-inq printed nothing we understand:\n{completed.stdout}")
    return Inquiry(dict(lines), lines, completed.stdout)


@dataclass(frozen=True)
class Capacity:
    last_lba: int
    block_size: int
    total_size: int  # bytes
    lbpme: bool  # logical block provisioning (thin) enabled
    lbprz: bool  # provisioned-but-unmapped blocks read as zeros


def iscsi_readcapacity16(url: str, *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> Capacity:
    completed = run_tool(["iscsi-readcapacity16", url], timeout=timeout)
    values = dict(_key_value_lines(completed.stdout))
    provisioning = dict(re.findall(r"\b(LBPME|LBPRZ):(\d)", completed.stdout))
    try:
        return Capacity(
            last_lba=int(values["RETURNED LOGICAL BLOCK ADDRESS"]),
            block_size=int(values["LOGICAL BLOCK LENGTH IN BYTES"]),
            total_size=int(values["Total size"]),
            lbpme=provisioning.get("LBPME") == "1",
            lbprz=provisioning.get("LBPRZ") == "1",
        )
    except (KeyError, ValueError) as error:
        message = f"unexpected iscsi-readcapacity16 output:\n{completed.stdout}"
        raise PeerToolError(message) from error


def _key_value_lines(output: str) -> list[tuple[str, str]]:
    pairs = []
    for line in output.splitlines():
        key, colon, value = line.partition(":")
        if colon and key.strip():
            pairs.append((key.strip(), value.strip()))
    return pairs


# --- QEMU ------------------------------------------------------------------------------------


def qemu_img_convert(
    source: str | Path,
    destination: str | Path,
    *,
    source_format: str = "raw",
    destination_format: str = "raw",
    create_destination: bool | None = None,
    timeout: float = 120.0,
) -> None:
    """``qemu-img convert``; an iscsi:// destination exists already, so it is not created."""
    if create_destination is None:
        create_destination = not str(destination).startswith("iscsi://")
    argv: list[str | Path] = ["qemu-img", "convert", "-f", source_format, "-O", destination_format]
    if not create_destination:
        argv.append("-n")
    run_tool([*argv, source, destination], timeout=timeout)


_QEMU_IO_FAILURES = re.compile(
    r"Pattern verification failed|^\S+ failed: |Input/output error|Could not open", re.MULTILINE
)


def qemu_io(
    url: str | Path,
    commands: Sequence[str],
    *,
    image_format: str = "raw",
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> str:
    """Run qemu-io commands (e.g. ``write -P 0xa5 0 64k``, ``read -P 0xa5 0 64k``) on an image.

    qemu-io can exit 0 after a failed command, so its output is checked too: a failed command
    or pattern verification raises `PeerToolError`.
    """
    argv: list[str | Path] = ["qemu-io", "-f", image_format]
    for command in commands:
        argv += ["-c", command]
    completed = run_tool([*argv, url], timeout=timeout)
    output = completed.stdout + completed.stderr
    if _QEMU_IO_FAILURES.search(output):
        raise PeerToolError(f"qemu-io {' '.join(commands)} on {url} failed:\n{output}")
    return completed.stdout


@dataclass(frozen=True)
class BenchResult:
    requests: int
    request_size: int
    seconds: float

    @property
    def iops(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else float("inf")

    @property
    def megabytes_per_second(self) -> float:
        return self.iops * self.request_size / 1e6


_BENCH_RUN = re.compile(r"Run completed in (?P<seconds>[\d.]+) seconds")


def qemu_img_bench(
    url: str | Path,
    *,
    count: int = 10_000,
    depth: int = 32,
    request_size: int = 4096,
    step: int | None = None,
    write: bool = False,
    image_format: str = "raw",
    timeout: float = 120.0,
) -> BenchResult:
    """``qemu-img bench`` through QEMU's block layer (its iscsi driver for iscsi:// URLs).

    It has no random mode: a ``step`` such as 65537 * 4096 on a 1 GiB image visits every
    block in a scattered order (requests wrap at the end of the image).
    """
    argv: list[str | Path] = ["qemu-img", "bench", "-f", image_format, "-n"]
    argv += ["-c", str(count), "-d", str(depth), "-s", str(request_size)]
    if step is not None:
        argv += ["-S", str(step)]
    if write:
        argv.append("-w")
    completed = run_tool([*argv, url], timeout=timeout)
    if not (run := _BENCH_RUN.search(completed.stdout)):
        raise PeerToolError(f"unexpected qemu-img bench output:\n{completed.stdout}")
    return BenchResult(count, request_size, float(run["seconds"]))


# --- iscsi-test-cu ---------------------------------------------------------------------------

TestOutcome = Literal["passed", "failed", "skipped"]


@dataclass(frozen=True)
class ConformanceSummary:
    """Per-test outcomes of an iscsi-test-cu run.

    CUnit counts a skipped test as passed; here a test that printed ``[SKIPPED]`` and then
    passed is ``skipped``. ``cunit_ran``/``cunit_failed`` are CUnit's own "tests" counts.
    """

    outcomes: dict[str, TestOutcome]
    cunit_ran: int | None
    cunit_failed: int | None
    exit_code: int
    output: str

    def names(self, outcome: TestOutcome) -> list[str]:
        return [name for name, result in self.outcomes.items() if result == outcome]

    @property
    def passed(self) -> int:
        return len(self.names("passed"))

    @property
    def failed(self) -> int:
        return len(self.names("failed"))

    @property
    def skipped(self) -> int:
        return len(self.names("skipped"))

    @property
    def total(self) -> int:
        return len(self.outcomes)

    @property
    def consistent(self) -> bool:
        """Our parse agrees with CUnit's own summary line."""
        return self.cunit_ran == self.total and self.cunit_failed == self.failed


_CU_SUITE = re.compile(r"^Suite: (?P<suite>\S+)")
_CU_TEST = re.compile(r"^  Test: (?P<test>\S+) \.\.\.(?P<rest>.*)$")
_CU_SUMMARY = re.compile(r"^\s+tests\s+(?P<total>\d+)\s+(?P<ran>\d+)\s+\S+\s+(?P<failed>\d+)")


def parse_test_cu_output(output: str, exit_code: int = 0) -> ConformanceSummary:
    outcomes: dict[str, TestOutcome] = {}
    suite = ""
    current: str | None = None
    skipped = False
    cunit_ran = cunit_failed = None

    def finish(status: str) -> None:
        nonlocal current
        if current is not None:
            failed = status == "FAILED"
            outcomes[current] = "failed" if failed else "skipped" if skipped else "passed"
        current = None

    for line in output.splitlines():
        if suite_match := _CU_SUITE.match(line):
            suite = suite_match["suite"]
            continue
        if test_match := _CU_TEST.match(line):
            current, skipped = f"{suite}.{test_match['test']}", False
            line = test_match["rest"]
        if summary := _CU_SUMMARY.match(line):
            cunit_ran, cunit_failed = int(summary["ran"]), int(summary["failed"])
            continue
        if current is None:
            continue
        skipped = skipped or "[SKIPPED]" in line
        status = line.strip()
        if status in ("passed", "FAILED"):
            finish(status)
        elif status.endswith(("...passed", "...FAILED")):  # defensive: status glued on
            finish(status.rsplit("...", 1)[1])
    return ConformanceSummary(outcomes, cunit_ran, cunit_failed, exit_code, output)


def iscsi_test_cu(
    url: str,
    tests: Sequence[str] = ("ALL",),
    *,
    dataloss: bool = True,
    extra_args: Sequence[str] = (),
    timeout: float = 600.0,
) -> ConformanceSummary:
    """Run ``iscsi-test-cu [--dataloss] -v -t TESTS URL`` and parse every test's outcome.

    Exit code 1 only means some test failed: that is a result, not an error. Anything else
    non-zero (could not connect, bad arguments) raises `PeerToolError`.
    """
    argv = ["iscsi-test-cu", "-v", "-t", ",".join(tests), *extra_args]
    if dataloss:
        argv.append("--dataloss")
    completed = run_tool([*argv, url], timeout=timeout, check=False)
    summary = parse_test_cu_output(completed.stdout, completed.returncode)
    if completed.returncode not in (0, 1) or summary.cunit_ran is None:
        raise PeerToolError(
            f"{' '.join(argv)} {url} exited with {completed.returncode}\n"
            f"stdout: {completed.stdout[-4000:]}\nstderr: {completed.stderr.strip()}"
        )
    return summary
