"""The one portal address: ``host[:port][,tpgt]`` parsed and formatted by iscsicore.portal."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iscsicore.portal import DEFAULT_PORT, Portal, PortalError

hosts = st.one_of(
    st.ip_addresses().map(str),
    st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20}){0,3}", fullmatch=True),
)
ports = st.integers(1, 0xFFFF)
tags = st.none() | st.integers(0, 0xFFFF)


@given(hosts, ports, tags)
def test_format_then_parse_round_trips(host: str, port: int, tpgt: int | None) -> None:
    portal = Portal(host, port, tpgt)
    assert Portal.parse(portal.format()) == portal
    assert Portal.parse(str(portal)) == portal
    assert Portal.parse(portal.host_port, default_port=None) == Portal(host, port)


@given(hosts, tags)
def test_the_port_defaults(host: str, tpgt: int | None) -> None:
    text = f"[{host}]" if ":" in host else host
    text += "" if tpgt is None else f",{tpgt}"
    assert Portal.parse(text) == Portal(host, DEFAULT_PORT, tpgt)
    assert Portal.parse(text, default_port=3261).port == 3261
    with pytest.raises(PortalError, match="is not HOST:PORT"):
        Portal.parse(text, default_port=None)


@given(st.text(max_size=60))
def test_any_text_parses_or_raises_portal_error(text: str) -> None:
    with contextlib.suppress(PortalError):
        portal = Portal.parse(text)
        assert Portal.parse(portal.format()) == portal


@pytest.mark.parametrize(
    ("text", "portal"),
    [
        ("1.2.3.4:3260,1", Portal("1.2.3.4", 3260, 1)),
        ("[::1]:3261", Portal("::1", 3261)),
        ("[fe80::1%eth0]:3262,7", Portal("fe80::1%eth0", 3262, 7)),
        ("host.example.com,0x2", Portal("host.example.com", 3260, 2)),
        ("[2001:db8::2]", Portal("2001:db8::2", 3260)),
    ],
)
def test_portals(text: str, portal: Portal) -> None:
    assert Portal.parse(text) == portal


@pytest.mark.parametrize(
    "text", ["", ":3260", "host:", "host:port", "host:0", "host:70000", "[::1", "[::1]x",
             "::1:3260", "h,x", "h,70000", "[1.2.3.4]:1", "a b:1"],
)  # fmt: skip
def test_bad_portals_are_named(text: str) -> None:
    with pytest.raises(PortalError, match="portal"):
        Portal.parse(text)


def test_port_zero_only_when_any_port_will_do() -> None:
    assert Portal.parse("127.0.0.1:0", any_port=True) == Portal("127.0.0.1", 0)
    with pytest.raises(PortalError, match="bad port in TargetAddress 'h:0'"):
        Portal.parse("h:0", what="TargetAddress")


def test_ipv6_is_formatted_in_brackets_and_mapped_ipv4_dialled_as_ipv4() -> None:
    assert Portal("fd00::5", 3261, 2).format() == "[fd00::5]:3261,2"
    assert Portal("10.0.0.1", 3261).host_port == "10.0.0.1:3261"
    assert Portal("::ffff:127.0.0.1", 1).connect_host == "127.0.0.1"
    assert Portal("::1", 1).connect_host == "::1"
