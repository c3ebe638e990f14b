"""Judge of the failover suite: the data the target holds, the path the initiator's
re-logins took (the redirector's log), and the pause, timed at both ends."""

from __future__ import annotations

from itertools import pairwise

from cluster.conformance.failover import FailoverEvidence
from cluster.conformance.verdict import Outcome, failed, passed
from cluster.conformance.workloads import CHUNK_BYTES

DEAD_AFTER = "did not re-login through the redirector"


def _data_problems(evidence: FailoverEvidence) -> list[str]:
    written = evidence.run.written
    if written is None:
        return []  # the command driver: its data is its own
    if not written:
        return ["the initiator completed no write"]
    if evidence.data is None:
        return [f"the vDisk could not be read back: {evidence.read_error}"]
    problems = []
    for chunk, pattern in sorted(written.items()):
        stored = evidence.data[chunk * CHUNK_BYTES : (chunk + 1) * CHUNK_BYTES]
        if stored != bytes([pattern]) * CHUNK_BYTES:
            wrong = sum(1 for byte in stored if byte != pattern)
            problems.append(f"chunk {chunk}: {wrong} bytes are not 0x{pattern:02x}")
    return problems


def _timings(evidence: FailoverEvidence) -> dict[str, object]:
    def since(mark: float | None, start: float | None) -> float | None:
        return None if mark is None or start is None else round(mark - start, 3)

    claims = sorted(evidence.epochs, key=lambda item: item.claimed_at)
    # At the target: from the last write under one epoch to the claim of the next.
    gaps = [
        round(later.claimed_at - earlier.last_write_at, 3)
        for earlier, later in pairwise(claims)
        if earlier.last_write_at
    ]
    return {
        "failure": evidence.failure.value,
        "served_by_remote_after_s": since(evidence.moved_at, evidence.failed_at),
        "served_at_home_after_revive_s": since(evidence.back_at, evidence.revived_at),
        "client_slowest_io_s": evidence.run.longest_io,
        "client_ios": evidence.run.ios,
        "target_write_gaps_s": gaps,
        "epochs": [
            {
                "node": item.node,
                "epoch": item.epoch,
                "claimed_at_s": since(item.claimed_at, evidence.started_at),
                "writes": item.writes,
                "last_write_at_s": since(item.last_write_at or None, evidence.started_at),
            }
            for item in claims
        ],
        "redirects": [
            {"at_s": since(item.at, evidence.started_at), "to": item.portal}
            for item in evidence.redirects
        ],
        "timeline": list(evidence.timeline),
    }


def failover_judged(evidence: FailoverEvidence) -> Outcome:
    """Pass: the vDisk moved to a remote CVM and back home, each move by a login through
    the original portal (node 1's redirector), and the target holds every chunk the
    initiator wrote."""
    timing = _timings(evidence)
    run = evidence.run
    driver: dict[str, object] = {"driver_exit_status": run.exit_status, "driver_errors": run.errors}
    if evidence.failed_at is None:
        return failed("the initiator never got node 1 to serve its vDisk", timing, driver)
    stopped_at = evidence.stopped_at
    gave_up = stopped_at is None or evidence.run_ended_at < stopped_at
    if gave_up and (evidence.moved_at is None or evidence.back_at is None):
        ended = evidence.run_ended_at - evidence.failed_at
        lines = run.output.strip().splitlines()
        why = "; ".join(run.errors) or (lines[-1] if lines else "no reason given")
        return failed(
            f"the initiator gave up {ended:.2f} s after the {evidence.failure.value}: {why}",
            timing,
            driver,
        )
    after_failure = [r for r in evidence.redirects if r.at >= evidence.failed_at]
    if evidence.moved_at is None:
        waited = "" if run.longest_io is None else f" (its slowest I/O took {run.longest_io:.1f} s)"
        return failed(
            f"no remote CVM served the vDisk after the {evidence.failure.value}: the "
            f"initiator did not log in again{waited}",
            timing,
            driver,
        )
    if not any(r.portal in evidence.remote_cvms for r in after_failure):
        return failed(f"failed over, but {DEAD_AFTER} to a remote CVM", timing, driver)
    revived = evidence.revived_at or evidence.failed_at
    if evidence.back_at is None:
        return failed("no failback: node 1 did not serve the vDisk again", timing, driver)
    if not any(r.portal == evidence.home_cvm and r.at >= revived for r in evidence.redirects):
        return failed(f"failed back, but {DEAD_AFTER} to node 1's CVM", timing, driver)
    problems = _data_problems(evidence)
    if problems:
        return failed("data: " + "; ".join(problems[:4]), timing, driver)
    checked = "" if run.written is None else f"{len(run.written)} chunks verified at the target; "
    slowest = "" if run.longest_io is None else f"; slowest client I/O {run.longest_io:.2f} s"
    moved = timing["served_by_remote_after_s"]
    gaps = ", ".join(f"{gap:.2f}" for gap in timing["target_write_gaps_s"])  # type: ignore[attr-defined]
    return passed(
        f"{checked}re-logins via the redirector: remote CVM {moved} s after the "
        f"{evidence.failure.value}, home again after the stable window; write gaps at the "
        f"target {gaps} s{slowest}",
        timing,
        driver,
    )
