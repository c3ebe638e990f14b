"""One-shot health probe of a portal: connect, log in, TEST UNIT READY, log out.

For the redirector's health checks: bounded by one timeout, never retries, never follows
a redirect unless asked (a stargate that redirects is not serving the vDisk itself), and
never raises: the result says what went wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import trio

from iscsicore.portal import Portal

from .errors import InitiatorError
from .login_flow import LoginOptions
from .session import Session, SessionConfig
from .url import parse_portal


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    seconds: float  # time to the answer (or the failure)
    portal: str  # the portal that answered (after redirects, if followed)
    error: str = ""


async def probe(
    portal: str | Portal,
    target: str,
    *,
    lun: int = 0,
    timeout: float = 2.0,
    follow_redirects: bool = False,
    login: LoginOptions | None = None,
) -> ProbeResult:
    where = parse_portal(portal) if isinstance(portal, str) else portal
    options = replace(
        login or LoginOptions(),
        max_redirects=8 if follow_redirects else 0,
        connect_timeout=timeout,
        login_timeout=timeout,
    )
    config = SessionConfig(
        login=options, nop_interval=0, replacement_timeout=0.0, max_command_retries=0
    )
    started = trio.current_time()
    answered_by = str(where)
    try:
        with trio.fail_after(timeout):
            async with Session.connect(where, target, config) as session:
                answered_by = str(session.portal)
                await session.execute(bytes(6), lun=lun)  # TEST UNIT READY
    except trio.TooSlowError:
        return ProbeResult(False, trio.current_time() - started, answered_by, "timed out")
    except InitiatorError as error:
        return ProbeResult(
            False, trio.current_time() - started, answered_by, f"{type(error).__name__}: {error}"
        )
    return ProbeResult(True, trio.current_time() - started, answered_by)
