"""Build (or find cached) the guest's kernel and initramfs.

Nothing is installed on the host but the tools the build and the harness run
(qemu-system-x86, busybox-static, cpio, kmod): the kernel, open-iscsi, fio and e2fsprogs are
fetched with ``apt-get download`` and unpacked with ``dpkg -x``. The result lives under
``~/.cache/stargate-emu/guest/<key>/`` (or ``$STARGATE_GUEST_CACHE``), keyed by the versions
of every package that goes into it and by this file's guest init script, and is built under a
file lock so parallel test processes build it once.

Run ``python -m cluster.guest.build`` to build by hand and print the artifact paths.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Bump when the layout of the image changes in a way the package versions do not capture.
BUILD_REVISION = 3

KERNEL_PACKAGE_RE = re.compile(r"^linux-image-(6\.1\.0-(\d+)-amd64)$")

# Debian packages unpacked into the initramfs (never installed on the host).
USERLAND_PACKAGES: tuple[str, ...] = (
    "open-iscsi",
    "libopeniscsiusr",
    "libisns0",
    "fio",
    "e2fsprogs",
)

# Host command -> Debian package that provides it; installed with apt-get when missing.
HOST_TOOLS: dict[str, str] = {
    "qemu-system-x86_64": "qemu-system-x86",
    "cpio": "cpio",
    "depmod": "kmod",
    "modprobe": "kmod",
}
BUSYBOX_STATIC = Path("/bin/busybox")

# Kernel modules the guest loads, in order; their dependencies come first automatically.
GUEST_MODULES: tuple[str, ...] = (
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
    "crc32c_generic",
    "scsi_common",
    "scsi_mod",
    "crct10dif_common",
    "crc64",
    "crc-t10dif",
    "crc64-rocksoft",
    "t10-pi",
    "sd_mod",
    "scsi_transport_iscsi",
    "libiscsi",
    "libiscsi_tcp",
    "iscsi_tcp",
    "jbd2",
    "mbcache",
    "crc16",
    "ext4",
    "qemu_fw_cfg",
)

# Files taken from the unpacked packages, at the same path in the guest.
GUEST_PROGRAMS: tuple[str, ...] = (
    "sbin/iscsid",
    "sbin/iscsiadm",
    "sbin/iscsi-iname",
    "usr/bin/fio",
    "sbin/mke2fs",
    "sbin/e2fsck",
    "sbin/dumpe2fs",
    "sbin/tune2fs",
)
GUEST_SYMLINKS: dict[str, str] = {
    "sbin/mkfs.ext4": "mke2fs",
    "sbin/fsck.ext4": "e2fsck",
}
GUEST_DATA_FILES: tuple[str, ...] = ("etc/mke2fs.conf",)

# The guest's /init: mounts, loads modules, fetches the per-test files from fw_cfg
# (opt/stargate/lib, scenario, env) and runs the library, then powers off. Everything that
# should change without a rebuild lives in the library (cluster/guest/scenarios/_guestlib.sh).
GUEST_INIT = r"""#!/bin/sh
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
exec </dev/console >/dev/console 2>&1
echo "init: started at $(cut -d' ' -f1 /proc/uptime) s, loading modules"
while read -r module; do
    insmod "/lib/modules/$module" || echo "init: insmod $module failed"
done </lib/modules/load-order
echo "init: modules loaded at $(cut -d' ' -f1 /proc/uptime) s"
fwcfg=/sys/firmware/qemu_fw_cfg/by_name/opt/stargate
mkdir -p /run/stargate
for name in lib scenario env; do
    if [ -e "$fwcfg/$name/raw" ]; then cat "$fwcfg/$name/raw" >"/run/stargate/$name.sh"; fi
done
rc=99
if [ -f /run/stargate/lib.sh ]; then
    sh /run/stargate/lib.sh
    rc=$?
else
    echo "init: no guest library in fw_cfg opt/stargate/lib"
fi
echo "init: finished with $rc, powering off"
sync
poweroff -f
sleep 5
reboot -f
"""

GUEST_ISCSID_CONF = """\
iscsid.startup = /bin/true
node.startup = manual
node.leading_login = No
node.session.timeo.replacement_timeout = 120
node.conn[0].timeo.login_timeout = 15
node.conn[0].timeo.logout_timeout = 15
node.conn[0].timeo.noop_out_interval = 5
node.conn[0].timeo.noop_out_timeout = 5
node.session.err_timeo.abort_timeout = 15
node.session.err_timeo.lu_reset_timeout = 30
node.session.err_timeo.tgt_reset_timeout = 30
node.session.err_timeo.host_reset_timeout = 60
node.session.initial_login_retry_max = 8
node.session.cmds_max = 128
node.session.queue_depth = 32
node.session.xmit_thread_priority = -20
node.session.iscsi.InitialR2T = No
node.session.iscsi.ImmediateData = Yes
node.session.iscsi.FirstBurstLength = 262144
node.session.iscsi.MaxBurstLength = 16776192
node.conn[0].iscsi.MaxRecvDataSegmentLength = 262144
node.conn[0].iscsi.MaxXmitDataSegmentLength = 0
discovery.sendtargets.iscsi.MaxRecvDataSegmentLength = 32768
node.session.nr_sessions = 1
node.session.reopen_max = 0
node.session.iscsi.FastAbort = Yes
node.session.scan = auto
"""


class GuestBuildError(RuntimeError):
    """The guest image could not be built (a tool, a package or a library is missing)."""


@dataclass(frozen=True)
class GuestArtifacts:
    """A built guest: boot these with ``-kernel`` and ``-initrd``."""

    kernel: Path  # the uncompressed ELF (PVH boot); vmlinuz beside it is the original
    initrd: Path
    kernel_version: str
    manifest: dict[str, object]


def default_cache_root() -> Path:
    override = os.environ.get("STARGATE_GUEST_CACHE")
    if override:
        return Path(override)
    return Path.home() / ".cache" / "stargate-emu" / "guest"


def log(message: str) -> None:
    print(f"[guest-build] {message}", file=sys.stderr, flush=True)


def run(args: Sequence[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command, raise GuestBuildError with its output when it fails."""
    result = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        check=False,
        **kwargs,  # type: ignore[call-overload]
    )
    if result.returncode != 0:
        raise GuestBuildError(
            f"{' '.join(str(a) for a in args)} failed ({result.returncode}):\n"
            f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    return result


# ---------------------------------------------------------------------------- host tools


_APT_UPDATED = False


def apt_env() -> dict[str, str]:
    return {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


def apt_update() -> None:
    global _APT_UPDATED
    if _APT_UPDATED:
        return
    log("apt-get update")
    run(["apt-get", "update"], env=apt_env())
    _APT_UPDATED = True


def apt_install(packages: Iterable[str]) -> None:
    wanted = sorted(set(packages))
    if not wanted:
        return
    log(f"apt-get install {' '.join(wanted)}")
    command = ["apt-get", "install", "-y", "--no-install-recommends", *wanted]
    try:
        run(command, env=apt_env())
    except GuestBuildError:
        apt_update()
        run(command, env=apt_env())


def busybox_is_static(path: Path = BUSYBOX_STATIC) -> bool:
    """True when ``path`` is a statically linked busybox (no ELF program interpreter)."""
    try:
        data = path.read_bytes()[:4096]
    except OSError:
        return False
    return data[:4] == b"\x7fELF" and b"/lib64/ld-linux" not in data


def ensure_host_tools() -> None:
    """Install what the build and QEMU need on the host, only when it is missing."""
    missing = {pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None}
    if not (Path("/sbin/depmod").exists() or shutil.which("depmod")):
        missing.add("kmod")
    if not busybox_is_static():
        missing.add("busybox-static")
    if missing:
        apt_install(missing)
    for tool in HOST_TOOLS:
        if shutil.which(tool) is None and not Path("/sbin", tool).exists():
            raise GuestBuildError(f"{tool} is still missing after apt-get install")
    if not busybox_is_static():
        raise GuestBuildError(f"{BUSYBOX_STATIC} is not a static busybox")


def host_tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise GuestBuildError(f"{name} not found")
    return found


# ---------------------------------------------------------------------------- versions


def candidate_versions(packages: Sequence[str]) -> dict[str, str]:
    """The versions apt would fetch (one apt-cache call; update the lists once if unknown)."""
    for attempt in range(2):
        result = subprocess.run(
            ["apt-cache", "show", "--no-all-versions", *packages],
            capture_output=True,
            text=True,
            check=False,
        )
        versions: dict[str, str] = {}
        for record in result.stdout.split("\n\n"):
            name = re.search(r"^Package: (\S+)$", record, re.MULTILINE)
            version = re.search(r"^Version: (\S+)$", record, re.MULTILINE)
            if name and version:
                versions.setdefault(name.group(1), version.group(1))
        if all(p in versions for p in packages):
            return versions
        if attempt == 0:
            apt_update()
    missing = sorted(set(packages) - set(versions))
    raise GuestBuildError(f"apt knows no version of {missing}")


def newest_kernel_package() -> tuple[str, str]:
    """(package name, kernel version) of the newest ``linux-image-6.1.0-N-amd64``."""
    for attempt in range(2):
        result = subprocess.run(
            ["apt-cache", "pkgnames", "linux-image-6.1.0-"],
            capture_output=True,
            text=True,
            check=False,
        )
        found: list[tuple[int, str, str]] = []
        for name in result.stdout.split():
            match = KERNEL_PACKAGE_RE.match(name)
            if match:
                found.append((int(match.group(2)), name, match.group(1)))
        if found:
            _, name, version = max(found)
            return name, version
        if attempt == 0:
            apt_update()
    raise GuestBuildError("no linux-image-6.1.0-*-amd64 package known to apt")


def installed_version(package: str) -> str:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", package],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def image_inputs() -> dict[str, object]:
    """Everything the image depends on: its cache key is the hash of this."""
    kernel_package, kernel_version = newest_kernel_package()
    return {
        "revision": BUILD_REVISION,
        "kernel_package": kernel_package,
        "kernel_version": kernel_version,
        "packages": candidate_versions([kernel_package, *USERLAND_PACKAGES]),
        "busybox": installed_version("busybox-static"),
        "modules": list(GUEST_MODULES),
        "programs": list(GUEST_PROGRAMS),
        "init": hashlib.sha256(GUEST_INIT.encode()).hexdigest(),
        "iscsid_conf": hashlib.sha256(GUEST_ISCSID_CONF.encode()).hexdigest(),
    }


def image_key(inputs: dict[str, object]) -> str:
    blob = json.dumps(inputs, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# ---------------------------------------------------------------------------- packages


def deb_path(package: str, version: str, into: Path) -> Path | None:
    safe_version = version.replace(":", "%3a")
    for deb in sorted(into.glob(f"{package}_*.deb")):
        if deb.name.startswith(f"{package}_{safe_version}_"):
            return deb
    return None


def download(packages: Mapping[str, str], into: Path) -> dict[str, Path]:
    """``apt-get download`` these package versions into ``into`` (kept there as a cache)."""
    into.mkdir(parents=True, exist_ok=True)
    wanted = {p: v for p, v in packages.items() if deb_path(p, v, into) is None}
    if wanted:
        log(f"apt-get download {' '.join(f'{p}={v}' for p, v in wanted.items())}")
        run(
            [
                "apt-get",
                "download",
                "-o",
                "APT::Sandbox::User=root",
                *(f"{p}={v}" for p, v in wanted.items()),
            ],
            cwd=str(into),
            env=apt_env(),
        )
    found: dict[str, Path] = {}
    for package, version in packages.items():
        deb = deb_path(package, version, into)
        if deb is None:
            raise GuestBuildError(f"apt-get download {package}={version} left no .deb in {into}")
        found[package] = deb
    return found


def direct_library_depends(packages: Sequence[str]) -> list[str]:
    """The ``lib*`` packages these depend on directly (one apt-cache call)."""
    result = run(
        [
            "apt-cache",
            "depends",
            "--no-recommends",
            "--no-suggests",
            "--no-conflicts",
            "--no-breaks",
            "--no-replaces",
            "--no-enhances",
            *packages,
        ]
    )
    names: list[str] = []
    for line in result.stdout.splitlines():
        match = re.match(r"^\s+\|?(?:Pre)?Depends: (\S+)$", line)
        if match and not match.group(1).startswith("<"):
            name = match.group(1).split(":", 1)[0]
            if name.startswith("lib") and name not in names:
                names.append(name)
    return names


# ---------------------------------------------------------------------------- libraries


LDD_LINE = re.compile(r"^\s*(\S+)\s+=>\s+(\S+)")


def resolve_libraries(
    binaries: Iterable[Path], library_path: Sequence[Path]
) -> tuple[dict[str, Path], set[str]]:
    """Shared libraries of ``binaries``, found first in ``library_path`` then on the host.

    Returns soname -> file and the set of sonames found nowhere.
    """
    env = {**os.environ, "LD_LIBRARY_PATH": ":".join(str(p) for p in library_path)}
    found: dict[str, Path] = {}
    missing: set[str] = set()
    for binary in binaries:
        result = subprocess.run(
            ["ldd", str(binary)], capture_output=True, text=True, check=False, env=env
        )
        if "not a dynamic executable" in result.stdout + result.stderr:
            continue
        for line in result.stdout.splitlines():
            match = LDD_LINE.match(line)
            if not match:
                continue
            soname, where = match.groups()
            if where == "not":
                missing.add(soname)
            else:
                found[soname] = Path(where)
    return found, missing


# ---------------------------------------------------------------------------- modules


def module_files(tree: Path, kernel_version: str) -> list[Path]:
    """Module files to insmod, in order, dependencies first, each once."""
    modprobe = host_tool("modprobe")
    ordered: list[Path] = []
    for module in GUEST_MODULES:
        result = run([modprobe, "-d", tree, "-S", kernel_version, "--show-depends", module])
        for line in result.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "insmod":
                path = Path(parts[1])
                if path not in ordered:
                    ordered.append(path)
            elif parts and parts[0] == "builtin":
                continue
    return ordered


def extract_vmlinux(vmlinuz: Path) -> bytes:
    """The uncompressed ELF kernel inside a bzImage (Debian's is XZ-compressed).

    QEMU boots it directly through its PVH entry point (CONFIG_PVH=y): under TCG this skips
    the emulated XZ decompression, 5 to 12 s of every boot.
    """
    data = vmlinuz.read_bytes()
    for magic, decompress in (
        (b"\xfd7zXZ\x00", lambda blob: lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(blob)),
        (b"\x1f\x8b\x08", lambda blob: zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(blob)),
    ):
        offset = data.find(magic)
        while offset >= 0:
            try:
                elf = decompress(data[offset:])
            except (lzma.LZMAError, zlib.error):
                elf = b""
            if elf[:4] == b"\x7fELF":
                return elf
            offset = data.find(magic, offset + 1)
    raise GuestBuildError(f"no compressed ELF kernel found in {vmlinuz}")


def read_module(path: Path) -> bytes:
    """A module's ELF bytes (busybox insmod cannot read compressed modules)."""
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(path.read_bytes())
    if path.name.endswith(".ko.zst"):
        return subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
    return path.read_bytes()


def plain_module_name(path: Path) -> str:
    name = path.name
    for suffix in (".xz", ".gz", ".zst"):
        name = name.removesuffix(suffix)
    return name


# ---------------------------------------------------------------------------- the build


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def copy_file(source: Path, target: Path, mode: int | None = None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    os.chmod(target, mode if mode is not None else (source.stat().st_mode & 0o7777))


def build_kernel(
    kernel_package: str, kernel_version: str, version: str, debs: Path, work: Path, out: Path
) -> list[str]:
    """Unpack the kernel, copy vmlinuz to ``out`` and the needed modules into the root."""
    deb = download({kernel_package: version}, debs)[kernel_package]
    tree = work / "kernel"
    log(f"unpacking {deb.name}")
    run(["dpkg", "-x", deb, tree])
    vmlinuz = tree / "boot" / f"vmlinuz-{kernel_version}"
    copy_file(vmlinuz, out / "vmlinuz", 0o644)
    (out / "vmlinux").write_bytes(extract_vmlinux(vmlinuz))
    if not (tree / "lib" / "modules" / kernel_version / "modules.dep").exists():
        run([host_tool("depmod"), "-b", tree, kernel_version])
    names: list[str] = []
    modules_dir = work / "root" / "lib" / "modules"
    modules_dir.mkdir(parents=True, exist_ok=True)
    for path in module_files(tree, kernel_version):
        name = plain_module_name(path)
        (modules_dir / name).write_bytes(read_module(path))
        names.append(name)
    (modules_dir / "load-order").write_text("".join(f"{n}\n" for n in names))
    shutil.rmtree(tree)
    return names


def build_userland(versions: dict[str, str], debs: Path, work: Path) -> dict[str, str]:
    """Unpack the userland packages, copy programs and their libraries into the root."""
    root = work / "root"
    unpacked = work / "unpacked"
    fetched: list[str] = []

    def fetch(packages: Mapping[str, str]) -> None:
        for package, deb in download(packages, debs).items():
            run(["dpkg", "-x", deb, unpacked])
            fetched.append(package)

    fetch({package: versions[package] for package in USERLAND_PACKAGES})

    programs = [unpacked / p for p in GUEST_PROGRAMS]
    library_path = [unpacked / "usr/lib/x86_64-linux-gnu", unpacked / "lib/x86_64-linux-gnu"]
    for _round in range(4):
        libraries, missing = resolve_libraries(programs, library_path)
        if not missing:
            break
        # Not on the host: fetch the library packages the fetched ones depend on.
        log(f"libraries not on the host: {sorted(missing)}; fetching dependencies")
        wanted = set(direct_library_depends(fetched)) - set(fetched)
        wanted -= {"libc6"}
        if not wanted:
            break
        fetch(candidate_versions(sorted(wanted)))
    libraries, missing = resolve_libraries(programs, library_path)
    if missing:
        raise GuestBuildError(f"shared libraries not found: {sorted(missing)}")

    for program in GUEST_PROGRAMS:
        copy_file(unpacked / program, root / program)
    for link, target in GUEST_SYMLINKS.items():
        (root / link).symlink_to(target)
    for data in GUEST_DATA_FILES:
        copy_file(unpacked / data, root / data)
    lib_dir = root / "lib" / "x86_64-linux-gnu"
    lib_dir.mkdir(parents=True, exist_ok=True)
    sources: dict[str, str] = {}
    for soname, where in sorted(libraries.items()):
        real = where.resolve()
        if soname.startswith("ld-linux"):
            copy_file(real, root / "lib64" / "ld-linux-x86-64.so.2", 0o755)
        else:
            copy_file(real, lib_dir / soname, 0o755)
        sources[soname] = str(real)
    loader = root / "lib64" / "ld-linux-x86-64.so.2"
    if not loader.exists():
        copy_file(Path("/lib64/ld-linux-x86-64.so.2").resolve(), loader, 0o755)
    return sources


def build_root_skeleton(root: Path) -> None:
    for directory in (
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "mnt",
        "var",
        "etc/iscsi/nodes",
        "etc/iscsi/send_targets",
        "etc/iscsi/ifaces",
        "root",
    ):
        (root / directory).mkdir(parents=True, exist_ok=True)
    (root / "var" / "lock").symlink_to("../run/lock")
    (root / "var" / "run").symlink_to("../run")
    copy_file(BUSYBOX_STATIC, root / "bin" / "busybox", 0o755)
    applets = run([BUSYBOX_STATIC, "--list"]).stdout.split()
    for applet in applets:
        if applet != "busybox" and not (root / "bin" / applet).exists():
            (root / "bin" / applet).symlink_to("busybox")
    (root / "init").write_text(GUEST_INIT)
    (root / "init").chmod(0o755)
    (root / "etc" / "iscsi" / "iscsid.conf").write_text(GUEST_ISCSID_CONF)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    (root / "etc" / "hostname").write_text("guest\n")


def write_initramfs(root: Path, target: Path) -> None:
    """cpio newc, uncompressed.

    Uncompressed on purpose: under TCG the kernel takes about 1.5 s longer per boot to
    gunzip the ~40 MB gzip form (98 MB raw) than to copy the raw archive, and every test boots.
    """
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    with open(target, "wb") as out:
        subprocess.run(
            [host_tool("cpio"), "--quiet", "-o", "-H", "newc", "-R", "0:0"],
            cwd=str(root),
            input=("\n".join(names) + "\n").encode(),
            stdout=out,
            check=True,
        )


def build_image(inputs: dict[str, object], out: Path, debs: Path) -> None:
    kernel_package = str(inputs["kernel_package"])
    kernel_version = str(inputs["kernel_version"])
    versions = inputs["packages"]
    assert isinstance(versions, dict)
    started = time.monotonic()
    staging = Path(tempfile.mkdtemp(prefix="build-", dir=out.parent))
    try:
        root = staging / "root"
        build_root_skeleton(root)
        modules = build_kernel(
            kernel_package, kernel_version, versions[kernel_package], debs, staging, staging
        )
        libraries = build_userland(versions, debs, staging)
        write_initramfs(root, staging / "initramfs.cpio")
        manifest = {
            **inputs,
            "modules_loaded": modules,
            "libraries": libraries,
            "build_seconds": round(time.monotonic() - started, 1),
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        shutil.rmtree(root)
        shutil.rmtree(staging / "unpacked", ignore_errors=True)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log(f"built {out} in {time.monotonic() - started:.1f} s")


def prune_old_builds(cache: Path, keep: Path, keep_count: int = 2) -> None:
    """Remove all but the newest ``keep_count`` builds (~100 MB each) and unused .debs."""
    builds = sorted(
        (p for p in cache.iterdir() if (p / "manifest.json").exists() and p != keep),
        key=lambda p: (p / "manifest.json").stat().st_mtime,
        reverse=True,
    )
    for old in builds[keep_count - 1 :]:
        log(f"removing old build {old}")
        shutil.rmtree(old, ignore_errors=True)
    cutoff = time.time() - 30 * 86400
    for deb in (cache / "debs").glob("*.deb"):
        if deb.stat().st_mtime < cutoff:
            deb.unlink(missing_ok=True)


_ENSURED: dict[Path, GuestArtifacts] = {}


def ensure_guest_artifacts(cache_root: Path | None = None) -> GuestArtifacts:
    """The cached guest for the current package versions, building it when needed.

    Checked once per process and cache directory (about 1 s of apt-cache queries).
    """
    cache = cache_root or default_cache_root()
    if cache in _ENSURED and _ENSURED[cache].initrd.exists():
        return _ENSURED[cache]
    cache.mkdir(parents=True, exist_ok=True)
    with file_lock(cache / ".lock"):
        ensure_host_tools()
        inputs = image_inputs()
        out = cache / image_key(inputs)
        manifest_path = out / "manifest.json"
        if not manifest_path.exists():
            build_image(inputs, out, cache / "debs")
            prune_old_builds(cache, keep=out)
        manifest = json.loads(manifest_path.read_text())
    artifacts = GuestArtifacts(
        kernel=out / "vmlinux",
        initrd=out / "initramfs.cpio",
        kernel_version=str(manifest["kernel_version"]),
        manifest=manifest,
    )
    _ENSURED[cache] = artifacts
    return artifacts


def main() -> int:
    started = time.monotonic()
    artifacts = ensure_guest_artifacts()
    print(f"build   {artifacts.manifest.get('build_seconds')} s (when it was built)")
    print(f"kernel  {artifacts.kernel}")
    print(f"initrd  {artifacts.initrd} ({artifacts.initrd.stat().st_size / 1e6:.1f} MB)")
    print(f"version {artifacts.kernel_version}")
    print(f"took    {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
