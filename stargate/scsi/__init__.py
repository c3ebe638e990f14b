"""SCSI emulation of a vDisk's logical unit; knows nothing of iSCSI.

Entry point: ``stargate.scsi.lu.LogicalUnit.execute(cdb, data_out, nexus) -> ScsiResult``.
"""
