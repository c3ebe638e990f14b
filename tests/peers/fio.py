"""fio with the libiscsi engine: built once from Debian's source package, then run on URLs.

Debian 12's fio 3.33 is built without the libiscsi engine. `ensure_fio_libiscsi()` builds the
same version from `apt-get source fio` with ``--enable-libiscsi`` and caches the binary outside
the repository (``~/.cache/stargate-emu/fio-libiscsi/fio``); a file lock keeps two test
processes from building at once. `run_fio(url, ...)` runs a job against an iSCSI URL and
returns fio's JSON report.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stargate-emu"
FIO_DIR = CACHE_DIR / "fio-libiscsi"
FIO_BINARY = FIO_DIR / "fio"
BUILD_LOCK = CACHE_DIR / "fio-libiscsi.lock"
BUILD_LOG = FIO_DIR / "build.log"
DEB_SRC_FILE = Path("/etc/apt/sources.list.d/debian-src.sources")
BUILD_PACKAGES = ("libiscsi-dev", "build-essential", "pkg-config", "dpkg-dev", "zlib1g-dev")
BUILD_TIMEOUT_SECONDS = 900.0
LOCK_TIMEOUT_SECONDS = 1200.0


class FioError(RuntimeError):
    """fio could not be built, or a fio run failed; the message carries the output."""


# --- building -------------------------------------------------------------------------------


def fio_has_libiscsi(binary: Path) -> bool:
    try:
        completed = subprocess.run(
            [str(binary), "--enghelp=libiscsi"],
            capture_output=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return completed.returncode == 0


def ensure_fio_libiscsi() -> Path:
    """Path of a fio binary with the libiscsi engine, building it first if needed."""
    if fio_has_libiscsi(FIO_BINARY):
        return FIO_BINARY
    with _build_lock():
        if not fio_has_libiscsi(FIO_BINARY):  # another process may have built it meanwhile
            _build()
    return FIO_BINARY


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with BUILD_LOCK.open("w") as lock_file:
        deadline = time.monotonic() + LOCK_TIMEOUT_SECONDS
        while True:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise FioError(f"{BUILD_LOCK} held for {LOCK_TIMEOUT_SECONDS} s") from None
                time.sleep(1.0)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _build() -> None:
    FIO_DIR.mkdir(parents=True, exist_ok=True)
    with BUILD_LOG.open("w") as log, tempfile.TemporaryDirectory(dir=CACHE_DIR) as scratch:
        build_dir = Path(scratch)

        def step(argv: Sequence[str], cwd: Path = build_dir) -> None:
            log.write(f"$ {' '.join(argv)}\n")
            log.flush()
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            started = time.monotonic()
            try:
                completed = subprocess.run(
                    list(argv),
                    cwd=cwd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    timeout=BUILD_TIMEOUT_SECONDS,
                    check=False,
                )
            except subprocess.TimeoutExpired as error:
                raise FioError(f"{' '.join(argv)} timed out\n{_log_tail()}") from error
            log.write(f"# {time.monotonic() - started:.1f} s\n")
            log.flush()
            if completed.returncode != 0:
                status = f"{' '.join(argv)} exited with {completed.returncode}"
                raise FioError(f"{status}\n{_log_tail()}")

        _ensure_build_packages(step)
        if _ensure_deb_src_entry() or not _source_available(build_dir):
            step([*_as_root(), "apt-get", "update", "-qq"])
        step(["apt-get", "source", "-qq", "fio"])
        source = next((path for path in build_dir.glob("fio-*") if path.is_dir()), None)
        if source is None:
            raise FioError(f"apt-get source fio unpacked nothing\n{_log_tail()}")
        step(["./configure", "--enable-libiscsi", "--disable-native"], cwd=source)
        step(["make", f"-j{os.cpu_count() or 2}", "fio"], cwd=source)
        built = source / "fio"
        if not fio_has_libiscsi(built):
            raise FioError(f"the fio built in {source} has no libiscsi engine\n{_log_tail()}")
        staged = FIO_DIR / "fio.new"
        shutil.copy2(built, staged)
        staged.replace(FIO_BINARY)


def _ensure_build_packages(step: Callable[[Sequence[str]], None]) -> None:
    missing = [package for package in BUILD_PACKAGES if not _dpkg_installed(package)]
    if missing:
        step([*_as_root(), "apt-get", "update", "-qq"])
        step([*_as_root(), "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing])


def _dpkg_installed(package: str) -> bool:
    completed = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package],
        capture_output=True,
        text=True,
        check=False,
    )
    return completed.returncode == 0 and completed.stdout.strip() == "install ok installed"


def _source_available(build_dir: Path) -> bool:
    completed = subprocess.run(
        ["apt-get", "source", "--print-uris", "-qq", "fio"],
        cwd=build_dir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return completed.returncode == 0 and ".dsc" in completed.stdout


def _ensure_deb_src_entry() -> bool:
    """Add deb-src twins of the Debian sources when there are none; True when added."""
    sources_dir = Path("/etc/apt/sources.list.d")
    one_line_sources = [Path("/etc/apt/sources.list"), *sources_dir.glob("*.list")]
    for path in [*one_line_sources, *sources_dir.glob("*.sources")]:
        with contextlib.suppress(OSError):
            text = path.read_text()
            if re.search(r"^\s*deb-src\s|^Types:.*\bdeb-src\b", text, re.MULTILINE):
                return False
    _write_as_root(DEB_SRC_FILE, deb_src_stanzas(sources_dir / "debian.sources"))
    return True


def _write_as_root(path: Path, text: str) -> None:
    if os.geteuid() == 0:
        path.write_text(text)
        return
    subprocess.run(
        [*_as_root(), "tee", str(path)],
        input=text,
        text=True,
        stdout=subprocess.DEVNULL,
        timeout=60,
        check=True,
    )


def deb_src_stanzas(debian_sources: Path) -> str:
    """deb822 stanzas like those of ``debian.sources`` but of type deb-src."""
    stanzas = []
    with contextlib.suppress(OSError):
        for stanza in re.split(r"\n\s*\n", debian_sources.read_text()):
            fields = _deb822_fields(stanza)
            if "deb" in fields.get("Types", "").split() and "URIs" in fields:
                fields["Types"] = "deb-src"
                stanzas.append("\n".join(f"{key}: {value}" for key, value in fields.items()))
    if not stanzas:
        codename = _os_release().get("VERSION_CODENAME", "bookworm")
        stanzas.append(
            "Types: deb-src\nURIs: http://deb.debian.org/debian\n"
            f"Suites: {codename} {codename}-updates\nComponents: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
        )
    return "\n\n".join(stanzas) + "\n"


def _deb822_fields(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in stanza.splitlines():
        if line.startswith("#") or ":" not in line or line[:1].isspace():
            continue
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def _os_release() -> dict[str, str]:
    with contextlib.suppress(OSError):
        return dict(
            (key, value.strip('"'))
            for key, _, value in (
                line.partition("=") for line in Path("/etc/os-release").read_text().splitlines()
            )
        )
    return {}


def _as_root() -> list[str]:
    return [] if os.geteuid() == 0 else ["sudo", "-n"]


def _log_tail(chars: int = 4000) -> str:
    with contextlib.suppress(OSError):
        text = BUILD_LOG.read_text(errors="replace")
        return f"--- {BUILD_LOG} (tail) ---\n{text[-chars:]}"
    return ""


# --- running --------------------------------------------------------------------------------


def fio_filename(url: str) -> str:
    """fio splits file names on ':'; the libiscsi engine wants them escaped as ``\\:``."""
    return url.replace(":", "\\:")


def run_fio(
    url: str,
    *,
    rw: str = "randrw",
    block_size: str = "4k",
    iodepth: int = 8,
    size: str | None = None,
    runtime_seconds: float | None = None,
    verify: str | None = None,
    options: Mapping[str, str | int] | None = None,
    fio_binary: Path | None = None,
    output_dir: Path | None = None,
    timeout: float = 300.0,
) -> dict[str, Any]:
    """Run one fio job on an iSCSI URL with the libiscsi engine; return the parsed JSON.

    ``size`` bounds the bytes per pass (default: the whole LUN); ``runtime_seconds`` makes
    the job time-based. ``verify`` (e.g. ``crc32c``) writes then reads back and checks.
    fio's stdout carries noise from the libiscsi engine, so the JSON goes to a file.
    """
    binary = fio_binary or ensure_fio_libiscsi()
    job: dict[str, str | int] = {
        "name": "job",
        "ioengine": "libiscsi",
        "filename": fio_filename(url),
        "rw": rw,
        "bs": block_size,
        "iodepth": iodepth,
    }
    if size is not None:
        job["size"] = size
    if runtime_seconds is not None:
        job["runtime"] = f"{runtime_seconds}s"
        job["time_based"] = 1
    if verify is not None:
        job["verify"] = verify
        job["do_verify"] = 1
        job["verify_fatal"] = 1
    job.update(options or {})
    with tempfile.TemporaryDirectory(dir=output_dir) as scratch:
        report_path = Path(scratch) / "fio.json"
        argv = [
            str(binary),
            "--output-format=json",
            f"--output={report_path}",
            *(f"--{key}={value}" for key, value in job.items()),
        ]
        try:
            completed = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                # fio leaves its verify state file (local-job-N-verify.state) in its cwd.
                cwd=scratch,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise FioError(f"{' '.join(argv)} timed out after {timeout} s") from error
        report_text = report_path.read_text() if report_path.exists() else ""
    if completed.returncode != 0:
        raise FioError(
            f"{' '.join(argv)} exited with {completed.returncode}\n"
            f"stdout: {completed.stdout.strip()}\nstderr: {completed.stderr.strip()}\n"
            f"report: {report_text[-2000:]}"
        )
    try:
        report: dict[str, Any] = json.loads(report_text)
    except json.JSONDecodeError as error:
        raise FioError(f"fio wrote no JSON report:\n{completed.stdout}\n{report_text}") from error
    return report


def job_errors(report: Mapping[str, Any]) -> list[int]:
    """The ``error`` field of every job in a fio report (0: no error)."""
    return [int(job.get("error", 0)) for job in report.get("jobs", [])]
