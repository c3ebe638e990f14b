"""The one portal address: ``host[:port][,tpgt]`` as in TargetAddress, SendTargets and CLIs.

``host`` is a DNS name, an IPv4 address or an ``[IPv6]`` literal (RFC 7143 section 13.8);
the port defaults to the well-known 3260 and the target portal group tag is optional.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

DEFAULT_PORT = 3260  # the IANA iSCSI port


class PortalError(ValueError):
    """Text that is not a portal; the message names the text."""


@dataclass(frozen=True, slots=True)
class Portal:
    host: str  # without brackets
    port: int = DEFAULT_PORT
    tpgt: int | None = None  # target portal group tag

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

    @property
    def host_port(self) -> str:
        """``host:port``, an IPv6 host in brackets, without the tag."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def format(self) -> str:
        """``host:port[,tpgt]``; :meth:`parse` reads it back."""
        return self.host_port if self.tpgt is None else f"{self.host_port},{self.tpgt}"

    def __str__(self) -> str:
        return self.format()

    @classmethod
    def parse(
        cls,
        text: str,
        *,
        default_port: int | None = DEFAULT_PORT,
        any_port: bool = False,
        what: str = "portal",
    ) -> Portal:
        """Parse ``host[:port][,tpgt]``, e.g. ``1.2.3.4:3260,1``, ``[::1]:3261`` or ``host``.

        ``default_port`` None makes the port required; ``any_port`` admits port 0 (a
        listening portal whose port the kernel picks). Raises :class:`PortalError`, naming
        the text as ``what`` (e.g. "TargetAddress").
        """
        address, comma, tag_text = text.partition(",")
        tpgt: int | None = None
        if comma:
            tpgt = _number(tag_text, 0, 0xFFFF)
            if tpgt is None:
                raise PortalError(f"bad portal group tag in {what} {text!r}")
        if address.startswith("["):
            host, bracket, rest = address[1:].partition("]")
            if not bracket or ":" not in host:
                raise PortalError(f"bad IPv6 literal in {what} {text!r}")
            if rest and not rest.startswith(":"):
                raise PortalError(f"junk after IPv6 literal in {what} {text!r}")
            colon, port_text = rest[:1], rest[1:]
        else:
            host, colon, port_text = address.partition(":")
            if ":" in port_text:
                raise PortalError(f"IPv6 address without brackets in {what} {text!r}")
        if not host or any(c.isspace() for c in host):
            raise PortalError(f"bad host in {what} {text!r}")
        if colon:
            port = _number(port_text, 0 if any_port else 1, 0xFFFF)
            if port is None:
                raise PortalError(f"bad port in {what} {text!r}")
        elif default_port is None:
            raise PortalError(f"{what} {text!r} is not HOST:PORT")
        else:
            port = default_port
        return cls(host, port, tpgt)


def _number(text: str, low: int, high: int) -> int | None:
    """An RFC 7143 numeric value (decimal or 0x hex) in ``low .. high``, else None."""
    digits, base = (text[2:], 16) if text[:2] in ("0x", "0X") else (text, 10)
    valid = "0123456789abcdefABCDEF" if base == 16 else "0123456789"
    if not digits or len(digits) > 16 or not all(c in valid for c in digits):
        return None
    value = int(digits, base)
    return value if low <= value <= high else None
