"""CHAP helpers: binary encodings, the MD5 response, both halves of one-way and mutual CHAP."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iscsicore.chap import (
    ChapError,
    ChapInitiator,
    ChapSecrets,
    ChapTarget,
    chap_response,
    decode_binary,
    encode_binary,
)
from iscsicore.keys import TextError
from iscsicore.pdu import LoginStatus

USER = ChapSecrets("host1", "initiator-secret-16")
TARGET = ChapSecrets("stargate", "target-secret-1234")


def test_md5_response_known_answer() -> None:
    # md5sum of the bytes 01 "secret" 00..0f, computed with coreutils.
    assert chap_response(1, b"secret", bytes(range(16))).hex() == (
        "740e86463bda3a4d7017d6e0fba0699d"
    )


@pytest.mark.parametrize(
    ("text", "data"),
    [
        ("0x00ff10", b"\x00\xff\x10"),
        ("0XAbCd", b"\xab\xcd"),
        ("0xabc", b"\x0a\xbc"),  # odd length: a leading zero nibble
        ("0b" + base64.b64encode(b"hello!").decode(), b"hello!"),
        ("0B" + base64.b64encode(b"\x00\x01").decode(), b"\x00\x01"),
    ],
)
def test_decode_binary(text: str, data: bytes) -> None:
    assert decode_binary(text) == data


@pytest.mark.parametrize("text", ["abcd", "0xzz", "0b!!!", "0b abc", "", "0x12 34"])
def test_decode_binary_errors(text: str) -> None:
    with pytest.raises(ChapError):
        decode_binary(text)


@given(st.binary(max_size=64))
def test_binary_round_trip(data: bytes) -> None:
    assert decode_binary(encode_binary(data)) == data


def test_secrets_are_not_printed() -> None:
    assert "initiator-secret" not in repr(USER)
    assert ChapSecrets("a", b"raw").secret == b"raw"


def one_way(target: ChapTarget, initiator: ChapInitiator) -> list[tuple[str, str]]:
    challenge = dict(target.on_algorithms(dict(initiator.algorithms())))
    answer = dict(initiator.on_challenge(challenge))
    return target.on_response(answer)


def test_one_way_success() -> None:
    target, initiator = ChapTarget(USER), ChapInitiator(USER)
    assert one_way(target, initiator) == []
    assert target.verified
    assert len(target.challenge) == 16


def test_each_login_gets_a_fresh_challenge() -> None:
    challenges = {ChapTarget(USER).on_algorithms({"CHAP_A": "5"})[2][1] for _ in range(20)}
    assert len(challenges) == 20


def test_wrong_secret_or_name() -> None:
    with pytest.raises(ChapError) as caught:
        one_way(ChapTarget(USER), ChapInitiator(ChapSecrets("host1", "guess")))
    assert caught.value.status is LoginStatus.AUTHENTICATION_FAILURE
    with pytest.raises(ChapError):
        one_way(ChapTarget(USER), ChapInitiator(ChapSecrets("host2", USER.secret)))


def test_mutual_success() -> None:
    target = ChapTarget(USER, TARGET)
    initiator = ChapInitiator(USER, TARGET)
    reply = one_way(target, initiator)
    assert [key for key, _ in reply] == ["CHAP_N", "CHAP_R"]
    initiator.on_target_response(dict(reply))
    assert initiator.target_verified


def test_mutual_with_the_wrong_target_secret() -> None:
    target = ChapTarget(USER, ChapSecrets("stargate", "impostor-secret"))
    initiator = ChapInitiator(USER, TARGET)
    reply = one_way(target, initiator)
    with pytest.raises(ChapError):
        initiator.on_target_response(dict(reply))
    with pytest.raises(ChapError):
        initiator.on_target_response({})


def test_reflected_challenge_is_refused() -> None:
    """RFC 7143 12.1.3: the target must not answer its own challenge."""
    target = ChapTarget(USER, TARGET)
    challenge = dict(target.on_algorithms({"CHAP_A": "5"}))
    answer = chap_response(int(challenge["CHAP_I"]), USER.secret, target.challenge)
    with pytest.raises(ChapError, match="reflect"):
        target.on_response(
            {
                "CHAP_N": USER.username,
                "CHAP_R": encode_binary(answer),
                "CHAP_I": "7",
                "CHAP_C": challenge["CHAP_C"],
            }
        )


def test_same_secret_both_ways_is_refused() -> None:
    target = ChapTarget(USER, ChapSecrets("stargate", USER.secret))
    with pytest.raises(ChapError):
        one_way(target, ChapInitiator(USER, ChapSecrets("stargate", USER.secret)))


def test_mutual_requested_without_a_target_secret() -> None:
    with pytest.raises(ChapError):
        one_way(ChapTarget(USER), ChapInitiator(USER, TARGET))


@pytest.mark.parametrize("offer", ["7", "6,7", "", "md5"])
def test_algorithms_without_md5(offer: str) -> None:
    with pytest.raises(ChapError):
        ChapTarget(USER).on_algorithms({"CHAP_A": offer})


def test_md5_picked_from_a_list() -> None:
    assert ChapTarget(USER).on_algorithms({"CHAP_A": "7,6,5"})[0] == ("CHAP_A", "5")


def test_response_before_challenge() -> None:
    with pytest.raises(ChapError):
        ChapTarget(USER).on_response({"CHAP_N": "host1", "CHAP_R": "0x00"})


@pytest.mark.parametrize(
    "pairs",
    [
        {"CHAP_A": "5", "CHAP_I": "256", "CHAP_C": "0x01"},
        {"CHAP_A": "5", "CHAP_I": "-1", "CHAP_C": "0x01"},
        {"CHAP_A": "5", "CHAP_I": "1", "CHAP_C": "0x"},
        {"CHAP_A": "5", "CHAP_I": "1"},
        {"CHAP_A": "7", "CHAP_I": "1", "CHAP_C": "0x01"},
        {"CHAP_A": "5", "CHAP_I": "1", "CHAP_C": "0x" + "00" * 1025},
    ],
)
def test_initiator_refuses_bad_challenges(pairs: dict[str, str]) -> None:
    with pytest.raises(ChapError):
        ChapInitiator(USER).on_challenge(pairs)


def test_hex_identifier_accepted() -> None:
    reply = dict(
        ChapInitiator(USER).on_challenge({"CHAP_A": "5", "CHAP_I": "0x0a", "CHAP_C": "0x01"})
    )
    assert reply["CHAP_R"] == encode_binary(chap_response(10, USER.secret, b"\x01"))


@given(
    st.dictionaries(st.sampled_from(["CHAP_N", "CHAP_R", "CHAP_I", "CHAP_C"]), st.text(max_size=40))
)
def test_garbage_answers_only_raise_text_errors(pairs: dict[str, str]) -> None:
    target = ChapTarget(USER, TARGET)
    target.on_algorithms({"CHAP_A": "5"})
    try:
        target.on_response(pairs)
    except TextError:
        return
    raise AssertionError("garbage authenticated")
