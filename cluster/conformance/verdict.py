"""A conformance test's verdict and the evidence that backs it."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Verdict(Enum):
    PASS = "pass"
    FAIL = "fail"
    NOT_APPLICABLE = "n/a"  # the initiator does not use the feature
    INFORMATIVE = "info"  # recorded, not judged: the RFC leaves the choice to the initiator


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    message: str
    # The PDUs (summaries) and timings the verdict rests on.
    evidence: tuple[dict[str, object], ...] = field(default=())


def passed(message: str, *evidence: dict[str, object]) -> Outcome:
    return Outcome(Verdict.PASS, message, evidence)


def failed(message: str, *evidence: dict[str, object]) -> Outcome:
    return Outcome(Verdict.FAIL, message, evidence)


def not_applicable(message: str, *evidence: dict[str, object]) -> Outcome:
    return Outcome(Verdict.NOT_APPLICABLE, message, evidence)


def informative(message: str, *evidence: dict[str, object]) -> Outcome:
    return Outcome(Verdict.INFORMATIVE, message, evidence)
