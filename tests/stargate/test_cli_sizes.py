"""vDisk sizes the store cannot hold are refused by the CLI before anything is created
(issue 13, finding 6): a message naming the problem, exit status 2, no .img/.json left."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.conftest import unique_cluster_base
from topology.spec import ClusterSpec

# A process that wrongly accepts the size serves until killed: this bounds the test.
RUN_TIMEOUT = 20.0


def _stargate(*args: str) -> tuple[int, str]:
    """Exit status and stderr of `python -m stargate ARGS` (-9 when it had to be killed)."""
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "stargate", *args],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as expired:  # run() killed it
        return -9, str(expired.stderr or "")
    return completed.returncode, completed.stderr


def _target(*args: str) -> tuple[int, str]:
    return _stargate("target", "--portal", "127.0.0.1:0", *args)


def _filesystem_size(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_blocks * stats.f_frsize


def test_absurd_size_is_refused_without_a_traceback(tmp_data_dir: Path) -> None:
    status, stderr = _target("--data-dir", str(tmp_data_dir), "--vdisk", "v:9999999999P")
    assert status == 2, stderr
    assert "Traceback" not in stderr
    assert "v" in stderr and "limit" in stderr
    assert list(tmp_data_dir.iterdir()) == []


def test_size_larger_than_the_filesystem_is_refused(tmp_data_dir: Path) -> None:
    # 1P on /dev/shm (the test data directory when it exists) or any disk of this machine.
    assert _filesystem_size(tmp_data_dir) < 1 << 50
    status, stderr = _target("--data-dir", str(tmp_data_dir), "--vdisk", "v:1P")
    assert status == 2, stderr
    assert "does not fit the filesystem" in stderr and "Traceback" not in stderr
    assert list(tmp_data_dir.iterdir()) == []


def test_no_vdisk_is_created_when_a_later_one_is_refused(tmp_data_dir: Path) -> None:
    status, stderr = _target(
        "--data-dir", str(tmp_data_dir), "--vdisk", "ok:1M", "--vdisk", "huge:1P"
    )
    assert status == 2, stderr
    assert "huge" in stderr
    assert list(tmp_data_dir.iterdir()) == []


def test_memory_vdisk_larger_than_memory_is_refused() -> None:
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert memory < 1 << 50
    status, stderr = _target("--memory", "--vdisk", "v:1P")
    assert status == 2, stderr
    assert "memory" in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("size", ["1P", "9999999999P"])
def test_vm_create_refuses_sizes_the_filesystem_cannot_hold(tmp_data_dir: Path, size: str) -> None:
    directory = tmp_data_dir / "cluster"
    ClusterSpec.create(directory, 1, base_address=unique_cluster_base(1))
    status, stderr = _stargate(
        "vm", "create", "big", "--dir", str(directory), "--node", "1", "--size", size
    )
    assert status == 2, stderr
    assert "Traceback" not in stderr
    assert list((directory / "vdisks").iterdir()) == []
    assert not (directory / "vms" / "big.json").exists()
