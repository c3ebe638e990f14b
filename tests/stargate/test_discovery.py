"""SendTargets answers (`stargate.discovery`): which targets an initiator is shown, at which
portals, in discovery and in normal sessions, and how a long answer is continued."""

from __future__ import annotations

import trio

from iscsicore.keys import decode_text
from iscsicore.login import LoginDone
from iscsicore.pdu import RESERVED_TAG, RejectReason, TextRequest, TextResponse
from stargate.discovery import SendTargetsResponder
from stargate.server import ServerConfig, StargateServer
from stargate.target import PortalGroup, TargetRegistry
from tests.stargate.client import INITIATOR, TestInitiator, memory_target
from topology.naming import target_name_for

OUTSIDER = "iqn.2026-11.test:outsider"


def _registry(*, tag: int = 1, addresses: tuple[str, ...] = ("127.0.0.2:3261",)) -> TargetRegistry:
    registry = TargetRegistry(PortalGroup(tag, list(addresses)))
    registry.add(memory_target("open", 1 << 20))
    registry.add(memory_target("mine", 1 << 20, allowed=frozenset({INITIATOR})))
    return registry


def _ask(responder: SendTargetsResponder, text: bytes, *, itt: int = 1) -> list[tuple[str, str]]:
    """One whole exchange, following C-bit continuations (bounded)."""
    answer = b""
    request = TextRequest(itt=itt, data=text)
    for _ in range(1000):
        response = responder.respond(request)
        assert isinstance(response, TextResponse), response
        assert response.itt == itt
        answer += bytes(response.data)
        if response.final:
            assert response.ttt == RESERVED_TAG and not response.cont
            return decode_text(answer)
        assert response.cont and response.ttt != RESERVED_TAG
        request = TextRequest(itt=itt, ttt=response.ttt)
    raise AssertionError("the answer never ended")


def test_send_targets_all_lists_every_visible_target_at_each_portal() -> None:
    registry = _registry(tag=7, addresses=("127.0.0.2:3261", "[::1]:3260"))
    responder = SendTargetsResponder(registry, INITIATOR, 8192)
    assert _ask(responder, b"SendTargets=All\0") == [
        ("TargetName", target_name_for("open")),
        ("TargetAddress", "127.0.0.2:3261,7"),
        ("TargetAddress", "[::1]:3260,7"),
        ("TargetName", target_name_for("mine")),
        ("TargetAddress", "127.0.0.2:3261,7"),
        ("TargetAddress", "[::1]:3260,7"),
    ]


def test_acl_hides_targets_from_initiators_it_does_not_admit() -> None:
    registry = _registry()
    outsider = SendTargetsResponder(registry, OUTSIDER, 8192)
    assert _ask(outsider, b"SendTargets=All\0") == [
        ("TargetName", target_name_for("open")),
        ("TargetAddress", "127.0.0.2:3261,1"),
    ]
    # Asking for the hidden target by name does not reveal it either.
    assert _ask(outsider, f"SendTargets={target_name_for('mine')}\0".encode()) == []


def test_send_targets_for_one_target_answers_that_target_only() -> None:
    responder = SendTargetsResponder(_registry(), INITIATOR, 8192)
    assert _ask(responder, f"SendTargets={target_name_for('mine')}\0".encode()) == [
        ("TargetName", target_name_for("mine")),
        ("TargetAddress", "127.0.0.2:3261,1"),
    ]
    assert _ask(responder, f"SendTargets={target_name_for('absent')}\0".encode()) == []


def test_answers_follow_the_registry_and_portal_group_as_they_change() -> None:
    registry = _registry()
    responder = SendTargetsResponder(registry, INITIATOR, 8192)
    registry.remove(target_name_for("open"))
    registry.add(memory_target("late", 1 << 20))
    registry.portal_group.advertised_addresses = ["127.0.0.9:3262"]
    pairs = _ask(responder, b"SendTargets=All\0")
    assert [value for key, value in pairs if key == "TargetName"] == [
        target_name_for("mine"),
        target_name_for("late"),
    ]
    assert {value for key, value in pairs if key == "TargetAddress"} == {"127.0.0.9:3262,1"}


def test_normal_session_may_ask_only_about_its_own_target() -> None:
    mine = target_name_for("mine")
    responder = SendTargetsResponder(_registry(), INITIATOR, 8192, current_target=mine)
    assert _ask(responder, b"SendTargets=All\0") == [("SendTargets", "Reject")]
    assert _ask(responder, b"SendTargets=\0") == [
        ("TargetName", mine),
        ("TargetAddress", "127.0.0.2:3261,1"),
    ]
    assert _ask(responder, f"SendTargets={target_name_for('open')}\0".encode()) == []


def test_long_answer_is_split_at_the_initiators_segment_length() -> None:
    registry = TargetRegistry(PortalGroup(1, ["127.0.0.2:3261"]))
    for index in range(40):
        registry.add(memory_target(f"disk-{index:03d}", 1 << 20))
    responder = SendTargetsResponder(registry, INITIATOR, 512)
    request = TextRequest(itt=5, data=b"SendTargets=All\0")
    sizes: list[int] = []
    answer = b""
    for _ in range(100):
        response = responder.respond(request)
        assert isinstance(response, TextResponse)
        sizes.append(len(response.data))
        answer += bytes(response.data)
        if response.final:
            break
        request = TextRequest(itt=5, ttt=response.ttt)
    assert len(sizes) > 1 and max(sizes) <= 512
    names = [value for key, value in decode_text(answer) if key == "TargetName"]
    assert names == [target_name_for(f"disk-{index:03d}") for index in range(40)]


def test_malformed_exchanges_are_rejected_as_protocol_errors() -> None:
    responder = SendTargetsResponder(_registry(), INITIATOR, 8192)
    both_bits = TextRequest(itt=1, final=True, cont=True, data=b"SendTargets=All\0")
    assert responder.respond(both_bits) is RejectReason.PROTOCOL_ERROR
    stray_ttt = TextRequest(itt=2, ttt=0x1234, data=b"")
    assert responder.respond(stray_ttt) is RejectReason.PROTOCOL_ERROR
    twice = TextRequest(itt=3, data=b"SendTargets=All\0SendTargets=All\0")
    assert responder.respond(twice) is RejectReason.PROTOCOL_ERROR
    # The responder is still usable afterwards.
    assert _ask(responder, b"SendTargets=All\0", itt=4)[0] == (
        "TargetName",
        target_name_for("open"),
    )


async def test_server_advertises_its_bound_portal_by_default(
    nursery: trio.Nursery, loopback_address: str
) -> None:
    registry = TargetRegistry()
    registry.add(memory_target("vd1", 1 << 20))
    server = StargateServer(registry, ServerConfig(host=loopback_address, port=0))
    await nursery.start(server.serve)
    assert server.port is not None
    initiator = await TestInitiator.connect(server.port, loopback_address)
    assert isinstance(await initiator.login(None), LoginDone)
    await initiator.send(
        TextRequest(itt=initiator.next_itt(), cmd_sn=initiator.cmd_sn, data=b"SendTargets=All\0")
    )
    response = await initiator.receive()
    assert isinstance(response, TextResponse) and response.final
    assert decode_text(bytes(response.data)) == [
        ("TargetName", target_name_for("vd1")),
        ("TargetAddress", f"{loopback_address}:{server.port},1"),
    ]
    await initiator.close()
