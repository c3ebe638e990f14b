"""Text exchanges in the full feature phase: SendTargets both sides, continuation, other keys."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iscsicore.keys import SessionType, TextError, decode_text, encode_text
from iscsicore.pdu import RESERVED_TAG, TextRequest, TextResponse
from iscsicore.portal import Portal
from iscsicore.text import (
    DiscoveredTarget,
    TargetRecord,
    TextExchange,
    TextReply,
    TextResponder,
    parse_send_targets,
    send_targets_pairs,
)

DISK = "iqn.2010-06.com.nutanix:vmdisk-{}"
TARGETS = [
    TargetRecord(DISK.format(n), (f"127.0.0.{n}:3261,1", f"[fd00::{n}]:3261,1"))
    for n in range(1, 41)
]


def responder(session_type: SessionType = SessionType.DISCOVERY, **kw: object) -> TextResponder:
    options: dict[str, object] = {"max_send_length": 8192, "session_target": None}
    options.update(kw)
    return TextResponder(session_type=session_type, targets=lambda: TARGETS, **options)  # type: ignore[arg-type]


def exchange(
    initiator: TextExchange, target: TextResponder, log: list[TextResponse] | None = None
) -> TextReply:
    """Run one exchange to its end, counting CmdSN and StatSN like a session would."""
    cmd_sn, stat_sn = 10, 500
    request = initiator.start(cmd_sn, stat_sn)
    for _ in range(1000):
        response = target.receive(
            request, stat_sn=stat_sn, exp_cmd_sn=cmd_sn + 1, max_cmd_sn=cmd_sn + 64
        )
        if log is not None:
            log.append(response)
        stat_sn += 1
        cmd_sn += 1
        outcome = initiator.receive(response, cmd_sn, stat_sn)
        if isinstance(outcome, TextReply):
            return outcome
        request = outcome
    raise AssertionError("exchange did not end")


def test_send_targets_all_in_one_pdu() -> None:
    log: list[TextResponse] = []
    reply = exchange(TextExchange.send_targets(itt=3), responder(), log)
    found = reply.send_targets()
    assert len(found) == 40 and len(log) == 1
    name, addresses = found[0]
    assert name == DISK.format(1)
    assert addresses == [Portal("127.0.0.1", 3261, 1), Portal("fd00::1", 3261, 1)]
    assert log[0].final and not log[0].cont and log[0].ttt == RESERVED_TAG


def test_send_targets_split_with_c_bit_and_ttt() -> None:
    log: list[TextResponse] = []
    reply = exchange(TextExchange.send_targets(itt=3), responder(max_send_length=512), log)
    assert [t.name for t in reply.send_targets()] == [t.name for t in TARGETS]
    assert len(log) > 3
    assert all(len(r.data) <= 512 for r in log)
    assert all(r.cont and not r.final and r.ttt != RESERVED_TAG for r in log[:-1])
    assert log[-1].final and log[-1].ttt == RESERVED_TAG
    assert len({r.ttt for r in log[:-1]}) == len(log) - 1  # a fresh TTT each time


def test_long_request_is_continued_too() -> None:
    pairs = [(f"X-com.example.k{n}", "v" * 200) for n in range(30)]
    log: list[TextResponse] = []
    reply = exchange(TextExchange(pairs, itt=9, max_send_length=256), responder(), log)
    assert reply.pairs == [(key, "NotUnderstood") for key, _ in pairs]
    assert not log[0].final and log[0].ttt != RESERVED_TAG and not log[0].data


def test_send_targets_one_name() -> None:
    reply = exchange(TextExchange.send_targets(itt=1, target=DISK.format(7)), responder())
    assert reply.send_targets() == [
        DiscoveredTarget(DISK.format(7), [Portal("127.0.0.7", 3261, 1), Portal("fd00::7", 3261, 1)])
    ]
    assert exchange(TextExchange.send_targets(itt=1, target="iqn.nope"), responder()).pairs == []


def test_normal_session_sees_only_its_target() -> None:
    own = DISK.format(5)
    target = responder(SessionType.NORMAL, session_target=own)
    assert [t.name for t in exchange(TextExchange.send_targets(1, ""), target).send_targets()] == [
        own
    ]
    assert exchange(TextExchange.send_targets(2, DISK.format(6)), target).pairs == []
    assert exchange(TextExchange.send_targets(3), target).pairs == [("SendTargets", "Reject")]


def test_other_keys_are_not_renegotiated() -> None:
    pairs = [("MaxBurstLength", "4096"), ("X-vendor.thing", "1"), ("Foo", "bar")]
    reply = exchange(TextExchange(pairs, itt=4), responder())
    assert reply.pairs == [
        ("MaxBurstLength", "Reject"),
        ("X-vendor.thing", "NotUnderstood"),
        ("Foo", "NotUnderstood"),
    ]


def test_new_exchange_abandons_the_old_one() -> None:
    target = responder(max_send_length=256)
    first = target.receive(
        TextRequest(itt=1, data=encode_text([("SendTargets", "All")])),
        stat_sn=1,
        exp_cmd_sn=1,
        max_cmd_sn=1,
    )
    assert first.cont
    second = target.receive(
        TextRequest(itt=2, data=encode_text([("SendTargets", DISK.format(2))])),
        stat_sn=2,
        exp_cmd_sn=2,
        max_cmd_sn=2,
    )
    assert second.final and decode_text(second.data)[0] == ("TargetName", DISK.format(2))
    with pytest.raises(TextError):  # the old TTT is gone
        target.receive(TextRequest(itt=1, ttt=first.ttt), stat_sn=3, exp_cmd_sn=3, max_cmd_sn=3)


def test_bad_requests_raise_typed_errors() -> None:
    target = responder()
    with pytest.raises(TextError):
        target.receive(TextRequest(itt=1, data=b"junk\0"), stat_sn=0, exp_cmd_sn=0, max_cmd_sn=0)
    with pytest.raises(TextError):
        target.receive(
            TextRequest(itt=1, cont=True, final=True), stat_sn=0, exp_cmd_sn=0, max_cmd_sn=0
        )
    with pytest.raises(TextError):
        target.receive(
            TextRequest(itt=1, data=encode_text([("SendTargets", "All")] * 2)),
            stat_sn=0,
            exp_cmd_sn=0,
            max_cmd_sn=0,
        )


def test_initiator_rejects_nonsense_responses() -> None:
    initiator = TextExchange.send_targets(itt=5)
    initiator.start(0, 0)
    with pytest.raises(TextError):
        initiator.receive(TextResponse(itt=6), 1, 1)
    with pytest.raises(TextError):  # continues without a TTT to continue with
        initiator.receive(TextResponse(itt=5, final=False, cont=True, data=b"Target"), 1, 1)


def test_parse_send_targets_rejects_orphan_addresses() -> None:
    with pytest.raises(TextError):
        parse_send_targets([("TargetAddress", "1.2.3.4:3260,1")])
    with pytest.raises(TextError):
        parse_send_targets([("TargetName", "iqn.x"), ("TargetAddress", "[::1:3260,1")])
    assert send_targets_pairs([TargetRecord("iqn.x", ("h:1,1",))]) == [
        ("TargetName", "iqn.x"),
        ("TargetAddress", "h:1,1"),
    ]


text_data = st.one_of(
    st.binary(max_size=80),
    st.lists(
        st.tuples(
            st.sampled_from(
                ["SendTargets", "TargetName", "TargetAddress", "MaxBurstLength", "X-a"]
            ),
            st.sampled_from(["All", "", "iqn.x", "[::1]:1,1", "1.2.3.4", "Reject", "4096"]),
        ),
        max_size=4,
    ).map(encode_text),
)


@given(
    st.lists(
        st.builds(
            TextRequest,
            final=st.booleans(),
            cont=st.booleans(),
            itt=st.integers(0, 2),
            ttt=st.sampled_from([RESERVED_TAG, 0, 1, 2]),
            data=text_data,
        ),
        max_size=8,
    ),
    st.sampled_from(list(SessionType)),
)
def test_responder_survives_any_requests(requests: list[TextRequest], kind: SessionType) -> None:
    target = responder(kind, max_send_length=64, session_target=DISK.format(1))
    for request in requests:
        try:
            response = target.receive(request, stat_sn=1, exp_cmd_sn=1, max_cmd_sn=1)
        except TextError:
            continue
        assert len(response.data) <= 64
        assert not (response.final and response.cont)


@given(
    st.lists(
        st.builds(
            TextResponse,
            final=st.booleans(),
            cont=st.booleans(),
            itt=st.sampled_from([7, 8]),
            ttt=st.sampled_from([RESERVED_TAG, 0, 5]),
            data=text_data,
        ),
        max_size=6,
    )
)
def test_exchange_survives_any_responses(responses: list[TextResponse]) -> None:
    initiator = TextExchange.send_targets(itt=7)
    initiator.start(0, 0)
    for response in responses:
        try:
            outcome = initiator.receive(response, 1, 1)
        except TextError:
            continue
        if isinstance(outcome, TextReply):
            with contextlib.suppress(TextError):
                outcome.send_targets()


def test_send_targets_through_the_wire_codec() -> None:
    from iscsicore.framing import PduFramer, encode_pdu

    to_target = PduFramer(receiving_from="initiator")
    to_initiator = PduFramer(receiving_from="target")
    initiator = TextExchange.send_targets(itt=0xABCD)
    target = responder(max_send_length=300)
    request = initiator.start(100, 200)
    for round_number in range(100):
        to_target.feed(encode_pdu(request))
        request_in = to_target.next_pdu()
        assert request_in == request and isinstance(request_in, TextRequest)
        response = target.receive(
            request_in, stat_sn=200 + round_number, exp_cmd_sn=101, max_cmd_sn=164
        )
        to_initiator.feed(encode_pdu(response))
        response_in = to_initiator.next_pdu()
        assert response_in == response and isinstance(response_in, TextResponse)
        outcome = initiator.receive(response_in, 101 + round_number, 201 + round_number)
        if isinstance(outcome, TextReply):
            break
        request = outcome
    assert isinstance(outcome, TextReply)
    assert [t.name for t in outcome.send_targets()] == [t.name for t in TARGETS]
