"""What a redirector's login faults decide, without a network: scope, loops, drops."""

from __future__ import annotations

from faults import DropMode, Fault, FaultKind
from iscsicore.login import Redirect, Refuse
from iscsicore.pdu import LoginStatus
from redirector.faults import RedirectorFaults, redirector_fault_error

OWN_PORTAL = "127.0.0.9:3261"


def test_scope_and_count() -> None:
    faults = RedirectorFaults(OWN_PORTAL)
    faults.injector.add(Fault(FaultKind.LOGIN_FAIL, vdisk="a", status=0x0302, count=1))
    assert faults.decide("b") is None
    decided = faults.decide("a")
    assert decided is not None and decided.resolution == Refuse(LoginStatus.OUT_OF_RESOURCES)
    assert faults.decide("a") is None  # spent


def test_self_portal_is_a_loop_back_to_the_redirector() -> None:
    faults = RedirectorFaults(OWN_PORTAL)
    faults.injector.add(Fault(FaultKind.LOGIN_REDIRECT, portal="self", status=0x0102))
    decided = faults.decide("a")
    assert decided is not None
    assert decided.resolution == Redirect(f"{OWN_PORTAL},1", permanent=True)


def test_discovery_logins_are_touched_only_by_an_unscoped_drop() -> None:
    faults = RedirectorFaults(OWN_PORTAL)
    faults.injector.add(Fault(FaultKind.LOGIN_FAIL, status=0x0301))
    faults.injector.add(Fault(FaultKind.DROP_CONNECTION, vdisk="a", mode=DropMode.BLACKHOLE))
    assert faults.decide(None) is None
    faults.injector.add(Fault(FaultKind.DROP_CONNECTION, mode=DropMode.CLOSE))
    decided = faults.decide(None)
    assert decided is not None and decided.drop is DropMode.CLOSE


def test_slow_login_draws_its_delay() -> None:
    faults = RedirectorFaults(OWN_PORTAL)
    fault = Fault.from_dict(
        {"kind": "login_delay", "delay": {"distribution": "uniform", "seconds": 1, "high": 2}}
    )
    faults.injector.add(fault)
    decided = faults.decide("a")
    assert decided is not None and decided.resolution is None and 1.0 <= decided.delay <= 2.0


def test_only_login_faults_apply() -> None:
    assert redirector_fault_error(Fault(FaultKind.BUSY)) is not None
    assert redirector_fault_error(Fault(FaultKind.LOGIN_DELAY, opcodes=(0x28,))) is not None
    assert redirector_fault_error(Fault(FaultKind.DROP_CONNECTION)) is None
