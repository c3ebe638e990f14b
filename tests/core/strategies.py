"""Hypothesis strategies for arbitrary legal iSCSI PDUs of every class.

``pdus()`` draws any of the 18 classes; ``pdus_of(cls)`` one class; ``initiator_pdus()`` /
``target_pdus()`` one direction. Every field covers its whole wire range except where the
RFC reserves values (task attribute 5-7, login stage 2, both O and U ...): those are what
the decoder rejects, so they are never drawn here. ``raw_headers(opcode)`` draws arbitrary
48-byte headers carrying a given opcode, legal or not.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from iscsicore.pdu import (
    BHS_LENGTH,
    PDU_CLASSES,
    R2T,
    Ahs,
    AhsType,
    AsyncMessage,
    DataIn,
    DataOut,
    LoginRequest,
    LoginResponse,
    LogoutRequest,
    LogoutResponse,
    NopIn,
    NopOut,
    Opcode,
    Pdu,
    Reject,
    ScsiCommand,
    ScsiResponse,
    SnackRequest,
    TaskMgmtRequest,
    TaskMgmtResponse,
    TextRequest,
    TextResponse,
)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u48 = st.integers(0, (1 << 48) - 1)
u64 = st.integers(0, (1 << 64) - 1)
flag = st.booleans()

# Sequence numbers and tags cluster near the interesting edges as well as anywhere.
serial = st.one_of(u32, st.sampled_from([0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]))
login_stage = st.sampled_from([0, 1, 3])

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


def _nop_out() -> st.SearchStrategy[Pdu]:
    return st.builds(
        NopOut,
        **_with_payload(
            {
                "immediate": flag,
                "lun": u64,
                "itt": u32,
                "ttt": u32,
                "cmd_sn": serial,
                "exp_stat_sn": serial,
            }
        ),
    )


def _scsi_command() -> st.SearchStrategy[Pdu]:
    return st.builds(
        ScsiCommand,
        **_with_payload(
            {
                "immediate": flag,
                "final": flag,
                "read": flag,
                "write": flag,
                "attr": st.integers(0, 4),
                "lun": u64,
                "itt": u32,
                "expected_data_transfer_length": u32,
                "cmd_sn": serial,
                "exp_stat_sn": serial,
                "cdb": st.binary(min_size=16, max_size=16),
            },
            ahs=extended_cdb_ahs(),
        ),
    )


def _task_mgmt_request() -> st.SearchStrategy[Pdu]:
    return st.builds(
        TaskMgmtRequest,
        **_with_payload(
            {
                "immediate": flag,
                "function": st.integers(0, 0x7F),
                "lun": u64,
                "itt": u32,
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
    transit = draw(flag)
    return {
        "transit": transit,
        "cont": False if transit else draw(flag),
        "csg": draw(login_stage),
        "nsg": draw(login_stage),
    }


@st.composite
def _login(draw: st.DrawFn, cls: type[LoginRequest] | type[LoginResponse]) -> Pdu:
    kwargs: dict[str, Any] = draw(_login_flags())
    kwargs.update(
        version_max=draw(u8),
        isid=draw(u48),
        tsih=draw(u16),
        itt=draw(u32),
        data=draw(st.one_of(text_keys(), data_segments())),
        ahs=draw(st.one_of(st.just([]), ahs_lists())),
    )
    if cls is LoginRequest:
        kwargs.update(
            version_min=draw(u8), cid=draw(u16), cmd_sn=draw(serial), exp_stat_sn=draw(serial)
        )
    else:
        kwargs.update(
            version_active=draw(u8),
            stat_sn=draw(serial),
            exp_cmd_sn=draw(serial),
            max_cmd_sn=draw(serial),
            status_class=draw(u8),
            status_detail=draw(u8),
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
        itt=draw(u32),
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
                "itt": u32,
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
                "itt": u32,
                "cid": u16,
                "cmd_sn": serial,
                "exp_stat_sn": serial,
            },
            data=st.just(b""),
        ),
    )


def _snack_request() -> st.SearchStrategy[Pdu]:
    return st.builds(
        SnackRequest,
        **_with_payload(
            {
                "snack_type": st.integers(0, 3),
                "lun": u64,
                "itt": u32,
                "ttt": u32,
                "exp_stat_sn": serial,
                "beg_run": serial,
                "run_length": u32,
            },
            data=st.just(b""),
        ),
    )


def _nop_in() -> st.SearchStrategy[Pdu]:
    return st.builds(
        NopIn,
        **_with_payload(
            {
                "lun": u64,
                "itt": u32,
                "ttt": u32,
                "stat_sn": serial,
                "exp_cmd_sn": serial,
                "max_cmd_sn": serial,
            }
        ),
    )


@st.composite
def _residual_flags(draw: st.DrawFn) -> tuple[bool, bool]:
    """(overflow, underflow): at most one of them."""
    return draw(st.sampled_from([(False, False), (True, False), (False, True)]))


@st.composite
def _scsi_response(draw: st.DrawFn) -> Pdu:
    bidi_overflow, bidi_underflow = draw(_residual_flags())
    overflow, underflow = draw(_residual_flags())
    return ScsiResponse(
        bidi_overflow=bidi_overflow,
        bidi_underflow=bidi_underflow,
        overflow=overflow,
        underflow=underflow,
        response=draw(u8),
        status=draw(u8),
        itt=draw(u32),
        snack_tag=draw(u32),
        stat_sn=draw(serial),
        exp_cmd_sn=draw(serial),
        max_cmd_sn=draw(serial),
        exp_data_sn=draw(serial),
        bidi_residual_count=draw(u32),
        residual_count=draw(u32),
        data=draw(data_segments(260)),
        ahs=draw(st.one_of(st.just([]), ahs_lists())),
    )


def _task_mgmt_response() -> st.SearchStrategy[Pdu]:
    return st.builds(
        TaskMgmtResponse,
        **_with_payload(
            {
                "response": u8,
                "itt": u32,
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
        status=draw(u8),
        lun=draw(u64),
        itt=draw(u32),
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
                "response": u8,
                "itt": u32,
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
                "itt": u32,
                "ttt": u32,
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
                "async_event": u8,
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
                "reason": u8,
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

HOT_CLASSES: tuple[type[Pdu], ...] = (ScsiCommand, ScsiResponse, DataIn, DataOut, R2T)


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
