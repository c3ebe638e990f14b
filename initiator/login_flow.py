"""Connect and log in, following redirects: the login phase as an initiator drives it.

``establish`` dials a portal, runs the login exchange and, on a 0x0101/0x0102 redirect,
dials the TargetAddress it names, up to ``max_redirects`` hops and never the same portal
twice in one attempt (a loop). The login exchange itself (security stage with CHAP,
operational negotiation) is the shared sans-IO state machine
``iscsicore.login.InitiatorLogin``; this module only moves its PDUs.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import trio

from iscsicore.chap import ChapSecrets
from iscsicore.keys import SessionParams
from iscsicore.login import (
    InitiatorLogin,
    LoginDone,
    LoginFailed,
    LoginProposals,
    LoginRedirect,
)
from iscsicore.pdu import LoginRequest, LoginResponse, LoginStatus
from iscsicore.portal import Portal

from .connection import Connection
from .errors import (
    AuthenticationError,
    LoginError,
    RedirectError,
    TargetProtocolError,
)
from .url import ChapCredentials

DEFAULT_INITIATOR_NAME = "iqn.2026-11.org.stargate-emu:initiator"
_MAX_LOGIN_ROUNDS = 16  # a target that never lets us transit is broken, not slow


@dataclass(slots=True)
class LoginOptions:
    """What the initiator offers at login (QEMU/libiscsi-like defaults)."""

    initiator_name: str = DEFAULT_INITIATOR_NAME
    chap: ChapCredentials | None = None
    header_digest: bool = False  # offer CRC32C (preferred) instead of None only
    data_digest: bool = False
    max_recv_data_segment_length: int = 262144
    max_burst_length: int = 1048576
    first_burst_length: int = 262144
    initial_r2t: bool = False  # ask for unsolicited data, as libiscsi does
    immediate_data: bool = True
    default_time2wait: int = 2
    default_time2retain: int = 0  # ERL 0: nothing to retain
    max_redirects: int = 8
    connect_timeout: float = 5.0
    login_timeout: float = 10.0
    isid: int = field(default_factory=lambda: (0x80 << 40) | (secrets.randbits(24) << 16))

    def proposals(self) -> LoginProposals:
        def digests(wanted: bool) -> tuple[str, ...]:
            return ("CRC32C", "None") if wanted else ("None",)

        return LoginProposals(
            header_digest=digests(self.header_digest),
            data_digest=digests(self.data_digest),
            max_recv_data_segment_length=self.max_recv_data_segment_length,
            max_burst_length=self.max_burst_length,
            first_burst_length=self.first_burst_length,
            immediate_data=self.immediate_data,
            initial_r2t=self.initial_r2t,
            default_time2wait=self.default_time2wait,
            default_time2retain=self.default_time2retain,
        )


@dataclass(slots=True)
class Established:
    """A logged-in connection, ready for the full-feature phase."""

    connection: Connection
    params: SessionParams
    tsih: int
    stat_sn: int
    exp_cmd_sn: int
    max_cmd_sn: int
    redirects: int = 0


async def establish(
    portal: Portal,
    target: str | None,
    options: LoginOptions,
) -> Established:
    """Dial ``portal`` and log in to ``target`` (None: a discovery session)."""
    visited = {(portal.connect_host, portal.port)}
    current = portal
    for hops in range(options.max_redirects + 1):
        connection = await Connection.open(current, timeout=options.connect_timeout)
        try:
            with trio.fail_after(options.login_timeout):
                outcome = await _login(connection, options, target)
        except trio.TooSlowError:
            await connection.aclose()
            raise LoginError(f"login to {current} timed out") from None
        except LoginError as error:
            await connection.aclose()
            if not hops:
                raise
            # Say where it failed: after a redirect, "authentication failed" alone reads as
            # the portal's refusal (open-iscsi #117).
            where = f"at {current.host_port}, where {portal.host_port} redirected us"
            raise type(error)(f"{error} ({where})", error.status) from None
        except BaseException:
            await connection.aclose()
            raise
        if isinstance(outcome, Established):
            outcome.redirects = hops
            return outcome
        await connection.aclose()
        key = (outcome.connect_host, outcome.port)
        if key in visited:
            raise RedirectError(f"redirect loop: {current} sent us back to {outcome}")
        visited.add(key)
        current = outcome
    raise RedirectError(f"more than {options.max_redirects} redirects, last to {current}")


async def _login(
    connection: Connection, options: LoginOptions, target: str | None
) -> Established | Portal:
    """Drive the shared sans-IO ``InitiatorLogin`` over one connection."""
    chap = options.chap
    machine = InitiatorLogin(
        options.initiator_name,
        target,
        options.isid,
        chap=ChapSecrets(chap.user, chap.secret) if chap is not None else None,
        mutual_chap=(
            ChapSecrets(chap.target_user, chap.target_secret)
            if chap is not None and chap.target_user is not None and chap.target_secret is not None
            else None
        ),
        proposals=options.proposals(),
    )
    request = machine.start()
    for _round in range(_MAX_LOGIN_ROUNDS):
        await connection.send([request])
        response = await connection.receive()
        if not isinstance(response, LoginResponse):
            raise TargetProtocolError(f"expected a Login Response, got {response.opcode.name}")
        outcome = machine.receive(response)
        if isinstance(outcome, LoginRequest):
            request = outcome
        elif isinstance(outcome, LoginDone):
            params = outcome.params
            connection.enable_full_feature(
                header_digest=params.header_digest,
                data_digest=params.data_digest,
                max_recv_data_segment_length=params.initiator_max_recv_data_segment_length,
            )
            return Established(
                connection,
                params,
                outcome.tsih,
                outcome.stat_sn,
                outcome.exp_cmd_sn,
                outcome.max_cmd_sn,
            )
        elif isinstance(outcome, LoginRedirect):
            return Portal(outcome.host, outcome.port, outcome.tpgt)
        else:
            raise _login_failure(outcome)
    raise LoginError(f"login did not complete in {_MAX_LOGIN_ROUNDS} rounds")


def _login_failure(failed: LoginFailed) -> LoginError:
    status = failed.raw_status or int(failed.status)
    name = failed.status.name.replace("_", " ").lower()
    message = f"login failed: {name} ({status:#06x}): {failed.message}"
    if failed.status == LoginStatus.AUTHENTICATION_FAILURE:
        return AuthenticationError(message, status)
    return LoginError(message, status)
