"""Hypothesis strategies for arbitrary legal iSCSI PDUs of every class.

``pdus()`` draws any of the 18 classes; ``pdus_of(cls)`` one class; ``initiator_pdus()`` /
``target_pdus()`` one direction. Every field covers its whole wire range except where the
RFC reserves values (task attribute 5-7, login stage 2, both O and U, undefined reject
reasons or TMF functions ...): those are never drawn here. ``raw_headers(opcode)`` draws arbitrary
48-byte headers carrying a given opcode, legal or not.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from iscsicore.pdu import (
    BHS_LENGTH,
    PDU_CLASSES,
    R2T,
    RESERVED_TAG,
    Ahs,
    AhsType,
    AsyncEvent,
    AsyncMessage,
    DataIn,
    DataOut,
    LoginRequest,
    LoginResponse,
    LoginStatus,
    LogoutRequest,
    LogoutResponse,
    LogoutResponseCode,
    NopIn,
    NopOut,
    Opcode,
    Pdu,
    Reject,
    RejectReason,
    ScsiCommand,
    ScsiResponse,
    ScsiResponseCode,
    SnackRequest,
    SnackType,
    TaskMgmtRequest,
    TaskMgmtResponse,
    TextRequest,
    TextResponse,
    TmfFunction,
    TmfResponse,
)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u48 = st.integers(0, (1 << 48) - 1)
u64 = st.integers(0, (1 << 64) - 1)
flag = st.booleans()
# 0xffffffff is the reserved tag: never a task's ITT, never an R2T's TTT
task_tag = st.integers(0, RESERVED_TAG - 1)

# Sequence numbers and tags cluster near the interesting edges as well as anywhere.
serial = st.one_of(u32, st.sampled_from([0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]))
login_stage = st.sampled_from([0, 1, 3])
# Defined code values (the rest are reserved, which the RFC makes a protocol error to send)
scsi_status = st.sampled_from([0x00, 0x02, 0x04, 0x08, 0x10, 0x14, 0x18, 0x22, 0x28, 0x30, 0x40])
reject_reason = st.sampled_from(list(RejectReason))
tmf_function = st.sampled_from(list(TmfFunction))
tmf_response = st.sampled_from(list(TmfResponse))
async_event = st.sampled_from(list(AsyncEvent))
logout_response = st.sampled_from(list(LogoutResponseCode))
login_status = st.sampled_from(list(LoginStatus))
scsi_response_code = st.sampled_from(list(ScsiResponseCode))

MAX_DATA = 2048


def data_segments(max_size: int = MAX_DATA) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=max_size)


_key = st.text(
    st.characters(codec="ascii", categories=["Lu", "Ll", "Nd"], include_characters="._-"),
    min_size=1,
    max_size=24,
)
_value = st.text(
    st.characters(codec="ascii", min_codepoint=0x20, max_codepoint=0x7E),
    max_size=40,
)


@st.composite
def text_keys(draw: st.DrawFn) -> bytes:
    """A NUL-terminated ``key=value`` list as carried by Login and Text PDUs."""
    pairs = draw(st.lists(st.tuples(_key, _value), max_size=8))
    return b"".join(f"{key}={value}\x00".encode("ascii") for key, value in pairs)


def ahs_segment() -> st.SearchStrategy[Ahs]:
    return st.builds(Ahs, ahs_type=u8, payload=st.binary(max_size=40))


def ahs_lists() -> st.SearchStrategy[list[Ahs]]:
    return st.lists(ahs_segment(), max_size=3)


def extended_cdb_ahs() -> st.SearchStrategy[list[Ahs]]:
    """Optionally an Extended CDB AHS and/or a Bidirectional Read Length AHS."""
    extended = st.binary(min_size=1, max_size=244).map(
        lambda rest: Ahs(AhsType.EXTENDED_CDB, b"\x00" + rest)
    )
    bidi = u32.map(lambda n: Ahs(AhsType.BIDI_READ_LENGTH, b"\x00" + n.to_bytes(4, "big")))
    return st.tuples(st.lists(extended, max_size=1), st.lists(bidi, max_size=1)).map(
        lambda parts: parts[0] + parts[1]
    )


def _with_payload(
    strategy_kwargs: dict[str, st.SearchStrategy[Any]],
    *,
    ahs: st.SearchStrategy[list[Ahs]] | None = None,
    data: st.SearchStrategy[bytes] | None = None,
) -> dict[str, st.SearchStrategy[Any]]:
    return {
        **strategy_kwargs,
        "ahs": ahs if ahs is not None else st.one_of(st.just([]), ahs_lists()),
        "data": data if data is not None else data_segments(),
    }


@st.composite
def _ping_tags(draw: st.DrawFn) -> tuple[int, int]:
    """(ITT, TTT) of a NOP: a ping carries its own tag and the reserved other one."""
    if draw(flag):
        return draw(task_tag), RESERVED_TAG
    return RESERVED_TAG, draw(task_tag)


@st.composite
def _nop_out(draw: st.DrawFn) -> Pdu:
    itt, ttt = draw(_ping_tags())
    return NopOut(
        immediate=True if itt == RESERVED_TAG else draw(flag),  # answers are immediate
        lun=draw(u64),
        itt=itt,
        ttt=ttt,
        cmd_sn=draw(serial),
        exp_stat_sn=draw(serial),
        data=draw(data_segments()),
        ahs=draw(st.one_of(st.just([]), ahs_lists())),
    )


@st.composite
def _scsi_command(draw: st.DrawFn) -> Pdu:
    read, write = draw(flag), draw(flag)
    return ScsiCommand(
        immediate=draw(flag),
        final=draw(flag),
        read=read,
        write=write,
        attr=draw(st.integers(0, 4)),
        lun=draw(u64),
        itt=draw(task_tag),
        # No data transfer announced without R or W.
        expected_data_transfer_length=draw(u32) if read or write else 0,
        cmd_sn=draw(serial),
        exp_stat_sn=draw(serial),
        cdb=draw(st.binary(min_size=16, max_size=16)),
        ahs=draw(extended_cdb_ahs()),
        data=draw(data_segments()) if write else b"",
    )


def _task_mgmt_request() -> st.SearchStrategy[Pdu]:
    return st.builds(
        TaskMgmtRequest,
        **_with_payload(
            {
                "immediate": flag,
                "function": tmf_function,
                "lun": u64,
                "itt": task_tag,
                "referenced_task_tag": u32,
                "cmd_sn": serial,
                "exp_stat_sn": serial,
                "ref_cmd_sn": serial,
                "exp_data_sn": serial,
            },
            data=st.just(b""),
        ),
    )


@st.composite
def _login_flags(draw: st.DrawFn) -> dict[str, Any]:
    """CSG is Security or Operational; a transit goes to a later stage (NSG is reserved,
    and random here, when T is 0)."""
    csg = draw(st.sampled_from([0, 1]))
    transit = draw(flag)
    later = [stage for stage in (1, 3) if stage > csg]
    return {
        "transit": transit,
        "cont": False if transit else draw(flag),
        "csg": csg,
        "nsg": draw(st.sampled_from(later)) if transit else draw(login_stage),
    }


@st.composite
def _login(draw: st.DrawFn, cls: type[LoginRequest] | type[LoginResponse]) -> Pdu:
    kwargs: dict[str, Any] = draw(_login_flags())
    kwargs.update(
        version_max=draw(u8),
        isid=draw(u48),
        tsih=draw(u16),
        itt=draw(task_tag),
        data=draw(st.one_of(text_keys(), data_segments())),
        ahs=draw(st.one_of(st.just([]), ahs_lists())),
    )
    if cls is LoginRequest:
        kwargs.update(
            version_min=draw(u8), cid=draw(u16), cmd_sn=draw(serial), exp_stat_sn=draw(serial)
        )
    else:
        status = draw(login_status)
        kwargs.update(
            version_active=draw(u8),
            stat_sn=draw(serial),
            exp_cmd_sn=draw(serial),
            max_cmd_sn=draw(serial),
            status_class=status.status_class,
            status_detail=status.status_detail,
        )
    return cls(**kwargs)


@st.composite
def _text_flags(draw: st.DrawFn) -> dict[str, bool]:
    final = draw(flag)
    return {"final": final, "cont": False if final else draw(flag)}


@st.composite
def _text(draw: st.DrawFn, cls: type[TextRequest] | type[TextResponse]) -> Pdu:
    kwargs: dict[str, Any] = draw(_text_flags())
    kwargs.update(
        lun=draw(u64),
        itt=draw(task_tag),
        ttt=draw(u32),
        data=draw(st.one_of(text_keys(), data_segments())),
        ahs=draw(st.one_of(st.just([]), ahs_lists())),
    )
    if cls is TextRequest:
        kwargs.update(immediate=draw(flag), cmd_sn=draw(serial), exp_stat_sn=draw(serial))
    else:
        kwargs.update(stat_sn=draw(serial), exp_cmd_sn=draw(serial), max_cmd_sn=draw(serial))
    return cls(**kwargs)


def _data_out() -> st.SearchStrategy[Pdu]:
    return st.builds(
        DataOut,
        **_with_payload(
            {
                "final": flag,
                "lun": u64,
                "itt": task_tag,
                "ttt": u32,
                "exp_stat_sn": serial,
                "data_sn": serial,
                "buffer_offset": u32,
            }
        ),
    )


def _logout_request() -> st.SearchStrategy[Pdu]:
    return st.builds(
        LogoutRequest,
        **_with_payload(
            {
                "immediate": flag,
                "reason": st.integers(0, 2),
                "itt": task_tag,
                "cid": u16,
                "cmd_sn": serial,
                "exp_stat_sn": serial,
            },
            data=st.just(b""),
        ),
    )


@st.composite
def _snack_request(draw: st.DrawFn) -> Pdu:
    snack_type = draw(st.sampled_from(list(SnackType)))
    # Status and DataACK SNACKs carry no task: their ITT is the reserved tag. The TTT
    # field is a SNACK Tag (R-Data) or the acknowledged TTT (DataACK), else reserved.
    task_free = snack_type in (SnackType.STATUS, SnackType.DATA_ACK)
    tagged = snack_type in (SnackType.R_DATA, SnackType.DATA_ACK)
    return SnackRequest(
        snack_type=snack_type,
        lun=draw(u64),
        itt=RESERVED_TAG if task_free else draw(task_tag),
        ttt=draw(task_tag) if tagged else RESERVED_TAG,
        exp_stat_sn=draw(serial),
        beg_run=draw(serial),
        run_length=draw(u32),
        ahs=draw(st.one_of(st.just([]), ahs_lists())),
    )


@st.composite
def _nop_in(draw: st.DrawFn) -> Pdu:
    itt, ttt = draw(_ping_tags())
    return NopIn(
        lun=draw(u64),
        itt=itt,
        ttt=ttt,
        stat_sn=draw(serial),
        exp_cmd_sn=draw(serial),
        max_cmd_sn=draw(serial),
        data=draw(data_segments()),
        ahs=draw(st.one_of(st.just([]), ahs_lists())),
    )


@st.composite
def _residual_flags(draw: st.DrawFn) -> tuple[bool, bool]:
    """(overflow, underflow): at most one of them."""
    return draw(st.sampled_from([(False, False), (True, False), (False, True)]))


@st.composite
def _scsi_response(draw: st.DrawFn) -> Pdu:
    response = draw(scsi_response_code)
    completed = response == ScsiResponseCode.COMPLETED
    # Status, residual flags and counts are meaningful (else reserved) only when the
    # command completed at the target.
    bidi_overflow, bidi_underflow = draw(_residual_flags()) if completed else (False, False)
    overflow, underflow = draw(_residual_flags()) if completed else (False, False)
    return ScsiResponse(
        bidi_overflow=bidi_overflow,
        bidi_underflow=bidi_underflow,
        overflow=overflow,
        underflow=underflow,
        response=response,
        status=draw(scsi_status) if completed else 0,
        itt=draw(task_tag),
        snack_tag=draw(u32),
        stat_sn=draw(serial),
        exp_cmd_sn=draw(serial),
        max_cmd_sn=draw(serial),
        exp_data_sn=draw(serial),
        bidi_residual_count=draw(u32) if completed else 0,
        residual_count=draw(u32) if completed else 0,
        data=draw(data_segments(260)),
        ahs=draw(st.one_of(st.just([]), ahs_lists())),
    )


def _task_mgmt_response() -> st.SearchStrategy[Pdu]:
    return st.builds(
        TaskMgmtResponse,
        **_with_payload(
            {
                "response": tmf_response,
                "itt": task_tag,
                "stat_sn": serial,
                "exp_cmd_sn": serial,
                "max_cmd_sn": serial,
            },
            data=st.just(b""),
        ),
    )


@st.composite
def _data_in(draw: st.DrawFn) -> Pdu:
    status_present = draw(flag)
    overflow, underflow = draw(_residual_flags())
    return DataIn(
        final=True if status_present else draw(flag),
        acknowledge=draw(flag),
        overflow=overflow,
        underflow=underflow,
        status_present=status_present,
        status=draw(scsi_status),
        lun=draw(u64),
        itt=draw(task_tag),
        ttt=draw(u32),
        stat_sn=draw(serial),
        exp_cmd_sn=draw(serial),
        max_cmd_sn=draw(serial),
        data_sn=draw(serial),
        buffer_offset=draw(u32),
        residual_count=draw(u32),
        data=draw(data_segments()),
        ahs=draw(st.one_of(st.just([]), ahs_lists())),
    )


def _logout_response() -> st.SearchStrategy[Pdu]:
    return st.builds(
        LogoutResponse,
        **_with_payload(
            {
                "response": logout_response,
                "itt": task_tag,
                "stat_sn": serial,
                "exp_cmd_sn": serial,
                "max_cmd_sn": serial,
                "time2wait": u16,
                "time2retain": u16,
            },
            data=st.just(b""),
        ),
    )


def _r2t() -> st.SearchStrategy[Pdu]:
    return st.builds(
        R2T,
        **_with_payload(
            {
                "lun": u64,
                "itt": task_tag,
                "ttt": task_tag,
                "stat_sn": serial,
                "exp_cmd_sn": serial,
                "max_cmd_sn": serial,
                "r2t_sn": serial,
                "buffer_offset": u32,
                "desired_data_transfer_length": u32,
            },
            data=st.just(b""),
        ),
    )


def _async_message() -> st.SearchStrategy[Pdu]:
    return st.builds(
        AsyncMessage,
        **_with_payload(
            {
                "lun": u64,
                "stat_sn": serial,
                "exp_cmd_sn": serial,
                "max_cmd_sn": serial,
                "async_event": async_event,
                "async_vcode": u8,
                "parameter1": u16,
                "parameter2": u16,
                "parameter3": u16,
            }
        ),
    )


def _reject() -> st.SearchStrategy[Pdu]:
    return st.builds(
        Reject,
        **_with_payload(
            {
                "reason": reject_reason,
                "stat_sn": serial,
                "exp_cmd_sn": serial,
                "max_cmd_sn": serial,
                "data_sn_or_r2t_sn": serial,
            },
            data=st.binary(min_size=BHS_LENGTH, max_size=BHS_LENGTH),
        ),
    )


_STRATEGIES: dict[type[Pdu], st.SearchStrategy[Pdu]] = {
    NopOut: _nop_out(),
    ScsiCommand: _scsi_command(),
    TaskMgmtRequest: _task_mgmt_request(),
    LoginRequest: _login(LoginRequest),
    TextRequest: _text(TextRequest),
    DataOut: _data_out(),
    LogoutRequest: _logout_request(),
    SnackRequest: _snack_request(),
    NopIn: _nop_in(),
    ScsiResponse: _scsi_response(),
    TaskMgmtResponse: _task_mgmt_response(),
    LoginResponse: _login(LoginResponse),
    TextResponse: _text(TextResponse),
    DataIn: _data_in(),
    LogoutResponse: _logout_response(),
    R2T: _r2t(),
    AsyncMessage: _async_message(),
    Reject: _reject(),
}
assert set(_STRATEGIES) == set(PDU_CLASSES.values()), "a strategy for every PDU class"

HOT_CLASSES: tuple[type[Pdu], ...] = (
    ScsiCommand,
    ScsiResponse,
    DataIn,
    DataOut,
    R2T,
    NopOut,
    NopIn,
)


def pdus_of(cls: type[Pdu]) -> st.SearchStrategy[Pdu]:
    return _STRATEGIES[cls]


def pdus() -> st.SearchStrategy[Pdu]:
    return st.one_of(*_STRATEGIES.values())


def initiator_pdus() -> st.SearchStrategy[Pdu]:
    return st.one_of(*(s for cls, s in _STRATEGIES.items() if cls.OPCODE.from_initiator))


def target_pdus() -> st.SearchStrategy[Pdu]:
    return st.one_of(*(s for cls, s in _STRATEGIES.items() if not cls.OPCODE.from_initiator))


def raw_headers(opcode: Opcode, *, total_ahs_length: int | None = 0) -> st.SearchStrategy[bytes]:
    """Arbitrary 48-byte headers with ``opcode`` (I bit and reserved bits random).

    ``total_ahs_length`` fixes byte 4 (None: random too).
    """

    def assemble(raw: bytes) -> bytes:
        header = bytearray(raw)
        header[0] = (header[0] & 0xC0) | opcode
        if total_ahs_length is not None:
            header[4] = total_ahs_length
        return bytes(header)

    return st.binary(min_size=BHS_LENGTH, max_size=BHS_LENGTH).map(assemble)
