"""The target's full-feature phase, one concern per module (as LIO splits iscsi_target.c,
iscsi_target_erl0.c, iscsi_target_datain_values.c and iscsi_target_tmr.c, and SPDK conn.c
from iscsi.c).

`runner.FullFeatureConnection` is the connection; it is built from layers, each a class in
its own module that may call only the layers below it (mypy checks that, as each layer only
knows its bases):

    state          what a connection holds (LIO's struct iscsi_conn)
    outbox         the output buffer, its sending, StatSN/ExpCmdSN/MaxCmdSN stamping
    async_events   logout requests and drops the target sends on its own
    data_in        a command's Data-In and status, its slot given back
    fault_hooks    what a fault does to the whole connection (reset, blackhole, freeze)
    execution      running a command through the logical unit, fdatasync, faulted runs
    data_out       Data-Out, R2Ts, sequence checks, digest failures (LIO's erl0)
    commands       SCSI Command PDUs: the plain READ/WRITE path and the general one
    keepalive      NOP-Out echo, NOP-In pings, the watchdog
    exchanges      Text, Logout, SNACK
    task_mgmt      task management (LIO's iscsi_target_tmr.c)
    dispatch       PDU -> handler, the CmdSN rule applied once (SPDK's iscsi_pdu_hdr_handle)
    faulted_pdus   faults applied to the PDUs received, while the fault strategy is armed
    runner         construction, the connection's tasks, hub turns, its end

`config` (timers, tuning) and `interfaces` (what the connection is given: its channel,
the text responder, the task directory, the fault strategy) stand beside them.

May import iscsicore, stargate.scsi, stargate.queue/session/tasks/stats/reader_hub and
faults (model and channel), topology; nothing above the target.
"""
