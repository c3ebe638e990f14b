"""`iscsicore.framing.append_segments`, the one PDU serializer: what the target's fast path
appends from a struct-built BHS is byte for byte what `encode_pdu` makes of the PDU, and a
batch appended into one buffer reads back, in order, through `PduFramer`."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from iscsicore import fastpath
from iscsicore.framing import PduFramer, append_pdu, append_segments, encode_pdu
from iscsicore.pdu import RESERVED_TAG, DataIn, Pdu, ScsiResponse

from .strategies import target_pdus

u32 = st.integers(0, 0xFFFFFFFF)


@given(
    data=st.binary(max_size=70),
    itt=st.integers(0, RESERVED_TAG - 1),
    stat_sn=u32,
    residual=u32,
    header_digest=st.booleans(),
    data_digest=st.booleans(),
)
def test_a_fast_path_data_in_is_the_pdu_encode_pdu_makes(
    data: bytes, itt: int, stat_sn: int, residual: int, header_digest: bool, data_digest: bool
) -> None:
    out = bytearray(b"earlier responses")
    bhs = fastpath.data_in_bhs(
        0x81 | 0x02, 0, len(data), 0, itt, RESERVED_TAG, stat_sn, 5, 9, 0, 0, residual
    )
    append_segments(out, bhs, b"", data, header_digest, data_digest)
    pdu = DataIn(
        final=True,
        underflow=True,
        status_present=True,
        itt=itt,
        stat_sn=stat_sn,
        exp_cmd_sn=5,
        max_cmd_sn=9,
        residual_count=residual,
        data=data,
    )
    expected = encode_pdu(pdu, header_digest=header_digest, data_digest=data_digest)
    assert out == b"earlier responses" + expected


@given(
    status=st.sampled_from([0x00, 0x02, 0x08]),
    sense=st.binary(max_size=20),
    header_digest=st.booleans(),
    data_digest=st.booleans(),
)
def test_a_fast_path_scsi_response_is_the_pdu_encode_pdu_makes(
    status: int, sense: bytes, header_digest: bool, data_digest: bool
) -> None:
    out = bytearray()
    bhs = fastpath.scsi_response_bhs(0, 0, status, len(sense), 7, 0, 3, 4, 5, 0, 0, 0)
    append_segments(out, bhs, b"", sense, header_digest, data_digest)
    pdu = ScsiResponse(status=status, itt=7, stat_sn=3, exp_cmd_sn=4, max_cmd_sn=5, data=sense)
    assert out == encode_pdu(pdu, header_digest=header_digest, data_digest=data_digest)


@given(
    sent=st.lists(target_pdus(), min_size=1, max_size=6),
    header_digest=st.booleans(),
    data_digest=st.booleans(),
)
def test_a_batch_in_one_buffer_reads_back_in_order(
    sent: list[Pdu], header_digest: bool, data_digest: bool
) -> None:
    out = bytearray()
    for pdu in sent:
        append_pdu(out, pdu, header_digest, data_digest)
    framer = PduFramer(
        receiving_from="target",
        max_recv_data_segment_length=1 << 24,
        header_digest=header_digest,
        data_digest=data_digest,
    )
    framer.feed(bytes(out))
    received: list[Pdu] = []
    while (decoded := framer.next_pdu()) is not None:
        received.append(decoded)
    assert received == sent
    assert framer.buffered == 0
