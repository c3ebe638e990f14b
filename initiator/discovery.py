"""SendTargets discovery and the `initiator ls` listing (targets, LUNs, sizes)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import trio

from iscsicore.keys import MalformedText, decode_text, encode_text
from iscsicore.pdu import (
    RESERVED_TAG,
    LogoutReason,
    LogoutRequest,
    TextRequest,
    TextResponse,
)

from . import cdb
from .errors import CheckCondition, InitiatorError, TargetProtocolError
from .login_flow import Established, LoginOptions, establish
from .session import Session, SessionConfig
from .url import Portal

_MAX_TEXT_ROUNDS = 64  # continuation PDUs accepted for one SendTargets answer
_MAX_TEXT_BYTES = 1 << 20


@dataclass(slots=True)
class DiscoveredTarget:
    name: str
    portals: list[str] = field(default_factory=list)  # TargetAddress values as sent


@dataclass(slots=True)
class LunInfo:
    lun: int
    block_size: int = 0
    blocks: int = 0
    vendor: str = ""
    product: str = ""
    error: str = ""

    @property
    def size_bytes(self) -> int:
        return self.block_size * self.blocks


def parse_send_targets(text: bytes) -> list[DiscoveredTarget]:
    targets: list[DiscoveredTarget] = []
    try:
        pairs = decode_text(text)
    except MalformedText as error:
        raise TargetProtocolError(f"malformed SendTargets answer: {error}") from None
    for key, value in pairs:
        if key == "TargetName":
            targets.append(DiscoveredTarget(value))
        elif key == "TargetAddress":
            if not targets:
                raise TargetProtocolError("TargetAddress before any TargetName")
            targets[-1].portals.append(value)
    return targets


async def send_targets(
    portal: Portal, options: LoginOptions | None = None
) -> list[DiscoveredTarget]:
    """Log in a discovery session, ask SendTargets=All, log out."""
    established = await establish(portal, None, options or LoginOptions())
    try:
        with trio.fail_after(10):
            return parse_send_targets(await _text_exchange(established, [("SendTargets", "All")]))
    except trio.TooSlowError:
        raise TargetProtocolError(f"{portal} did not answer SendTargets in 10 s") from None
    finally:
        await established.connection.aclose()


async def _text_exchange(established: Established, pairs: list[tuple[str, str]]) -> bytes:
    connection = established.connection
    cmd_sn = established.exp_cmd_sn
    exp_stat_sn = (established.stat_sn + 1) & 0xFFFFFFFF
    answer = bytearray()
    request = TextRequest(
        final=True, itt=1, ttt=RESERVED_TAG, cmd_sn=cmd_sn, exp_stat_sn=exp_stat_sn,
        data=encode_text(pairs),
    )  # fmt: skip
    for _round in range(_MAX_TEXT_ROUNDS):
        await connection.send([request])
        cmd_sn = (cmd_sn + 1) & 0xFFFFFFFF
        response = await connection.receive()
        if not isinstance(response, TextResponse) or response.itt != 1:
            raise TargetProtocolError(f"expected a Text Response, got {response.opcode.name}")
        exp_stat_sn = (response.stat_sn + 1) & 0xFFFFFFFF
        answer += response.data
        if len(answer) > _MAX_TEXT_BYTES:
            raise TargetProtocolError("SendTargets answer larger than 1 MiB")
        if response.final and not response.cont:
            logout = LogoutRequest(
                immediate=True, reason=LogoutReason.CLOSE_SESSION, itt=2, cmd_sn=cmd_sn,
                exp_stat_sn=exp_stat_sn,
            )  # fmt: skip
            await connection.send([logout])
            with trio.move_on_after(2):
                await connection.receive()  # the Logout Response; its content does not matter
            return bytes(answer)
        # More to come: an empty request with the target's TTT fetches the next part.
        request = TextRequest(
            final=True, itt=1, ttt=response.ttt, cmd_sn=cmd_sn, exp_stat_sn=exp_stat_sn
        )
    raise TargetProtocolError(f"SendTargets answer spans more than {_MAX_TEXT_ROUNDS} PDUs")


async def list_luns(portal: Portal, target: str, config: SessionConfig) -> list[LunInfo]:
    """REPORT LUNS, then capacity and identity of each LUN, through one session."""
    infos: list[LunInfo] = []
    quick = replace(config, replacement_timeout=min(config.replacement_timeout, 5.0))
    async with Session.connect(portal, target, quick) as session:
        result = await session.execute(cdb.report_luns(), read_length=4096)
        for lun in cdb.parse_report_luns(bytes(result.data)):
            info = LunInfo(lun)
            try:
                inquiry = await session.execute(cdb.inquiry(96), lun=lun, read_length=96)
                parsed = cdb.parse_inquiry(bytes(inquiry.data))
                info.vendor, info.product = parsed.vendor, parsed.product
                if parsed.peripheral_type == 0:  # a block device: it has a capacity
                    try:
                        capacity_data = await session.execute(
                            cdb.read_capacity16(), lun=lun, read_length=32
                        )
                        capacity = cdb.parse_read_capacity16(bytes(capacity_data.data))
                    except CheckCondition:
                        capacity_data = await session.execute(
                            cdb.read_capacity10(), lun=lun, read_length=8
                        )
                        capacity = cdb.parse_read_capacity10(bytes(capacity_data.data))
                    info.block_size, info.blocks = capacity.block_size, capacity.blocks
            except InitiatorError as error:
                info.error = str(error)
            infos.append(info)
    return infos
