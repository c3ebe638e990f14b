"""A trio iSCSI initiator: the client library (sessions, a block device, VMs of several
disks, verification, health probes) and the `initiator` command.

May import: iscsicore, topology, faults, control.
"""
