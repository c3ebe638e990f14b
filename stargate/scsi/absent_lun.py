"""What a target answers for a LUN it does not have (SPC-4 4.6.4, 6.6.2, 6.39).

INQUIRY: standard data with peripheral qualifier 011b and device type 1Fh ("not capable of
supporting a device on this logical unit"); REQUEST SENSE: GOOD, the sense data saying
LOGICAL UNIT NOT SUPPORTED; REPORT LUNS runs on LUN 0 (the target's inventory); every other
command: CHECK CONDITION, ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED.
"""

from __future__ import annotations

from iscsicore.scsi.cdb import allocation_length
from iscsicore.scsi.opcodes import ScsiOp, ScsiStatus
from iscsicore.scsi.sense import Asc, CheckCondition, FieldPointer, SenseKey, build_sense
from stargate.scsi.command import ScsiResult, data_in

_NO_DEVICE = 0x7F  # peripheral qualifier 011b, peripheral device type 1Fh
_SPC4_VERSION = 0x06
_RESPONSE_DATA_FORMAT = 0x02
_EVPD = 0x01


def _not_supported() -> CheckCondition:
    return CheckCondition(SenseKey.ILLEGAL_REQUEST, Asc.LOGICAL_UNIT_NOT_SUPPORTED)


def answer(cdb: bytes) -> ScsiResult:
    """The answer to ``cdb`` sent to a LUN the target lacks (REPORT LUNS excepted)."""
    opcode = cdb[0] if cdb else -1
    try:
        if opcode == ScsiOp.INQUIRY and len(cdb) >= 6:
            if cdb[1] & _EVPD:  # no vital product data of a device that is not there
                raise _not_supported()
            if cdb[2]:
                raise CheckCondition(
                    SenseKey.ILLEGAL_REQUEST,
                    Asc.INVALID_FIELD_IN_CDB,
                    field_pointer=FieldPointer(in_cdb=True, byte=2),
                )
            standard = bytearray(36)
            standard[0] = _NO_DEVICE
            standard[2] = _SPC4_VERSION
            standard[3] = _RESPONSE_DATA_FORMAT
            standard[4] = len(standard) - 5  # ADDITIONAL LENGTH
            return data_in(bytes(standard), allocation_length(cdb, 3, 2))
        if opcode == ScsiOp.REQUEST_SENSE and len(cdb) >= 6:
            sense = build_sense(
                SenseKey.ILLEGAL_REQUEST,
                Asc.LOGICAL_UNIT_NOT_SUPPORTED,
                descriptor_format=bool(cdb[1] & 0x01),
            )
            return data_in(sense, allocation_length(cdb, 4, 1))
        raise _not_supported()
    except CheckCondition as condition:
        return ScsiResult(ScsiStatus.CHECK_CONDITION, sense=condition.sense())
