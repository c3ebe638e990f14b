"""URL and portal parsing: libiscsi's iscsi:// form and TargetAddress-style portals."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from initiator.errors import UrlError
from initiator.url import parse_portal, parse_url
from iscsicore.portal import Portal


def test_plain_url() -> None:
    url = parse_url("iscsi://127.0.0.1:3261/iqn.2010-06.com.nutanix:vmdisk-7/0")
    assert url.portal == Portal("127.0.0.1", 3261)
    assert url.target == "iqn.2010-06.com.nutanix:vmdisk-7"
    assert url.lun == 0
    assert url.chap is None


def test_chap_url_with_mutual_secret() -> None:
    url = parse_url(
        "iscsi://alice%s3cr3t-s3cr3t@[::1]:3260/iqn.x:t/3?target_user=tgt&target_password=pw"
    )
    assert url.portal == Portal("::1", 3260)
    assert url.lun == 3
    assert url.chap is not None
    assert (url.chap.user, url.chap.secret) == ("alice", "s3cr3t-s3cr3t")
    assert url.chap.mutual and url.chap.target_user == "tgt"
    assert "s3cr3t" not in str(url)


@pytest.mark.parametrize(
    "bad",
    [
        "http://h/iqn.x/0",
        "iscsi://h",
        "iscsi://h/iqn.x",
        "iscsi://h:0/iqn.x/0",
        "iscsi://h:99999/iqn.x/0",
        "iscsi://h/iqn.x/notanumber",
        "iscsi://user@h/iqn.x/0",
        "iscsi://[::1/iqn.x/0",
    ],
)
def test_bad_urls_raise_url_error(bad: str) -> None:
    with pytest.raises(UrlError):
        parse_url(bad)


@pytest.mark.parametrize(
    ("text", "portal"),
    [
        ("10.0.0.1", Portal("10.0.0.1", 3260)),
        ("10.0.0.1:3261,2", Portal("10.0.0.1", 3261, 2)),
        ("[fe80::1]:3262", Portal("fe80::1", 3262)),
        ("[::ffff:127.0.0.1]:3263,1", Portal("::ffff:127.0.0.1", 3263, 1)),
        ("node-a", Portal("node-a", 3260)),
    ],
)
def test_portals(text: str, portal: Portal) -> None:
    assert parse_portal(text) == portal


def test_ipv4_mapped_address_is_dialled_as_ipv4() -> None:
    assert Portal("::ffff:127.0.0.1", 1).connect_host == "127.0.0.1"
    assert Portal("::1", 1).connect_host == "::1"


@given(
    host=st.one_of(
        st.ip_addresses().map(str),
        st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
    ),
    port=st.integers(1, 65535),
    tpgt=st.none() | st.integers(0, 65535),
)
def test_portal_text_round_trips(host: str, port: int, tpgt: int | None) -> None:
    portal = Portal(host, port, tpgt)
    assert parse_portal(str(portal)) == portal


@given(st.text(max_size=80))
def test_any_text_parses_or_raises_url_error(text: str) -> None:
    for candidate in (text, f"iscsi://{text}", f"iscsi://h/{text}"):
        with contextlib.suppress(UrlError):
            parse_url(candidate)
