"""iscsi:// URLs (libiscsi's form) and portal addresses (as in TargetAddress / SendTargets).

    iscsi://[user[%password]@]host[:port]/<target-iqn>/<lun>[?target_user=U&target_password=P]

``host`` is a name, an IPv4 address or ``[IPv6]``. A portal is ``host[:port][,tpgt]``
(:class:`iscsicore.portal.Portal`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from urllib.parse import parse_qs, unquote

from iscsicore.portal import DEFAULT_PORT, Portal, PortalError

from .errors import UrlError


def parse_portal(text: str, default_port: int = DEFAULT_PORT) -> Portal:
    """:meth:`Portal.parse` for user input: surrounding spaces and a bare IPv6 address (no
    brackets, so no port) are accepted too; errors are :class:`UrlError`."""
    text = text.strip()
    address, comma, tag = text.partition(",")
    if not address.startswith("[") and address.count(":") > 1:
        text = f"[{address}]{comma}{tag}"
    try:
        return Portal.parse(text, default_port=default_port)
    except PortalError as error:
        raise UrlError(str(error)) from None


@dataclass(frozen=True, slots=True)
class ChapCredentials:
    """One-way CHAP (user, secret); mutual when target_user/target_secret are set too."""

    user: str
    secret: str
    target_user: str | None = None
    target_secret: str | None = None

    @property
    def mutual(self) -> bool:
        return self.target_user is not None and self.target_secret is not None


@dataclass(frozen=True, slots=True)
class IscsiUrl:
    portal: Portal
    target: str
    lun: int = 0
    chap: ChapCredentials | None = None

    def __str__(self) -> str:
        auth = ""
        if self.chap is not None:
            auth = f"{self.chap.user}%***@"
        return f"iscsi://{auth}{self.portal}/{self.target}/{self.lun}"

    def with_portal(self, portal: Portal) -> IscsiUrl:
        return replace(self, portal=portal)


def parse_url(url: str) -> IscsiUrl:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "iscsi":
        raise UrlError(f"not an iscsi:// URL: {url!r}")
    rest, _, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    if not slash:
        raise UrlError(f"URL lacks /<target-iqn>/<lun>: {url!r}")
    userinfo, at, hostport = authority.rpartition("@")
    if not at:
        userinfo, hostport = "", authority
    portal = parse_portal(hostport)
    target, _, lun_text = path.rstrip("/").rpartition("/")
    if not target:  # only one path element: the target, LUN 0 implied is not libiscsi's form
        raise UrlError(f"URL lacks the LUN: {url!r} (iscsi://host:port/<iqn>/<lun>)")
    lun = _parse_int(lun_text, "LUN", 0, 0x3FFF)
    chap = _parse_chap(userinfo, query) if userinfo or query else None
    return IscsiUrl(portal, unquote(target), lun, chap)


def _parse_chap(userinfo: str, query: str) -> ChapCredentials | None:
    params = {key: values[-1] for key, values in parse_qs(query).items()}
    if not userinfo:
        if params.get("target_user"):
            raise UrlError("target_user given without an initiator user")
        return None
    user, _, secret = userinfo.partition("%")
    if not secret:
        raise UrlError("CHAP user given without a password (user%password@host)")
    target_user = params.get("target_user")
    target_secret = params.get("target_password")
    if (target_user is None) != (target_secret is None):
        raise UrlError("mutual CHAP needs both target_user and target_password")
    return ChapCredentials(unquote(user), unquote(secret), target_user, target_secret)


def _parse_int(text: str, what: str, low: int, high: int) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise UrlError(f"bad {what} {text!r}") from None
    if not low <= value <= high:
        raise UrlError(f"{what} {value} outside {low}..{high}")
    return value
