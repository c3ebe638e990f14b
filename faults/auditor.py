"""The initiator auditor: initiator behaviour worth a bug report, noticed at the target.

- ``isid_churn``: a new ISID on every reconnect (the initiator leaks sessions; reinstatement
  needs the same ISID);
- ``reconnect_storm``: many logins of one initiator to one target in a short time;
- ``no_backoff``: reconnects at a steady short interval that never grows;
- ``unbounded_backoff``: reconnect gaps that keep growing past a sane ceiling (a path that
  came back is left unused for minutes);
- ``duplicate_session``: a login (new ISID) while a session of that initiator to that
  target still exists;
- ``cmd_sn_out_of_window``: commands whose CmdSN lay outside [ExpCmdSN, MaxCmdSN];
- ``ignored_async_logout``: asked to log out (AsyncEvent 1), it did not, and was dropped.
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

STORM_WINDOW = 10.0  # seconds
STORM_LOGINS = 10
CHURN_LOGINS = 4  # this many logins in a row, each with an ISID never seen before
NO_BACKOFF_RECONNECTS = 6  # this many reconnect gaps, none growing
MAX_FINDINGS = 500
BACKOFF_CEILING = 30.0  # seconds: a reconnect gap past this, after growing ones, is too long


@dataclass(frozen=True, slots=True)
class Finding:
    time: float
    kind: str
    initiator: str
    target: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "kind": self.kind,
            "initiator": self.initiator,
            "target": self.target,
            "detail": self.detail,
        }


@dataclass
class _Pair:
    """What the auditor remembers of one initiator and one target."""

    logins: deque[float] = field(default_factory=lambda: deque(maxlen=64))
    isids_seen: set[int] = field(default_factory=set)
    fresh_isid_streak: int = 0
    live_isids: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    reported: set[str] = field(default_factory=set)


class InitiatorAuditor:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.findings: deque[Finding] = deque(maxlen=MAX_FINDINGS)
        self.counts: dict[str, int] = defaultdict(int)
        self._pairs: dict[tuple[str, str], _Pair] = defaultdict(_Pair)

    def _report(self, kind: str, initiator: str, target: str, detail: str) -> None:
        self.findings.append(Finding(self.clock(), kind, initiator, target, detail))
        self.counts[kind] += 1

    def login(self, initiator: str, target: str, isid: int) -> None:
        pair = self._pairs[(initiator, target)]
        now = self.clock()
        others_live = [i for i, n in pair.live_isids.items() if n > 0 and i != isid]
        if others_live:
            self._report(
                "duplicate_session",
                initiator,
                target,
                f"login with ISID {isid:#014x} while {len(others_live)} other session(s) live",
            )
        if isid in pair.isids_seen:
            pair.fresh_isid_streak = 0
        else:
            pair.fresh_isid_streak += 1 if pair.isids_seen else 0
            pair.isids_seen.add(isid)
            if pair.fresh_isid_streak == CHURN_LOGINS:
                self._report(
                    "isid_churn",
                    initiator,
                    target,
                    f"{CHURN_LOGINS} reconnects in a row, each with a new ISID",
                )
        pair.live_isids[isid] += 1
        pair.logins.append(now)
        recent = [t for t in pair.logins if now - t <= STORM_WINDOW]
        if len(recent) == STORM_LOGINS:
            self._report(
                "reconnect_storm",
                initiator,
                target,
                f"{STORM_LOGINS} logins within {STORM_WINDOW:g} s",
            )
        self._check_backoff(pair, initiator, target)
        gaps = [b - a for a, b in itertools.pairwise(pair.logins)]
        last = gaps[-NO_BACKOFF_RECONNECTS:]
        steady = len(last) == NO_BACKOFF_RECONNECTS and max(last) < 2.0
        if (
            steady
            and "no_backoff" not in pair.reported
            and all(b <= a * 1.2 for a, b in itertools.pairwise(last))
        ):
            pair.reported.add("no_backoff")
            self._report(
                "no_backoff",
                initiator,
                target,
                f"{len(last)} reconnect gaps of {min(last):.2f}-{max(last):.2f} s, none growing",
            )

    def _check_backoff(self, pair: _Pair, initiator: str, target: str) -> None:
        gaps = [b - a for a, b in itertools.pairwise(pair.logins)][-3:]
        if (
            len(gaps) == 3
            and gaps[-1] > BACKOFF_CEILING
            and gaps[0] < gaps[1] < gaps[2]
            and "unbounded_backoff" not in pair.reported
        ):
            pair.reported.add("unbounded_backoff")
            self._report(
                "unbounded_backoff",
                initiator,
                target,
                "reconnect gaps " + ", ".join(f"{gap:.0f}" for gap in gaps) + " s, still growing",
            )

    def session_ended(
        self,
        initiator: str,
        target: str,
        isid: int,
        reason: str,
        *,
        out_of_window: int = 0,
    ) -> None:
        pair = self._pairs[(initiator, target)]
        if pair.live_isids.get(isid, 0) > 0:
            pair.live_isids[isid] -= 1
        if out_of_window:
            self._report(
                "cmd_sn_out_of_window", initiator, target, f"{out_of_window} command(s) ignored"
            )
        if "did not log out when asked" in reason:
            self._report("ignored_async_logout", initiator, target, reason)

    def document(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "findings": [finding.to_dict() for finding in self.findings],
        }
