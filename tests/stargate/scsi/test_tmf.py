"""Task management outcomes as tables: which tasks end, who hears what, the response."""

from __future__ import annotations

import pytest

from iscsicore.pdu import TmfFunction, TmfResponse
from iscsicore.scsi.sense import Asc
from stargate.scsi.lu import Nexus
from stargate.scsi.tmf import (
    Task,
    TaskState,
    TmfOutcome,
    TmfRequest,
    decide,
    tasks_of_nexuses,
)
from stargate.scsi.ua import UnitAttentionQueues

TARGET = "iqn.2010-06.com.nutanix:vmdisk-vd1,t,0x0001"
A = Nexus("iqn.2026-11.test:a,i,0x400000000001", TARGET)
B = Nexus("iqn.2026-11.test:b,i,0x400000000002", TARGET)
C = Nexus("iqn.2026-11.test:c,i,0x400000000003", TARGET)  # logged in, no tasks

# A's session: CmdSN 10..13 sent; the TMF carries CmdSN 14 (window 14..45).
A10 = Task(itt=0x100, nexus=A, lun=0, cmd_sn=10, state=TaskState.RUNNING)
A11 = Task(itt=0x101, nexus=A, lun=0, cmd_sn=11, state=TaskState.WAITING_FOR_DATA)
A12 = Task(itt=0x102, nexus=A, lun=0, cmd_sn=12, state=TaskState.COMPLETED)
A13 = Task(itt=0x103, nexus=A, lun=1, cmd_sn=13, state=TaskState.PENDING)
A15 = Task(itt=0x105, nexus=A, lun=0, cmd_sn=15, state=TaskState.PENDING)  # after the TMF
# B's session has its own CmdSN sequence.
B90 = Task(itt=0x100, nexus=B, lun=0, cmd_sn=90, state=TaskState.RUNNING)
B91 = Task(itt=0x200, nexus=B, lun=0, cmd_sn=91, state=TaskState.PENDING)
TASK_SET = (A10, A11, A12, A13, A15, B90, B91)
LUNS = (0, 1)


def request(function: TmfFunction | int, *, lun: int = 0, **fields: int) -> TmfRequest:
    defaults = {"cmd_sn": 14, "exp_cmd_sn": 14, "max_cmd_sn": 45}
    return TmfRequest(function=function, nexus=A, lun=lun, **(defaults | fields))


def decide_for(req: TmfRequest, task_set: tuple[Task, ...] = TASK_SET) -> TmfOutcome:
    return decide(req, task_set, known_luns=LUNS, target_nexuses=(A, B, C))


def notices(outcome: TmfOutcome) -> dict[Asc, frozenset[Nexus]]:
    return {notice.code: notice.nexuses for notice in outcome.unit_attentions}


# ---- ABORT TASK ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("tag", "ref_cmd_sn", "response", "aborted", "consider_received"),
    [
        (0x100, 10, TmfResponse.COMPLETE, (A10,), None),  # running: aborted
        (0x101, 11, TmfResponse.COMPLETE, (A11,), None),  # waiting for Data-Out
        (0x103, 13, TmfResponse.COMPLETE, (A13,), None),  # another LUN, same session
        (0x102, 12, TmfResponse.TASK_DOES_NOT_EXIST, (), None),  # its status is out already
        (0x200, 91, TmfResponse.TASK_DOES_NOT_EXIST, (), None),  # B's tag, not A's
        (0x999, 9, TmfResponse.TASK_DOES_NOT_EXIST, (), None),  # long gone (below window)
        (0x999, 14, TmfResponse.TASK_DOES_NOT_EXIST, (), None),  # not before the TMF
        (0x999, 46, TmfResponse.TASK_DOES_NOT_EXIST, (), None),  # beyond MaxCmdSN
    ],
)
def test_abort_task(
    tag: int,
    ref_cmd_sn: int,
    response: TmfResponse,
    aborted: tuple[Task, ...],
    consider_received: int | None,
) -> None:
    outcome = decide_for(
        request(TmfFunction.ABORT_TASK, referenced_task_tag=tag, ref_cmd_sn=ref_cmd_sn)
    )
    assert outcome.response is response
    assert outcome.aborted == aborted
    assert outcome.consider_received_cmd_sn == consider_received
    assert outcome.unit_attentions == ()


def test_abort_task_of_a_command_lost_on_the_way_fills_the_hole() -> None:
    """RefCmdSN in the window and before the TMF: count it received (RFC 7143 11.6.1 b)."""
    outcome = decide_for(
        request(
            TmfFunction.ABORT_TASK,
            referenced_task_tag=0x999,
            ref_cmd_sn=15,
            cmd_sn=16,
            exp_cmd_sn=15,
            max_cmd_sn=46,
        )
    )
    assert outcome.response is TmfResponse.COMPLETE
    assert outcome.consider_received_cmd_sn == 15
    assert outcome.aborted == ()


def test_abort_task_window_wraps_around_serial_arithmetic() -> None:
    outcome = decide_for(
        request(
            TmfFunction.ABORT_TASK,
            referenced_task_tag=0x999,
            ref_cmd_sn=0xFFFFFFFF,
            cmd_sn=1,
            exp_cmd_sn=0xFFFFFFFE,
            max_cmd_sn=30,
        )
    )
    assert outcome.response is TmfResponse.COMPLETE
    assert outcome.consider_received_cmd_sn == 0xFFFFFFFF


# ---- task set functions ------------------------------------------------------------------
# function, LUN -> (response, aborted tasks, {UA: nexuses}, SPC-2 released, LU state reset)
TABLE = [
    (TmfFunction.ABORT_TASK_SET, 0, TmfResponse.COMPLETE, (A10, A11), {}, False),
    (TmfFunction.ABORT_TASK_SET, 1, TmfResponse.COMPLETE, (A13,), {}, False),
    (
        TmfFunction.CLEAR_TASK_SET,
        0,
        TmfResponse.COMPLETE,
        (A10, A11, B90, B91),
        {Asc.COMMANDS_CLEARED_BY_ANOTHER_INITIATOR: frozenset({B})},
        False,
    ),
    (TmfFunction.CLEAR_TASK_SET, 1, TmfResponse.COMPLETE, (A13,), {}, False),
    (
        TmfFunction.LOGICAL_UNIT_RESET,
        0,
        TmfResponse.COMPLETE,
        (A10, A11, B90, B91),
        {Asc.BUS_DEVICE_RESET: frozenset({A, B, C})},
        True,
    ),
    (
        TmfFunction.TARGET_WARM_RESET,
        0,
        TmfResponse.COMPLETE,
        (A10, A11, A13, B90, B91),
        {Asc.SCSI_BUS_RESET_OCCURRED: frozenset({B, C})},
        True,
    ),
    (TmfFunction.CLEAR_ACA, 0, TmfResponse.NOT_SUPPORTED, (), {}, False),
    (
        TmfFunction.TASK_REASSIGN,
        0,
        TmfResponse.REASSIGNMENT_NOT_SUPPORTED,
        (),
        {},
        False,
    ),
    (TmfFunction.ABORT_TASK_SET, 7, TmfResponse.LUN_DOES_NOT_EXIST, (), {}, False),
    (TmfFunction.CLEAR_TASK_SET, 7, TmfResponse.LUN_DOES_NOT_EXIST, (), {}, False),
    (TmfFunction.LOGICAL_UNIT_RESET, 7, TmfResponse.LUN_DOES_NOT_EXIST, (), {}, False),
    (0x0E, 0, TmfResponse.NOT_SUPPORTED, (), {}, False),
]


@pytest.mark.parametrize(("function", "lun", "response", "aborted", "uas", "resets"), TABLE)
def test_task_set_functions(
    function: TmfFunction | int,
    lun: int,
    response: TmfResponse,
    aborted: tuple[Task, ...],
    uas: dict[Asc, frozenset[Nexus]],
    resets: bool,
) -> None:
    outcome = decide_for(request(function, lun=lun))
    assert outcome.response is response
    assert set(outcome.aborted) == set(aborted)
    assert A12 not in outcome.aborted, "a completed task is not in the task set"
    assert A15 not in outcome.aborted, "sent after the TMF: not the TMF's business"
    assert notices(outcome) == uas
    assert outcome.release_spc2_reservation is resets
    assert outcome.reset_logical_unit_state is resets
    assert not outcome.close_all_connections and not outcome.power_on
    assert sum(len(tasks) for tasks in outcome.aborted_by_nexus.values()) == len(aborted)


def test_clear_task_set_without_other_victims_tells_nobody() -> None:
    outcome = decide_for(request(TmfFunction.CLEAR_TASK_SET), task_set=(A10, A11))
    assert outcome.aborted == (A10, A11)
    assert outcome.unit_attentions == ()


def test_target_cold_reset_is_a_power_cycle() -> None:
    outcome = decide_for(request(TmfFunction.TARGET_COLD_RESET))
    assert outcome.response is TmfResponse.COMPLETE
    assert set(outcome.aborted) == {A10, A11, A13, B90, B91}
    assert outcome.power_on and outcome.close_all_connections
    assert outcome.release_spc2_reservation


@pytest.mark.parametrize("function", [TmfFunction.TARGET_WARM_RESET, TmfFunction.TARGET_COLD_RESET])
def test_target_resets_can_be_refused(function: TmfFunction) -> None:
    outcome = decide(request(function), TASK_SET, known_luns=LUNS, allow_target_reset=False)
    assert outcome.response is TmfResponse.AUTHORIZATION_FAILED
    assert outcome.aborted == ()


# ---- applying the unit attentions -----------------------------------------------------------
def test_apply_lun_reset_unit_attentions() -> None:
    queues = UnitAttentionQueues()
    for nexus in (A, B, C):
        queues.consume(nexus)  # past the power-on condition
    decide_for(request(TmfFunction.LOGICAL_UNIT_RESET)).apply_unit_attentions(queues)
    assert queues.pending(A) == Asc.BUS_DEVICE_RESET.value  # the requester too (SAM-5 6.4)
    assert queues.pending(B) == Asc.BUS_DEVICE_RESET.value
    assert queues.pending(C) == Asc.BUS_DEVICE_RESET.value


def test_apply_cold_reset_unit_attentions() -> None:
    queues = UnitAttentionQueues()
    queues.consume(A)
    queues.establish_for(B, Asc.RESERVATIONS_PREEMPTED)
    decide_for(request(TmfFunction.TARGET_COLD_RESET)).apply_unit_attentions(queues)
    for nexus in (A, B):
        assert queues.consume(nexus) == Asc.POWER_ON_OCCURRED.value
        assert queues.consume(nexus) is None


def test_unit_attention_notice_without_nexuses_is_dropped() -> None:
    # A warm reset tells the other nexuses only: with none, no notice at all.
    outcome = decide(request(TmfFunction.TARGET_WARM_RESET), (A10,), known_luns=LUNS)
    assert outcome.unit_attentions == ()


def test_lun_reset_tells_the_requester_even_when_alone() -> None:
    outcome = decide(request(TmfFunction.LOGICAL_UNIT_RESET), (A10,), known_luns=LUNS)
    assert [(n.code, n.nexuses) for n in outcome.unit_attentions] == [
        (Asc.BUS_DEVICE_RESET, frozenset({A}))
    ]


# ---- PREEMPT AND ABORT ---------------------------------------------------------------------
def test_tasks_of_preempted_nexuses() -> None:
    assert tasks_of_nexuses(TASK_SET, [B], lun=0) == (B90, B91)
    assert tasks_of_nexuses(TASK_SET, [A], lun=0) == (A10, A11, A15)
    assert tasks_of_nexuses(TASK_SET, [A], lun=1) == (A13,)
    assert tasks_of_nexuses(TASK_SET, [C], lun=0) == ()
