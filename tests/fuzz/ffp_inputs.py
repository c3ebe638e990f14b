"""Valid-but-hostile full-feature PDUs, drawn one at a time against what the target said.

`Observed` remembers what the target sent (ExpCmdSN, R2Ts, NOP-In pings, the ITTs in
use) so that the fuzzer can aim: CmdSNs at, just before and just past the window, Data-Out
that answers a real R2T exactly or nearly, TMFs that reference live tasks, replies to the
target's pings. Values are still drawn by hypothesis; what the target said only selects
among them, so a failing example replays.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from hypothesis import strategies as st

from iscsicore.pdu import (
    R2T,
    RESERVED_TAG,
    DataIn,
    DataOut,
    LogoutRequest,
    NopIn,
    NopOut,
    Pdu,
    ScsiCommand,
    ScsiResponse,
    SnackRequest,
    TaskMgmtRequest,
    TextRequest,
    TmfFunction,
    lun_from_number,
)
from tests.iscsicore.strategies import initiator_pdus, pdus_of

BLOCK = 512
PROBE_ITT = 0xFFFFFFF0  # the liveness ping's tag: never drawn for anything else
MAX_ITT = 0xFFFFFF00
u32 = st.integers(0, 0xFFFFFFFF)


@dataclass
class Observed:
    """What the target has told this connection so far."""

    exp_cmd_sn: int
    exp_stat_sn: int = 0
    r2ts: list[R2T] = field(default_factory=list)
    ping_ttts: list[int] = field(default_factory=list)
    itts: list[int] = field(default_factory=list)
    unsolicited: list[tuple[int, int, int]] = field(default_factory=list)  # itt, offset, end

    def saw(self, pdu: Pdu) -> None:
        exp_cmd_sn = getattr(pdu, "exp_cmd_sn", None)
        if exp_cmd_sn is not None:
            self.exp_cmd_sn = exp_cmd_sn
        if isinstance(pdu, ScsiResponse) or (isinstance(pdu, DataIn) and pdu.status_present):
            self.exp_stat_sn = (pdu.stat_sn + 1) & 0xFFFFFFFF
        if isinstance(pdu, R2T):
            self.r2ts = [*self.r2ts[-7:], pdu]
        elif isinstance(pdu, NopIn) and pdu.ttt != RESERVED_TAG:
            self.ping_ttts = [*self.ping_ttts[-3:], pdu.ttt]


def _pick(values: list[int], index: int) -> int | None:
    return values[index % len(values)] if values else None


# TUR, REQUEST SENSE, INQUIRY, MODE SENSE, READ CAPACITY, SERVICE ACTION IN, MAINTENANCE
# IN, SYNCHRONIZE CACHE, WRITE SAME, UNMAP, PR IN/OUT, XCOPY, RECEIVE COPY RESULTS,
# RESERVE/RELEASE, SANITIZE, START STOP, LOG SENSE, MODE SELECT ...
_OTHER_OPCODES = (
    *(0x00, 0x03, 0x12, 0x1A, 0x5A, 0x25, 0x9E, 0xA0, 0x35, 0x42, 0x5E, 0x5F),
    *(0x83, 0x84, 0x16, 0x17, 0x56, 0x57, 0xA3, 0x48, 0x1B, 0x4D, 0x15, 0x55),
)


@st.composite
def cdbs(draw: st.DrawFn) -> bytes:
    """Mostly block I/O near and past the end of a small LU, and the other commands the
    LU emulates; sometimes 16 random bytes."""
    kind = draw(st.sampled_from(["rw10", "rw16", "rw6", "other", "random"]))
    lba = draw(st.one_of(st.integers(0, 2100), u32))
    blocks = draw(st.one_of(st.integers(0, 16), st.integers(0, 0xFFFF)))
    if kind == "rw10":
        op = draw(st.sampled_from([0x28, 0x2A, 0x2E, 0x2F, 0x35, 0x41, 0x89 & 0x7F]))
        cdb = struct.pack(">BBIBHB", op, draw(st.integers(0, 255)), lba, 0, blocks, 0)
    elif kind == "rw16":
        op = draw(st.sampled_from([0x88, 0x8A, 0x89, 0x8E, 0x93, 0x91]))
        cdb = struct.pack(">BBQIBB", op, draw(st.integers(0, 255)), lba, blocks, 0, 0)
    elif kind == "rw6":
        op = draw(st.sampled_from([0x08, 0x0A]))
        cdb = struct.pack(">BBHBB", op, (lba >> 16) & 0x1F, lba & 0xFFFF, blocks & 0xFF, 0)
    elif kind == "other":
        op = draw(st.sampled_from(_OTHER_OPCODES))
        cdb = bytes([op]) + draw(st.binary(min_size=15, max_size=15))
    else:
        cdb = draw(st.binary(min_size=16, max_size=16))
    return cdb.ljust(16, b"\x00")[:16]


def _data(max_blocks: int = 8) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.integers(0, max_blocks).map(lambda n: bytes([0xA5]) * (n * BLOCK)),
        st.binary(max_size=1500),
    )


@st.composite
def _cmd_sn(draw: st.DrawFn, observed: Observed) -> int:
    offset = draw(st.sampled_from([0, 0, 0, 0, 1, 2, -1, 64, None]))
    if offset is None:
        return draw(u32)
    return (observed.exp_cmd_sn + offset) & 0xFFFFFFFF


@st.composite
def _itt(draw: st.DrawFn, observed: Observed) -> int:
    reuse, index = draw(st.integers(0, 3)) == 0, draw(st.integers(0, 7))
    fresh = draw(st.one_of(st.integers(1, 12), st.integers(0, MAX_ITT)))
    known = _pick(observed.itts, index)
    return known if reuse and known is not None else fresh


@st.composite
def _scsi_command(draw: st.DrawFn, observed: Observed) -> ScsiCommand:
    cdb = draw(cdbs())
    data = draw(_data())
    read, write = draw(st.booleans()), draw(st.booleans())
    edtl = draw(
        st.one_of(
            st.just(len(data)),
            st.integers(0, 32).map(lambda n: n * BLOCK),
            st.sampled_from([0, 1, 0xFFFFFFFF, 16 << 20, (16 << 20) + 1]),
            u32,
        )
    )
    itt = draw(_itt(observed))
    command = ScsiCommand(
        immediate=draw(st.integers(0, 5)) == 0,
        final=draw(st.integers(0, 2)) > 0,
        read=read,
        write=write,
        attr=draw(st.integers(0, 4)),
        lun=draw(st.sampled_from([0, 0, 0, lun_from_number(1), lun_from_number(300)])),
        itt=itt,
        expected_data_transfer_length=edtl,
        cmd_sn=draw(_cmd_sn(observed)),
        exp_stat_sn=observed.exp_stat_sn,
        cdb=cdb,
        data=data if write or draw(st.integers(0, 4)) == 0 else b"",
    )
    observed.itts = [*observed.itts[-7:], itt]
    if write and not command.final:
        observed.unsolicited.append((itt, len(command.data), edtl))
    return command


@st.composite
def _data_out(draw: st.DrawFn, observed: Observed) -> DataOut:
    # Everything is drawn whatever the target said (the shape of the draws must not
    # depend on timing), then what it said picks among the values.
    aim = draw(st.sampled_from(["r2t", "r2t", "unsolicited", "anything"]))
    index = draw(st.integers(0, 7))
    itt = draw(_itt(observed))
    ttt = draw(st.sampled_from([RESERVED_TAG, 1, 2, 3, 0x7FFFFFFF]))
    offset, length = draw(st.integers(0, 64)) * BLOCK, draw(st.integers(0, 8)) * BLOCK
    if aim == "r2t" and observed.r2ts:
        r2t = observed.r2ts[index % len(observed.r2ts)]
        itt, ttt = r2t.itt, r2t.ttt
        offset, length = r2t.buffer_offset, r2t.desired_data_transfer_length
    elif aim == "unsolicited" and observed.unsolicited:
        itt, offset, end = observed.unsolicited[index % len(observed.unsolicited)]
        ttt, length = RESERVED_TAG, max(0, min(end, 65536) - offset)
    length = min(length, 65536)  # one PDU: at most what the target accepts
    # Exactly right, or nudged: DataSN, offset, length, F bit.
    nudge = draw(st.sampled_from(["exact", "exact", "data_sn", "offset", "short", "long", "F"]))
    data_sn = draw(st.integers(1, 3)) if nudge == "data_sn" else 0
    if nudge == "offset":
        offset = draw(st.one_of(st.integers(0, 64).map(lambda n: n * BLOCK), u32))
    if nudge == "short":
        length = draw(st.integers(0, max(0, length - 1)))
    if nudge == "long":
        length += draw(st.integers(1, BLOCK))
    return DataOut(
        final=nudge != "F",
        lun=0,
        itt=itt,
        ttt=ttt,
        exp_stat_sn=observed.exp_stat_sn,
        data_sn=data_sn,
        buffer_offset=offset,
        data=bytes([0x5A]) * length,
    )


@st.composite
def _nop_out(draw: st.DrawFn, observed: Observed) -> NopOut:
    reply_to = _pick(observed.ping_ttts, draw(st.integers(0, 3)))
    reply = draw(st.booleans())
    ping = NopOut(
        immediate=draw(st.booleans()),
        itt=draw(st.one_of(st.just(RESERVED_TAG), _itt(observed))),
        ttt=draw(st.sampled_from([RESERVED_TAG, RESERVED_TAG, 1, 7])),
        cmd_sn=draw(_cmd_sn(observed)),
        exp_stat_sn=observed.exp_stat_sn,
        lun=draw(st.sampled_from([0, lun_from_number(3)])),
        data=draw(st.binary(max_size=300)),
    )
    if reply and reply_to is not None:
        return NopOut(immediate=True, itt=RESERVED_TAG, ttt=reply_to, exp_stat_sn=0)
    return ping


@st.composite
def _task_management(draw: st.DrawFn, observed: Observed) -> TaskMgmtRequest:
    return TaskMgmtRequest(
        immediate=draw(st.integers(0, 3)) > 0,
        function=draw(st.one_of(st.sampled_from(list(TmfFunction)), st.integers(0, 127))),
        lun=draw(st.sampled_from([0, 0, lun_from_number(1)])),
        itt=draw(_itt(observed)),
        referenced_task_tag=draw(st.one_of(_itt(observed), st.just(RESERVED_TAG))),
        cmd_sn=draw(_cmd_sn(observed)),
        exp_stat_sn=observed.exp_stat_sn,
        ref_cmd_sn=draw(_cmd_sn(observed)),
        exp_data_sn=draw(st.integers(0, 3)),
    )


@st.composite
def _text(draw: st.DrawFn, observed: Observed) -> TextRequest:
    final = draw(st.booleans())
    text = draw(
        st.sampled_from(
            [b"SendTargets=All\x00", b"SendTargets=\x00", b"MaxBurstLength=512\x00", b"x\x00"]
        )
        | st.binary(max_size=200)
    )
    return TextRequest(
        immediate=draw(st.booleans()),
        final=final,
        cont=not final and draw(st.booleans()),
        itt=draw(_itt(observed)),
        ttt=draw(st.sampled_from([RESERVED_TAG, RESERVED_TAG, 0, 1])),
        cmd_sn=draw(_cmd_sn(observed)),
        exp_stat_sn=observed.exp_stat_sn,
        data=text,
    )


@st.composite
def _logout(draw: st.DrawFn, observed: Observed) -> LogoutRequest:
    return LogoutRequest(
        immediate=draw(st.booleans()),
        reason=draw(st.integers(0, 2)),
        itt=draw(_itt(observed)),
        cid=draw(st.sampled_from([0, 0, 1])),
        cmd_sn=draw(_cmd_sn(observed)),
        exp_stat_sn=observed.exp_stat_sn,
    )


@st.composite
def hostile_pdu(draw: st.DrawFn, observed: Observed) -> Pdu:
    kind = draw(
        st.sampled_from(
            ["scsi"] * 6
            + ["data_out"] * 4
            + ["nop", "nop", "tmf", "text", "snack", "any", "logout"]
        ),
        label="kind",
    )
    if kind == "scsi":
        return draw(_scsi_command(observed))
    if kind == "data_out":
        return draw(_data_out(observed))
    if kind == "nop":
        return draw(_nop_out(observed))
    if kind == "tmf":
        return draw(_task_management(observed))
    if kind == "text":
        return draw(_text(observed))
    if kind == "logout":
        return draw(_logout(observed))
    if kind == "snack":
        return draw(pdus_of(SnackRequest))
    pdu = draw(initiator_pdus())  # Login Requests included: not in this phase
    if getattr(pdu, "itt", 0) == PROBE_ITT:
        pdu.itt = 0  # type: ignore[attr-defined]
    return pdu
