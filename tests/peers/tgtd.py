"""tgtd, the reference iSCSI target, as a context manager for tests and benchmarks.

    with TgtdTarget(lun_sizes=[64 * MiB]) as tgt:
        iscsi_inq(tgt.url())                    # iscsi://127.0.0.1:PORT/IQN/1

Each instance runs its own `tgtd -f -C N` (its own control socket N, its own free port), backs
its LUNs with sparse files in /dev/shm, binds all initiators and can require CHAP or redirect
logins elsewhere. tgtd ignores SIGTERM: stopping takes it offline, deletes its targets and the
system through tgtadm, then SIGKILLs the PID if it is still there.

tgtd numbers data LUNs from 1 (LUN 0 is its controller LUN); stargate serves a vDisk on LUN 0.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal
from urllib.parse import quote

from tests.helpers.net import free_port
from tests.helpers.procs import ManagedProcess, ProcessError, spawn

MiB = 1024 * 1024
TGTADM_TIMEOUT_SECONDS = 10.0
CONTROL_SOCKET_DIR = Path("/var/run/tgtd")
#: tgtd ignores a redirect to the initiator's own address (its loop guard); this IPv4-mapped
#: IPv6 spelling of 127.0.0.1 gets past it and libiscsi connects to it fine.
LOOPBACK_REDIRECT_ADDRESS = "[::ffff:127.0.0.1]"
#: What tgtd logs when its portal's port is taken (it keeps running without the portal)...
PORTAL_BIND_FAILURE = "failed to create/bind to portal"
#: ...and when another tgtd holds the control socket number (it exits).
CONTROL_SOCKET_CLASH = "another tgtd is using"


class TgtdError(RuntimeError):
    """tgtd or tgtadm failed; the message carries their output."""


@dataclass(frozen=True)
class ChapAccount:
    user: str
    password: str  # tgtd takes any length; RFC 7143 asks for at least 12 bytes (96 bits)


@dataclass(frozen=True)
class RedirectTo:
    """Where tgtd tells initiators to go instead (login status 0x0101 or 0x0102)."""

    port: int
    address: str = LOOPBACK_REDIRECT_ADDRESS
    reason: Literal["Temporary", "Permanent"] = "Temporary"


@dataclass
class TgtdTarget:
    """One tgtd process serving one target with ``len(lun_sizes)`` LUNs (numbered from 1)."""

    iqn: str = "iqn.2026-11.test.tgtd:target1"
    lun_sizes: Sequence[int] = (64 * MiB,)
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    chap: ChapAccount | None = None
    mutual_chap: ChapAccount | None = None  # the target's own name and secret (outgoing)
    redirect: RedirectTo | None = None
    backing_store: Literal["rdwr", "null"] = "rdwr"
    data_dir: Path | None = None  # default: a fresh directory in /dev/shm
    log_dir: Path | None = None  # default: the data directory
    start_timeout: float = 10.0

    tid: int = field(default=1, init=False)
    control_socket: int = field(default=0, init=False)
    lun_paths: list[Path] = field(default_factory=list, init=False)
    process: ManagedProcess | None = field(default=None, init=False)
    _owned_data_dir: Path | None = field(default=None, init=False, repr=False)

    # --- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> TgtdTarget:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        self._prepare_data_dir()
        self._create_lun_files()
        self._start_daemon()
        self._configure()

    def _configure(self) -> None:
        """Create the target over the LUN files, bind all initiators, accounts, redirect."""
        self.tgtadm("--op", "new", "--mode", "target", "--tid", str(self.tid), "-T", self.iqn)
        for lun, path in enumerate(self.lun_paths, start=1):
            self._add_lun(lun, path)
        self.tgtadm("--op", "bind", "--mode", "target", "--tid", str(self.tid), "-I", "ALL")
        if self.chap is not None:
            self._add_account(self.chap, outgoing=False)
        if self.mutual_chap is not None:
            self._add_account(self.mutual_chap, outgoing=True)
        if self.redirect is not None:
            self.set_redirect(self.redirect)

    # --- faults: crash, restart, freeze --------------------------------------------------

    def crash(self) -> None:
        """SIGKILL tgtd by PID, as in a crash: connections drop at once, LUN files stay."""
        process, self.process = self.process, None
        if process is not None:
            process.kill()
        self._remove_control_socket_files()

    def restart(self) -> None:
        """Start tgtd again on the same port over the same LUN files (crashing it first if it
        still runs). It is fully configured before it listens on that port, so no login can
        land in a window where the target does not exist yet."""
        if self.process is not None:
            self.crash()
        real_port = self.port
        self.port = 0  # tgtd starts on a throwaway portal while it is configured...
        try:
            self._start_daemon()
            self._configure()
            staging_portal = self.portal
            self.tgtadm(
                "--op", "new", "--mode", "portal", "--param", f"portal={self.host}:{real_port}"
            )
            self.tgtadm("--op", "delete", "--mode", "portal", "--param", f"portal={staging_portal}")
        finally:
            self.port = real_port  # ...then serves on the real one

    def freeze(self, frozen: bool = True) -> None:
        """SIGSTOP (or SIGCONT) tgtd: connections stay open but nothing answers."""
        assert self.process is not None, "tgtd is not running"
        pid = self.process.pid
        os.kill(pid, signal.SIGSTOP if frozen else signal.SIGCONT)
        deadline = time.monotonic() + 5.0  # signals land asynchronously: wait until they did
        while (_process_state(pid) == "T") != frozen and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self) -> None:
        """Take tgtd down through tgtadm, SIGKILL it if that did not work, remove its files."""
        process, self.process = self.process, None
        if process is not None:
            if process.is_running():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGCONT)  # a frozen tgtd cannot answer tgtadm
                self._shut_down_politely()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.popen.wait(timeout=3.0)
            process.kill()
        self._remove_control_socket_files()
        for lun_path in self.lun_paths:
            lun_path.unlink(missing_ok=True)
        self.lun_paths.clear()
        if self._owned_data_dir is not None:
            # it held only our LUN files and, unless log_dir was given, tgtd's log
            with contextlib.suppress(OSError):
                for leftover in self._owned_data_dir.glob("*.log"):
                    leftover.unlink()
                self._owned_data_dir.rmdir()
            self._owned_data_dir = None

    # --- addresses -------------------------------------------------------------------------

    @property
    def portal(self) -> str:
        return f"{self.host}:{self.port}"

    def url(self, lun: int = 1, *, with_credentials: bool = True) -> str:
        """libiscsi URL of one LUN: ``iscsi://[user%password@]host:port/iqn/lun``."""
        return f"{self.portal_url(with_credentials=with_credentials)}/{self.iqn}/{lun}"

    def portal_url(self, *, with_credentials: bool = True) -> str:
        """libiscsi URL of the portal (for discovery, e.g. iscsi-ls)."""
        credentials = ""
        if with_credentials and self.chap is not None:
            credentials = f"{quote(self.chap.user, safe='')}%{quote(self.chap.password, safe='')}@"
        return f"iscsi://{credentials}{self.portal}"

    # --- runtime changes -------------------------------------------------------------------

    def set_redirect(self, redirect: RedirectTo) -> None:
        """From now on, answer logins to this target with a redirect."""
        self._update_target("RedirectAddress", redirect.address)
        self._update_target("RedirectPort", str(redirect.port))
        self._update_target("RedirectReason", redirect.reason)
        self.redirect = redirect

    def tgtadm(self, *args: str) -> str:
        """Run ``tgtadm -C N --lld iscsi ARGS`` against this instance; return its stdout."""
        argv = ["tgtadm", "-C", str(self.control_socket), "--lld", "iscsi", *args]
        try:
            completed = subprocess.run(
                argv, capture_output=True, text=True, timeout=TGTADM_TIMEOUT_SECONDS, check=False
            )
        except subprocess.TimeoutExpired as error:
            raise TgtdError(f"{' '.join(argv)} hung for {TGTADM_TIMEOUT_SECONDS} s") from error
        if completed.returncode != 0:
            log = self.process.describe() if self.process is not None else ""
            raise TgtdError(
                f"{' '.join(argv)} failed ({completed.returncode}): "
                f"{completed.stderr.strip() or completed.stdout.strip()}\n{log}"
            )
        return completed.stdout

    # --- internals -------------------------------------------------------------------------

    def _prepare_data_dir(self) -> None:
        if self.data_dir is None:
            shm = Path("/dev/shm")
            self.data_dir = Path(
                tempfile.mkdtemp(prefix="tgtd-", dir=shm if shm.is_dir() else None)
            )
            self._owned_data_dir = self.data_dir
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def _start_daemon(self) -> None:
        """Start tgtd on a free control socket number and port (bounded retries).

        Two clashes are retried: another tgtd holding the control socket number (tgtd exits),
        and the picked port taken meanwhile (tgtd logs it and runs on without a portal, while
        whoever took the port answers in its place).
        """
        assert self.data_dir is not None
        if self.process is None or not self.process.is_running():
            self._remove_control_socket_files()  # a killed predecessor's, if any
        pick_port = self.port == 0
        failures: list[str] = []
        for _attempt in range(5):
            if pick_port:
                self.port = free_port(self.host)
            self.control_socket = self._unused_control_socket()
            process = spawn(
                ["tgtd", "-f", "-C", str(self.control_socket),
                 "--iscsi", f"portal={self.host}:{self.port}"],
                log_dir=self.log_dir or self.data_dir,
                name=f"tgtd-{self.control_socket}",
            )  # fmt: skip
            self.process = process
            try:
                process.wait_for_port(self.host, self.port, timeout=self.start_timeout)
                self._wait_for_control_socket()
                if PORTAL_BIND_FAILURE in process.log_text():
                    raise TgtdError(f"{self.portal} is taken:\n{process.describe()}")
                return
            except (ProcessError, TgtdError) as error:
                failures.append(str(error))
                self.process = None
                process.kill()
                log = process.log_text()
                if CONTROL_SOCKET_CLASH in log:
                    self.control_socket = 0  # another tgtd's: not ours to clean up
                    continue
                self._remove_control_socket_files()
                if not (pick_port and PORTAL_BIND_FAILURE in log):
                    break
        raise TgtdError("tgtd did not start:\n" + "\n".join(failures))

    def _wait_for_control_socket(self) -> None:
        """Poll with a harmless tgtadm query until tgtd's control socket answers."""
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                self.tgtadm("--op", "show", "--mode", "target")
                return
            except TgtdError:
                if time.monotonic() > deadline or not self.process.is_running():
                    raise
                time.sleep(0.05)

    @staticmethod
    def _unused_control_socket() -> int:
        for _attempt in range(100):
            number = random.randint(1000, 32767)  # tgtd accepts -C up to 32767
            if not (CONTROL_SOCKET_DIR / f"socket.{number}").exists():
                return number
        raise TgtdError(f"no free tgtd control socket number in {CONTROL_SOCKET_DIR}")

    def _remove_control_socket_files(self) -> None:
        if self.control_socket:
            for suffix in ("", ".lock"):
                (CONTROL_SOCKET_DIR / f"socket.{self.control_socket}{suffix}").unlink(
                    missing_ok=True
                )
            self.control_socket = 0

    def _create_lun_files(self) -> None:
        """Sparse, zeroed backing files, one per LUN (an existing file is emptied)."""
        assert self.data_dir is not None
        self.lun_paths.clear()
        for lun, size in enumerate(self.lun_sizes, start=1):
            path = self.data_dir / f"{self.iqn.rsplit(':', 1)[-1]}-lun{lun}.img"
            with path.open("wb") as backing:
                backing.truncate(size)
            self.lun_paths.append(path)

    def _add_lun(self, lun: int, path: Path) -> None:
        self.tgtadm(
            "--op", "new", "--mode", "logicalunit", "--tid", str(self.tid), "--lun", str(lun),
            "-b", str(path), "--bstype", self.backing_store,
        )  # fmt: skip

    def _add_account(self, account: ChapAccount, *, outgoing: bool) -> None:
        self.tgtadm(
            "--op", "new", "--mode", "account", "--user", account.user,
            "--password", account.password,
        )  # fmt: skip
        bind = ["--op", "bind", "--mode", "account", "--tid", str(self.tid)]
        self.tgtadm(*bind, "--user", account.user, *(["--outgoing"] if outgoing else []))

    def _update_target(self, name: str, value: str) -> None:
        self.tgtadm(
            "--op", "update", "--mode", "target", "--tid", str(self.tid),
            "--name", name, "--value", value,
        )  # fmt: skip

    def _shut_down_politely(self) -> None:
        steps = [
            ["--op", "update", "--mode", "sys", "--name", "State", "-v", "offline"],
            ["--op", "delete", "--mode", "target", "--tid", str(self.tid), "--force"],
            ["--op", "delete", "--mode", "system"],
        ]
        for step in steps:
            with contextlib.suppress(TgtdError):
                self.tgtadm(*step)


def _process_state(pid: int) -> str:
    """The state letter of /proc/PID/stat: R running, S sleeping, T stopped..."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "X"
    return stat.rsplit(")", 1)[1].split()[0]  # after "(comm)", which may hold spaces
