"""SendTargets discovery and the `initiator ls` listing (targets, LUNs, sizes)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import trio

from iscsicore.fullfeature.exchanges import logout_request
from iscsicore.fullfeature.numbering import InitiatorNumbering
from iscsicore.fullfeature.text import TextExchange, TextReply
from iscsicore.keys import TextError
from iscsicore.pdu import TextResponse
from iscsicore.portal import Portal

from . import cdb
from .errors import CheckCondition, InitiatorError, TargetProtocolError
from .login_flow import Established, LoginOptions, establish
from .session import Session, SessionConfig

_MAX_TEXT_ROUNDS = 64  # continuation PDUs accepted for one SendTargets answer
_MAX_TEXT_BYTES = 1 << 20
_TEXT_TIMEOUT = 10.0


@dataclass(slots=True)
class DiscoveredTarget:
    name: str
    portals: list[str] = field(default_factory=list)  # TargetAddress values


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


async def send_targets(
    portal: Portal, options: LoginOptions | None = None
) -> list[DiscoveredTarget]:
    """Log in a discovery session, ask SendTargets=All, log out."""
    established = await establish(portal, None, options or LoginOptions())
    try:
        with trio.fail_after(_TEXT_TIMEOUT):
            reply = await _text_exchange(established, TextExchange.send_targets(itt=1))
            targets = reply.send_targets()
    except trio.TooSlowError:
        raise TargetProtocolError(f"{portal} did not answer SendTargets in time") from None
    except TextError as error:
        raise TargetProtocolError(f"bad SendTargets answer from {portal}: {error}") from None
    finally:
        await established.connection.aclose()
    return [DiscoveredTarget(t.name, [str(address) for address in t.addresses]) for t in targets]


async def _text_exchange(established: Established, exchange: TextExchange) -> TextReply:
    """Drive the shared sans-IO text exchange, then log out of the discovery session."""
    connection = established.connection
    sn = InitiatorNumbering(established.exp_cmd_sn, established.max_cmd_sn, established.stat_sn)
    request = exchange.start(sn.cmd_sn, sn.exp_stat_sn)
    received = 0
    for _round in range(_MAX_TEXT_ROUNDS):
        await connection.send([request])
        sn.take_cmd_sn()  # the request's
        response = await connection.receive()
        if not isinstance(response, TextResponse):
            raise TargetProtocolError(f"expected a Text Response, got {response.opcode.name}")
        sn.status_seen(response.stat_sn)
        received += len(response.data)
        if received > _MAX_TEXT_BYTES:
            raise TargetProtocolError("SendTargets answer larger than 1 MiB")
        outcome = exchange.receive(response, sn.cmd_sn, sn.exp_stat_sn)
        if isinstance(outcome, TextReply):
            await connection.send([logout_request(2, cmd_sn=sn.cmd_sn, exp_stat_sn=sn.exp_stat_sn)])
            with trio.move_on_after(2):
                await connection.receive()  # the Logout Response; its content does not matter
            return outcome
        request = outcome
    raise TargetProtocolError(f"SendTargets answer spans more than {_MAX_TEXT_ROUNDS} PDUs")


async def list_luns(
    portal: Portal, target: str, config: SessionConfig
) -> tuple[str, list[LunInfo]]:
    """REPORT LUNS, then capacity and identity of each LUN, through one session; with the
    portal that served it (after any redirect)."""
    infos: list[LunInfo] = []
    quick = replace(config, replacement_timeout=min(config.replacement_timeout, 5.0))
    async with Session.connect(portal, target, quick) as session:
        served_by = str(session.portal)
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
    return served_by, infos
