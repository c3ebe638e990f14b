"""Checking a received data sequence (RFC 7143 sections 4.2.4.1, 11.7.4, 11.8.4): the
target's Data-Out and the initiator's Data-In alike.

With DataPDUInOrder and DataSequenceInOrder (all this project negotiates) and error
recovery level 0, the PDUs of a sequence arrive in order: DataSN counts up from 0, each
BufferOffset is where the previous PDU ended, none goes past the sequence's end. A
Data-Out sequence (the unsolicited data, or the answer to one R2T) ends with the F bit
exactly at its end. In Data-In the F bit closes each burst, and the status may end the
data short of the expected length (underflow), so there the F bit says nothing about the
end and is not checked.
"""

from __future__ import annotations

from enum import Enum

from iscsicore.seqnum import SERIAL_MASK


class SequenceFault(Enum):
    DATA_SN = "DataSN out of order"
    OFFSET = "BufferOffset out of order"
    OVERRUN = "data beyond the end of the sequence"
    EARLY_FINAL = "F bit before the end of the sequence"


class DataSequence:
    """One data sequence being received: what the next PDU must carry."""

    __slots__ = ("end", "final_at_end", "next_data_sn", "next_offset", "ttt")

    def __init__(self, ttt: int, start: int, end: int, *, final_at_end: bool = True) -> None:
        self.ttt = ttt  # the sequence's Target Transfer Tag (0xffffffff: unsolicited)
        self.end = end  # buffer offset one past the sequence
        self.next_offset = start
        self.next_data_sn = 0
        self.final_at_end = final_at_end  # Data-Out: F exactly at the end

    def accept(self, data_sn: int, offset: int, length: int, final: bool) -> SequenceFault | None:
        """Check the next PDU; in order (None), the sequence moves past it."""
        if data_sn != self.next_data_sn:
            return SequenceFault.DATA_SN
        if offset + length > self.end:
            return SequenceFault.OVERRUN  # wherever it was meant to go, it does not fit
        if offset != self.next_offset:
            return SequenceFault.OFFSET
        if final and self.final_at_end and offset + length != self.end:
            return SequenceFault.EARLY_FINAL
        self.next_data_sn = (data_sn + 1) & SERIAL_MASK
        self.next_offset = offset + length
        return None
