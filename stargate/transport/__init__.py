"""The target's full-feature phase, one concern per module (as LIO splits iscsi_target.c,
iscsi_target_erl0.c, iscsi_target_datain_values.c and iscsi_target_tmr.c, and SPDK conn.c
from iscsi.c).

`runner.FullFeatureConnection` is the connection; it is built from layers, each a class in
its own module that may call only the layers below it (mypy checks that, as each layer only
knows its bases): `state` (what a connection holds) < `outbox` (output, StatSN, the window)
< `async_events` < `data_in` (status and Data-In) < `fault_hooks` (the fault strategy and
its effects) < `execution` < `data_out` (Data-Out, R2T) < `commands` (SCSI Command, the
plain path) < `keepalive` (NOP, watchdog) < `exchanges` (Text, Logout, SNACK) < `task_mgmt`
< `dispatch` (PDU -> handler, CmdSN checked once) < `faulted_pdus` < `runner` (lifecycle,
hub turns).

May import iscsicore, stargate.scsi, stargate.queue/session/tasks/stats/reader_hub and
faults (model and channel), topology; nothing above the target.
"""
