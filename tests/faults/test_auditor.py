"""The auditor's reconnect rules with a fake clock (real initiators would take minutes)."""

from __future__ import annotations

from faults.auditor import InitiatorAuditor


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _reconnect(auditor: InitiatorAuditor, clock: FakeClock, gaps: list[float]) -> None:
    for gap in gaps:
        clock.now += gap
        auditor.login("iqn.i", "vd1", 0x1)
        auditor.session_ended("iqn.i", "vd1", 0x1, "connection lost")


def test_storm_and_no_backoff() -> None:
    clock = FakeClock()
    auditor = InitiatorAuditor(clock)
    _reconnect(auditor, clock, [0.2] * 12)
    assert auditor.counts["reconnect_storm"] >= 1
    assert auditor.counts["no_backoff"] == 1
    assert "unbounded_backoff" not in auditor.counts


def test_unbounded_backoff() -> None:
    clock = FakeClock()
    auditor = InitiatorAuditor(clock)
    _reconnect(auditor, clock, [1, 2, 8, 32, 128, 512])
    assert auditor.counts["unbounded_backoff"] == 1
    assert "reconnect_storm" not in auditor.counts and "no_backoff" not in auditor.counts


def test_a_well_behaved_initiator_is_not_reported() -> None:
    clock = FakeClock()
    auditor = InitiatorAuditor(clock)
    _reconnect(auditor, clock, [0.1, 0.5, 1, 2, 4, 8, 8, 8])  # capped back-off, same ISID
    assert auditor.document()["findings"] == []
