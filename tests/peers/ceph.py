"""A one-mon, one-OSD Ceph cluster (Debian's ceph-mon and ceph-osd) for the tests.

Brought up as Ceph's own vstart does: keyrings from ceph-authtool, a monmap from monmaptool,
`ceph-mon --mkfs`, `ceph osd new`, `ceph-osd --mkfs`. The OSD keeps its data in memory
(memstore), the pool has size 1, there is no mgr (RBD I/O, locks and blocklisting do not need
one). Everything listens on 127.0.0.1 with free ports and lives in one temporary directory.
Usable in about 10 s; stopped by PID, the OSD before the mon (else it waits for the mon).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.net import free_port
from tests.helpers.procs import ManagedProcess, ProcessError, spawn

BINARIES = ("ceph-mon", "ceph-osd", "ceph", "ceph-authtool", "monmaptool", "rbd")
POOL = "rbd"
READY_TIMEOUT = 60.0
COMMAND_TIMEOUT = 30.0


def missing_binaries() -> list[str]:
    return [name for name in BINARIES if shutil.which(name) is None]


def _conf(directory: Path, fsid: str, mon_v2: int, mon_v1: int) -> str:
    return f"""[global]
fsid = {fsid}
mon host = [v2:127.0.0.1:{mon_v2},v1:127.0.0.1:{mon_v1}]
public addr = 127.0.0.1
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = {directory / "keyring"}
run dir = {directory / "run"}
admin socket = {directory / "run"}/$name.asok
log file = {directory / "log"}/$name.log
osd pool default size = 1
osd pool default min size = 1
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon allow pool delete = true
ms bind port min = 6800
ms bind port max = 7300
[mon]
mon data = {directory / "mon"}/$cluster-$id
mon cluster log file = {directory / "log"}/cluster.log
[osd]
osd data = {directory / "osd"}/$cluster-$id
keyring = $osd_data/keyring
osd objectstore = memstore
memstore device bytes = {1 << 30}
osd max object name len = 460
osd max object namespace len = 64
"""


@dataclass
class CephCluster:
    directory: Path
    fsid: str = field(default_factory=lambda: str(uuid.uuid4()))
    mon_v2_port: int = field(default_factory=free_port)
    mon_v1_port: int = field(default_factory=free_port)
    mon: ManagedProcess | None = None
    osd: ManagedProcess | None = None

    @property
    def conf_path(self) -> Path:
        return self.directory / "ceph.conf"

    def _run(self, *argv: str, timeout: float = COMMAND_TIMEOUT) -> str:
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise ProcessError(f"{' '.join(argv)} took over {timeout} s") from exc
        if done.returncode != 0:
            raise ProcessError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr}")
        return done.stdout

    def ceph(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> str:
        """Run the `ceph` CLI against this cluster; its stdout."""
        return self._run(
            "ceph", "-c", str(self.conf_path), "--connect-timeout", "10", *args, timeout=timeout
        )

    def start(self) -> None:
        directory = self.directory
        for sub in ("run", "log", "mon/ceph-a", "osd/ceph-0"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(_conf(directory, self.fsid, self.mon_v2_port, self.mon_v1_port))
        keyring = str(directory / "keyring")
        self._run("ceph-authtool", "--create-keyring", keyring, "--gen-key", "-n", "mon.",
                  "--cap", "mon", "allow *")  # fmt: skip
        self._run("ceph-authtool", keyring, "--gen-key", "-n", "client.admin",
                  "--cap", "mon", "allow *", "--cap", "osd", "allow *",
                  "--cap", "mds", "allow *", "--cap", "mgr", "allow *")  # fmt: skip
        monmap = str(directory / "monmap")
        address = f"[v2:127.0.0.1:{self.mon_v2_port},v1:127.0.0.1:{self.mon_v1_port}]"
        self._run("monmaptool", "--create", "--fsid", self.fsid, "--addv", "a", address, monmap)
        conf = str(self.conf_path)
        self._run("ceph-mon", "-c", conf, "-i", "a", "--mkfs", "--monmap", monmap,
                  "--keyring", keyring)  # fmt: skip
        self.mon = spawn(["ceph-mon", "-c", conf, "-i", "a", "-f"],
                         log_dir=directory / "log", name="ceph-mon")  # fmt: skip
        self.ceph("osd", "pool", "create", POOL, "8", "8")
        osd_key = self._run("ceph-authtool", "--gen-print-key").strip()
        osd_uuid = str(uuid.uuid4())
        secret = directory / "osd-secret.json"
        secret.write_text(json.dumps({"cephx_secret": osd_key}))
        osd_id = self.ceph("osd", "new", osd_uuid, "-i", str(secret)).strip()
        if osd_id != "0":
            raise ProcessError(f"ceph osd new gave id {osd_id!r}, not 0")
        (directory / "osd" / "ceph-0" / "keyring").write_text(f"[osd.0]\n\tkey = {osd_key}\n")
        self._run("ceph-osd", "-c", conf, "-i", "0", "--mkfs", "--key", osd_key,
                  "--osd-uuid", osd_uuid)  # fmt: skip
        self.osd = spawn(["ceph-osd", "-c", conf, "-i", "0", "-f"],
                         log_dir=directory / "log", name="ceph-osd")  # fmt: skip
        self._wait_osd_up()
        self._run("rbd", "-c", conf, "pool", "init", POOL)

    def _wait_osd_up(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process in (self.mon, self.osd):
                if process is not None and not process.is_running():
                    raise ProcessError(f"exited during start-up:\n{process.describe()}")
            status = json.loads(self.ceph("osd", "stat", "-f", "json"))
            if status.get("num_up_osds") == 1:
                return
            time.sleep(0.2)
        assert self.osd is not None
        raise ProcessError(f"the OSD was not up within {timeout} s:\n{self.osd.describe()}")

    def blocklist(self) -> list[str]:
        """The client addresses currently blocklisted."""
        # Pacific prints the address list, then the (empty) range list, on one line
        text = self.ceph("osd", "blocklist", "ls", "-f", "json").strip()
        entries, _ = json.JSONDecoder().raw_decode(text)
        return [entry["addr"] for entry in entries]

    def stop(self) -> None:
        for name in ("osd", "mon"):  # the OSD first: stopped after the mon it waits for it
            process: ManagedProcess | None = getattr(self, name)
            if process is not None:
                process.stop(grace=5.0)
                setattr(self, name, None)
