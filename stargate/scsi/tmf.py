"""Task management functions (SAM-5, RFC 7143 11.5/11.6) as pure decisions.

Given the task set of a target (every command it has received and not yet finished) and a
TASK MANAGEMENT FUNCTION request, :func:`decide` says which tasks end, which unit attentions
are established for whom, what happens to reservations, and the iSCSI response code. It does
no I/O and mutates nothing: the transport (stargate.session / server) applies the outcome,
which keeps these rules testable as tables.

Policy choices, all SAM-5 defaults for a simple disk:

- TAS = 0 in the control mode page: tasks aborted on behalf of another I_T nexus end without
  a status; that nexus gets COMMANDS CLEARED BY ANOTHER INITIATOR instead.
- Only tasks the requester sent *before* the function (CmdSN lower than the function's
  CmdSN) are its to abort: later ones go on. Other sessions have their own CmdSN spaces,
  so all of their tasks on the LU are affected.
- A task whose status is already produced (``COMPLETED``) is no longer in the task set: it
  is not aborted, and ABORT TASK naming it gets TASK DOES NOT EXIST (as Linux LIO does).
- LOGICAL UNIT RESET releases the SPC-2 reservation and keeps persistent reservations
  (SPC-4: registrations survive resets); TARGET COLD RESET is a power cycle: every
  nexus hears POWER ON OCCURRED and the target drops every connection (RFC 7143 11.5.1).
- ErrorRecoveryLevel is 0 here, so TASK REASSIGN is answered "allegiance reassignment not
  supported"; ACA (NACA = 1) is not supported, so CLEAR ACA is "function not supported".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from iscsicore.pdu import RESERVED_TAG, TmfFunction, TmfResponse
from iscsicore.scsi.sense import Asc
from iscsicore.seqnum import in_window, sn_lt
from stargate.scsi.command import Nexus
from stargate.scsi.ua import UnitAttentionQueues


class TaskState(Enum):
    PENDING = "pending"  # received, waiting for its turn (CmdSN order, task attributes)
    WAITING_FOR_DATA = "waiting for data"  # R2Ts outstanding
    RUNNING = "running"  # executing in the logical unit
    COMPLETED = "completed"  # status produced, possibly not yet sent


@dataclass(frozen=True, slots=True)
class Task:
    """One command of the task set, as the transport sees it."""

    itt: int
    nexus: Nexus
    lun: int
    cmd_sn: int
    state: TaskState = TaskState.RUNNING

    @property
    def active(self) -> bool:
        return self.state is not TaskState.COMPLETED


@dataclass(frozen=True, slots=True)
class TmfRequest:
    """A TASK MANAGEMENT FUNCTION request and the CmdSN window of its session.

    ``cmd_sn`` is the request's own CmdSN; ``exp_cmd_sn`` .. ``max_cmd_sn`` the session's
    window when it arrived (for ABORT TASK of a command that never arrived).
    """

    function: TmfFunction | int
    nexus: Nexus
    lun: int
    cmd_sn: int
    referenced_task_tag: int = RESERVED_TAG
    ref_cmd_sn: int = 0
    exp_cmd_sn: int = 0
    max_cmd_sn: int = 0


@dataclass(frozen=True, slots=True)
class UnitAttentionNotice:
    """Establish ``code`` for ``nexuses``."""

    code: Asc
    nexuses: frozenset[Nexus]


@dataclass(frozen=True, slots=True)
class TmfOutcome:
    """What the transport does: end ``aborted`` (without a status for other nexuses' tasks,
    TAS = 0), establish ``unit_attentions``, then send ``response``."""

    response: TmfResponse
    aborted: tuple[Task, ...] = ()
    unit_attentions: tuple[UnitAttentionNotice, ...] = ()
    # ABORT TASK of a command that never arrived: treat this CmdSN as received so the
    # session's command window does not stall on the hole (RFC 7143 11.6.1 b).
    consider_received_cmd_sn: int | None = None
    release_spc2_reservation: bool = False  # logical unit and target resets (SPC-2)
    reset_logical_unit_state: bool = False  # mode parameters etc. back to defaults
    power_on: bool = False  # cold reset: forget every UA and nexus, as after power-up
    close_all_connections: bool = False  # cold reset (RFC 7143 11.5.1)
    aborted_by_nexus: dict[Nexus, tuple[Task, ...]] = field(default_factory=dict)

    def apply_unit_attentions(self, queues: UnitAttentionQueues) -> None:
        """Establish the outcome's unit attentions in ``queues`` (one per logical unit)."""
        if self.power_on:
            queues.power_on(Asc.POWER_ON_OCCURRED)
            return
        for notice in self.unit_attentions:
            queues.establish_for_each(notice.nexuses, notice.code)


def decide(
    request: TmfRequest,
    task_set: Iterable[Task],
    *,
    known_luns: Iterable[int] = (0,),
    target_nexuses: Iterable[Nexus] = (),
    allow_target_reset: bool = True,
) -> TmfOutcome:
    """The outcome of ``request`` against ``task_set`` (the tasks of the whole target).

    ``target_nexuses`` are every I_T nexus of the target (logged-in sessions and those with
    state, e.g. registrations), whom resets must tell; nexuses owning tasks are added.
    """
    tasks = tuple(task_set)
    luns = frozenset(known_luns)
    requester = request.nexus
    everyone = frozenset(target_nexuses) | {t.nexus for t in tasks}
    others = everyone - {requester}

    try:
        function = TmfFunction(request.function)
    except ValueError:
        return TmfOutcome(TmfResponse.NOT_SUPPORTED)

    if function is TmfFunction.ABORT_TASK:
        return _abort_task(request, requester, tasks)
    if function is TmfFunction.TASK_REASSIGN:
        return TmfOutcome(TmfResponse.REASSIGNMENT_NOT_SUPPORTED)

    if function in (TmfFunction.TARGET_WARM_RESET, TmfFunction.TARGET_COLD_RESET):
        if not allow_target_reset:
            return TmfOutcome(TmfResponse.AUTHORIZATION_FAILED)
        aborted = tuple(t for t in tasks if t.active and _before(t, request, requester))
        if function is TmfFunction.TARGET_COLD_RESET:
            return _outcome(
                aborted,
                (),
                release_spc2_reservation=True,
                reset_logical_unit_state=True,
                power_on=True,
                close_all_connections=True,
            )
        return _outcome(
            aborted,
            (UnitAttentionNotice(Asc.SCSI_BUS_RESET_OCCURRED, others),),
            release_spc2_reservation=True,
            reset_logical_unit_state=True,
        )

    # The rest address one logical unit.
    if request.lun not in luns:
        return TmfOutcome(TmfResponse.LUN_DOES_NOT_EXIST)
    on_lun = [t for t in tasks if t.lun == request.lun and t.active]

    if function is TmfFunction.CLEAR_ACA:
        return TmfOutcome(TmfResponse.NOT_SUPPORTED)
    if function is TmfFunction.ABORT_TASK_SET:
        mine = tuple(t for t in on_lun if t.nexus == requester and _before(t, request, requester))
        return _outcome(mine, ())
    if function is TmfFunction.CLEAR_TASK_SET:
        cleared = tuple(t for t in on_lun if _before(t, request, requester))
        victims = frozenset(t.nexus for t in cleared) - {requester}
        notices = (UnitAttentionNotice(Asc.COMMANDS_CLEARED_BY_ANOTHER_INITIATOR, victims),)
        return _outcome(cleared, notices if victims else ())
    # LOGICAL UNIT RESET: SAM-5 6.4 "a unit attention condition for all I_T nexuses", the
    # requester's included (LIO does so; libiscsi's MultipathIO.Reset checks it).
    cleared = tuple(t for t in on_lun if _before(t, request, requester))
    return _outcome(
        cleared,
        (UnitAttentionNotice(Asc.BUS_DEVICE_RESET, everyone | {requester}),),
        release_spc2_reservation=True,
        reset_logical_unit_state=True,
    )


def tasks_of_nexuses(
    task_set: Iterable[Task], nexuses: Iterable[Nexus], lun: int
) -> tuple[Task, ...]:
    """The active tasks on ``lun`` from ``nexuses``: what PREEMPT AND ABORT ends for the
    nexuses whose registrations it removed (SPC-4)."""
    wanted = frozenset(nexuses)
    return tuple(t for t in task_set if t.active and t.lun == lun and t.nexus in wanted)


def _before(task: Task, request: TmfRequest, requester: Nexus) -> bool:
    """Whether ``task`` is within reach of the function: the requester's own tasks only if
    sent before it; other sessions' tasks always (their CmdSNs are another sequence)."""
    return task.nexus != requester or sn_lt(task.cmd_sn, request.cmd_sn)


def _abort_task(request: TmfRequest, requester: Nexus, tasks: tuple[Task, ...]) -> TmfOutcome:
    # Task tags are unique within a session only: look in the requester's own tasks.
    for task in tasks:
        if task.nexus == requester and task.itt == request.referenced_task_tag:
            if task.active:
                return _outcome((task,), ())
            return TmfOutcome(TmfResponse.TASK_DOES_NOT_EXIST)
    # Not here. If its CmdSN is in the window and before this request, the command was
    # lost on the way: count it as received (and so aborted) to unblock the window.
    if in_window(request.ref_cmd_sn, request.exp_cmd_sn, request.max_cmd_sn) and sn_lt(
        request.ref_cmd_sn, request.cmd_sn
    ):
        return TmfOutcome(TmfResponse.COMPLETE, consider_received_cmd_sn=request.ref_cmd_sn)
    return TmfOutcome(TmfResponse.TASK_DOES_NOT_EXIST)


def _outcome(
    aborted: tuple[Task, ...],
    notices: tuple[UnitAttentionNotice, ...],
    **flags: bool,
) -> TmfOutcome:
    by_nexus: dict[Nexus, list[Task]] = {}
    for task in aborted:
        by_nexus.setdefault(task.nexus, []).append(task)
    return TmfOutcome(
        TmfResponse.COMPLETE,
        aborted=aborted,
        unit_attentions=tuple(n for n in notices if n.nexuses),
        aborted_by_nexus={key: tuple(value) for key, value in by_nexus.items()},
        **flags,
    )
