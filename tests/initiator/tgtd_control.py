"""Kill and restart a tgtd with its LUN files intact (TgtdTarget.start would recreate them
empty), and freeze it (SIGSTOP) to make a target that is up but silent."""

from __future__ import annotations

import os
import signal

from tests.peers.tgtd import TgtdTarget


def kill(target: TgtdTarget) -> None:
    """SIGKILL tgtd by PID: its connections drop at once, as in a crash."""
    assert target.process is not None
    target.process.kill()


def restart(target: TgtdTarget) -> None:
    """Start tgtd again on the same port, serving the same LUN files."""
    target._start_daemon()  # the shared class has no restart that keeps the data
    target.tgtadm("--op", "new", "--mode", "target", "--tid", str(target.tid), "-T", target.iqn)
    for lun, path in enumerate(target.lun_paths, start=1):
        target.tgtadm(
            "--op", "new", "--mode", "logicalunit", "--tid", str(target.tid),
            "--lun", str(lun), "-b", str(path), "--bstype", target.backing_store,
        )  # fmt: skip
    target.tgtadm("--op", "bind", "--mode", "target", "--tid", str(target.tid), "-I", "ALL")


def freeze(target: TgtdTarget, frozen: bool) -> None:
    assert target.process is not None
    os.kill(target.process.pid, signal.SIGSTOP if frozen else signal.SIGCONT)
