"""iscsi:// URLs (libiscsi's form) and portal addresses (as in TargetAddress / SendTargets).

    iscsi://[user[%password]@]host[:port]/<target-iqn>/<lun>[?target_user=U&target_password=P]

``host`` is a name, an IPv4 address or ``[IPv6]``. A portal is ``host[:port][,tpgt]``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from urllib.parse import parse_qs, unquote

from .errors import UrlError

DEFAULT_PORT = 3260


@dataclass(frozen=True, slots=True)
class Portal:
    host: str  # without brackets
    port: int = DEFAULT_PORT
    tpgt: int | None = None

    @property
    def connect_host(self) -> str:
        """The address to dial: an IPv4-mapped IPv6 address is dialled as plain IPv4, which
        works whether or not the host has IPv6 (tgtd redirects name such addresses)."""
        try:
            address = ipaddress.ip_address(self.host)
        except ValueError:
            return self.host
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        text = f"{host}:{self.port}"
        return text if self.tpgt is None else f"{text},{self.tpgt}"


def parse_portal(text: str, default_port: int = DEFAULT_PORT) -> Portal:
    """Parse ``host[:port][,tpgt]`` with ``host`` possibly ``[IPv6]``."""
    text = text.strip()
    tpgt: int | None = None
    if "," in text and not text.endswith("]"):
        text, _, tpgt_text = text.rpartition(",")
        tpgt = _parse_int(tpgt_text, "portal group tag", 0, 0xFFFF)
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise UrlError(f"unterminated IPv6 literal in {text!r}")
        host, rest = text[1:close], text[close + 1 :]
        if rest and not rest.startswith(":"):
            raise UrlError(f"unexpected {rest!r} after IPv6 literal")
        port_text = rest[1:]
    elif text.count(":") > 1:  # a bare IPv6 address, no port
        host, port_text = text, ""
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise UrlError(f"no host in portal {text!r}")
    port = _parse_int(port_text, "port", 1, 0xFFFF) if port_text else default_port
    return Portal(host, port, tpgt)


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
