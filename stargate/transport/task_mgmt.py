"""Task management: the function decided by `stargate.scsi.tmf` over the task set of the
whole target (every session of the target, every LUN), then applied here (as LIO's
iscsi_target_tmr.c): tasks ended, CmdSNs counted as received, unit attentions, resets.
A function addressed to a logical unit touches that LUN only; target resets every LUN."""

from __future__ import annotations

from iscsicore.pdu import TaskMgmtRequest, TaskMgmtResponse, TmfFunction, TmfResponse
from iscsicore.scsi.opcodes import ScsiStatus
from stargate.scsi import tmf
from stargate.scsi.ua import UnitAttentionQueues
from stargate.tasks import ScsiTask, TaskPhase
from stargate.transport.exchanges import Exchanges
from stargate.transport.state import StopBatch

# Task management functions that end every task the requester sent before them.
_TASK_SET_FUNCTIONS = frozenset(
    {
        TmfFunction.ABORT_TASK_SET,
        TmfFunction.CLEAR_TASK_SET,
        TmfFunction.LOGICAL_UNIT_RESET,
        TmfFunction.TARGET_WARM_RESET,
    }
)
# Task management functions that address the target, not one logical unit.
_TARGET_FUNCTIONS = frozenset({TmfFunction.TARGET_WARM_RESET, TmfFunction.TARGET_COLD_RESET})
_TASK_STATES = {
    TaskPhase.WAITING_FOR_SLOT: tmf.TaskState.PENDING,
    TaskPhase.RECEIVING: tmf.TaskState.WAITING_FOR_DATA,
    TaskPhase.SYNCING: tmf.TaskState.RUNNING,
    TaskPhase.HELD: tmf.TaskState.RUNNING,
}


class TaskManagement(Exchanges):
    def _on_task_management(self, pdu: TaskMgmtRequest) -> None:
        if self.routes is None or self.target is None:
            response = TmfResponse.REJECTED  # discovery session: no tasks, no LUs
            outcome = None
        else:
            outcome = self._decide_task_management(pdu)
            response = outcome.response
        exp_cmd_sn, max_cmd_sn = self._window()
        self._append(
            TaskMgmtResponse(
                response=response,
                itt=pdu.itt,
                stat_sn=self._stat_sn.take(),
                exp_cmd_sn=exp_cmd_sn,
                max_cmd_sn=max_cmd_sn,
            )
        )
        if outcome is not None and outcome.close_all_connections:
            self._closing_reason = "target cold reset"
            raise StopBatch

    def _decide_task_management(self, pdu: TaskMgmtRequest) -> tmf.TmfOutcome:
        """Decide over the task set of the whole target, then apply the outcome."""
        assert self.routes is not None and self.target is not None
        connections: list[TaskManagement] = [self]
        if self.directory is not None:
            connections += [
                c for c in self.directory.connections_of(self.target.name) if c is not self
            ]
        by_nexus = {connection.nexus: connection for connection in connections}
        window = self._cmd_sn_window
        route = self.routes.of(pdu.lun)
        request = tmf.TmfRequest(
            function=pdu.function,
            nexus=self.nexus,
            # A LUN field the target does not serve names no LUN (-1): LUN DOES NOT EXIST.
            lun=route.number if route is not None else -1,
            cmd_sn=pdu.cmd_sn,
            referenced_task_tag=pdu.referenced_task_tag,
            ref_cmd_sn=pdu.ref_cmd_sn,
            exp_cmd_sn=window.exp_cmd_sn,
            max_cmd_sn=window.max_cmd_sn,
        )
        task_set = [task for c in connections for task in c.task_set_entries()]
        outcome = tmf.decide(
            request, task_set, known_luns=self.routes.numbers, target_nexuses=by_nexus
        )
        if outcome.consider_received_cmd_sn is not None:
            # A command lost on the way, or still held behind a gap: it will never run.
            displaced = window.consider_received(outcome.consider_received_cmd_sn)
            if displaced is not None:
                self._forget_held([displaced])
        elif (
            pdu.immediate
            and pdu.function in _TASK_SET_FUNCTIONS
            and outcome.response == TmfResponse.COMPLETE
        ):
            # Commands sent before it but held behind a gap are aborted with the rest.
            self._forget_held(window.consider_received_before(pdu.cmd_sn))
        for nexus, tasks in outcome.aborted_by_nexus.items():
            owner = by_nexus.get(nexus)
            if owner is not None:
                owner.abort_tasks({task.itt for task in tasks})
        if pdu.function in _TARGET_FUNCTIONS:
            affected = self.routes.routes
        else:
            affected = (route,) if route is not None else ()
        for unit in (r.lu for r in affected):
            if outcome.reset_logical_unit_state or outcome.release_spc2_reservation:
                # Mode pages to defaults, SPC-2 reservation released, BUS DEVICE RESET for
                # the other nexuses (the logical unit's own rules).
                unit.logical_unit_reset(self.nexus)
            queues = unit.unit_attentions
            # The decision's notices go to per-nexus queues (another implementation of the
            # protocol, e.g. a test's, gets none).
            if isinstance(queues, UnitAttentionQueues):
                outcome.apply_unit_attentions(queues)
        if outcome.close_all_connections:
            for other in connections[1:]:
                other.close("target cold reset")
        return outcome

    def task_set_entries(self) -> list[tmf.Task]:
        """This connection's unfinished tasks, as `stargate.scsi.tmf` sees them."""
        return [
            tmf.Task(
                task.itt,
                self.nexus,
                task.route.number,
                task.command.cmd_sn,
                _TASK_STATES.get(task.phase, tmf.TaskState.COMPLETED),
            )
            for task in self._tasks.values()
        ]

    def abort_tasks(self, itts: set[int]) -> None:
        """End these tasks without a status (aborted by a task management function)."""
        tasks = [self._tasks.get(itt) for itt in itts]
        aborted = [task for task in tasks if task is not None and task.phase is not TaskPhase.DONE]
        # All marked first: a slot freed by one must not go to another waiting one, to run.
        for task in aborted:
            task.aborted = True
        for task in aborted:
            self._abort(task)
        self._wake_writer()

    def _abort(self, task: ScsiTask) -> None:
        task.aborted = True
        if task.phase is TaskPhase.SYNCING:
            return  # the thread finishes the sync; `_finish` then sends nothing
        self._finish(task, ScsiStatus.TASK_ABORTED)
        self.queue.forget_cancelled()

    def _abort_all_tasks(self) -> None:
        tasks = list(self._tasks.values())
        # All aborted before any slot is given back: a freed slot must not go to one of our
        # own waiting tasks (it would run, maybe start a sync in the closed nursery).
        for task in tasks:
            task.aborted = True
        for task in tasks:
            if task.phase is not TaskPhase.SYNCING:
                self._finish(task, ScsiStatus.TASK_ABORTED)
        self.queue.forget_cancelled()

    @property
    def outstanding_tasks(self) -> int:
        return len(self._tasks)
