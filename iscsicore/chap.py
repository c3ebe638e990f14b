"""CHAP for iSCSI login (RFC 1994, RFC 7143 12.1.3): MD5 only (CHAP_A=5).

One-way: the target challenges, the initiator answers with CHAP_N/CHAP_R. Mutual: the
initiator's answer also carries its own CHAP_I/CHAP_C, and the target proves itself with
CHAP_N/CHAP_R in return. Both sides are sans-IO objects fed with key=value pairs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

from iscsicore.keys import REJECT, TextError
from iscsicore.pdu import LoginStatus

CHAP_MD5 = "5"
CHALLENGE_LENGTH = 16
MIN_CHALLENGE_LENGTH = 1  # what an initiator takes from a target (some targets are terse)
# What the target takes from an initiator's mutual challenge: a short one lets a rogue
# initiator collect the target's answers to a small set of challenges and replay them
# (RFC 7143 12.1.3 wants challenges as long as the secret; 16 bytes, like LIO's).
MIN_MUTUAL_CHALLENGE_LENGTH = 16
MAX_CHALLENGE_LENGTH = 1024


class ChapError(TextError):
    """Authentication failed or the CHAP exchange was malformed: login status 0x0201."""

    status = LoginStatus.AUTHENTICATION_FAILURE


@dataclass(frozen=True, slots=True)
class ChapSecrets:
    """A CHAP name and its shared secret."""

    username: str
    secret: bytes

    def __init__(self, username: str, secret: bytes | str):
        object.__setattr__(self, "username", username)
        object.__setattr__(
            self, "secret", secret.encode() if isinstance(secret, str) else bytes(secret)
        )

    def __repr__(self) -> str:  # never print the secret
        return f"ChapSecrets(username={self.username!r}, secret=<{len(self.secret)} bytes>)"

    @classmethod
    def parse(cls, text: str) -> ChapSecrets:
        """``USER:SECRET`` (the secret may hold colons); ValueError otherwise."""
        user, sep, secret = text.partition(":")
        if not sep or not user or not secret:
            raise ValueError("CHAP credentials must be USER:SECRET")
        return cls(user, secret)


def encode_binary(data: bytes) -> str:
    """RFC 7143 6.1 binary value in hex form: ``0x`` followed by hex digits."""
    return "0x" + data.hex()


def decode_binary(value: str) -> bytes:
    """Decode a ``0x``/``0X`` hex or ``0b``/``0B`` base64 binary value."""
    prefix, body = value[:2], value[2:]
    try:
        if prefix in ("0x", "0X"):
            if len(body) % 2:  # RFC 7143 6.1: odd-length hex gets a leading zero nibble
                body = "0" + body
            return bytes.fromhex(body)
        if prefix in ("0b", "0B"):
            return base64.b64decode(body, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise ChapError(f"bad binary value {value[:40]!r}") from exc
    raise ChapError(f"binary value without 0x/0b prefix: {value[:40]!r}")


def chap_response(identifier: int, secret: bytes, challenge: bytes) -> bytes:
    """RFC 1994: MD5 over the identifier byte, the secret and the challenge."""
    return hashlib.md5(bytes([identifier]) + secret + challenge, usedforsecurity=True).digest()


def _single(pairs: dict[str, str], key: str) -> str:
    value = pairs.get(key)
    if value is None:
        raise ChapError(f"{key} missing")
    return value


def _identifier(value: str) -> int:
    if not value.isascii() or not value.isdigit() or int(value) > 255:
        if value[:2] in ("0x", "0X"):
            try:
                number = int(value[2:], 16)
            except ValueError:
                number = -1
            if 0 <= number <= 255:
                return number
        raise ChapError(f"bad CHAP_I {value[:20]!r}")
    return int(value)


def _challenge(value: str, minimum: int = MIN_CHALLENGE_LENGTH) -> bytes:
    challenge = decode_binary(value)
    if not minimum <= len(challenge) <= MAX_CHALLENGE_LENGTH:
        raise ChapError(
            f"CHAP_C of {len(challenge)} bytes (want {minimum}..{MAX_CHALLENGE_LENGTH})"
        )
    return challenge


def _pick_algorithm(offered: str) -> str:
    if CHAP_MD5 not in offered.split(","):
        raise ChapError(f"no supported CHAP_A in {offered[:40]!r}")
    return CHAP_MD5


@dataclass
class ChapTarget:
    """The target's half: challenge the initiator, check its answer, answer a mutual
    challenge. ``mutual`` is what the target proves itself with when asked."""

    secrets: ChapSecrets
    mutual: ChapSecrets | None = None
    challenge_length: int = CHALLENGE_LENGTH
    identifier: int = field(default_factory=lambda: secrets.randbelow(256))
    challenge: bytes = b""
    verified: bool = False

    def on_algorithms(self, pairs: dict[str, str]) -> list[tuple[str, str]]:
        """Answer CHAP_A=<list> with CHAP_A, CHAP_I and CHAP_C.

        Raises ChapError when MD5 is not offered (the caller also answers CHAP_A=Reject).
        """
        algorithm = _pick_algorithm(_single(pairs, "CHAP_A"))
        self.challenge = secrets.token_bytes(self.challenge_length)
        return [
            ("CHAP_A", algorithm),
            ("CHAP_I", str(self.identifier)),
            ("CHAP_C", encode_binary(self.challenge)),
        ]

    def on_response(self, pairs: dict[str, str]) -> list[tuple[str, str]]:
        """Check CHAP_N/CHAP_R; when the initiator sent CHAP_I/CHAP_C, answer them.

        Returns the pairs for the next response (empty for one-way CHAP).
        """
        if not self.challenge:
            raise ChapError("CHAP_R before the target sent a challenge")
        name = _single(pairs, "CHAP_N")
        answer = decode_binary(_single(pairs, "CHAP_R"))
        expected = chap_response(self.identifier, self.secrets.secret, self.challenge)
        name_ok = hmac.compare_digest(name.encode(), self.secrets.username.encode())
        if not (hmac.compare_digest(answer, expected) and name_ok):
            raise ChapError("CHAP response does not match")
        self.verified = True
        if "CHAP_I" not in pairs and "CHAP_C" not in pairs:
            return []
        if self.mutual is None:
            raise ChapError("initiator asked for mutual CHAP; no target secret configured")
        identifier = _identifier(_single(pairs, "CHAP_I"))
        if identifier == self.identifier:
            # RFC 7143 12.1.3: a CHAP_I is not used twice in a session; answering our own
            # identifier would hand out a response usable against us.
            raise ChapError(f"mutual CHAP_I {identifier} reuses the target's identifier")
        challenge = _challenge(_single(pairs, "CHAP_C"), MIN_MUTUAL_CHALLENGE_LENGTH)
        if hmac.compare_digest(challenge, self.challenge):
            # RFC 7143 12.1.3: a reflected challenge would let the initiator learn the
            # answer to our own challenge from us.
            raise ChapError("mutual challenge reflects the target's challenge")
        if self.mutual.secret == self.secrets.secret:
            # The same secret in both directions makes reflection possible another way.
            raise ChapError("mutual CHAP secret equals the initiator secret")
        response = chap_response(identifier, self.mutual.secret, challenge)
        return [("CHAP_N", self.mutual.username), ("CHAP_R", encode_binary(response))]


@dataclass
class ChapInitiator:
    """The initiator's half: answer the target's challenge and, with ``mutual`` set,
    challenge the target and check its answer. ``mutual`` holds the name and secret the
    target is expected to prove."""

    secrets: ChapSecrets
    mutual: ChapSecrets | None = None
    challenge_length: int = CHALLENGE_LENGTH
    identifier: int = field(default_factory=lambda: secrets.randbelow(256))
    challenge: bytes = b""
    target_verified: bool = False

    def algorithms(self) -> list[tuple[str, str]]:
        return [("CHAP_A", CHAP_MD5)]

    def on_challenge(self, pairs: dict[str, str]) -> list[tuple[str, str]]:
        """Answer CHAP_A/CHAP_I/CHAP_C with CHAP_N/CHAP_R (+ CHAP_I/CHAP_C when mutual)."""
        algorithm = _single(pairs, "CHAP_A")
        if algorithm == REJECT or algorithm != CHAP_MD5:
            raise ChapError(f"target chose CHAP_A={algorithm[:20]!r}")
        identifier = _identifier(_single(pairs, "CHAP_I"))
        target_challenge = _challenge(_single(pairs, "CHAP_C"))
        response = chap_response(identifier, self.secrets.secret, target_challenge)
        reply = [("CHAP_N", self.secrets.username), ("CHAP_R", encode_binary(response))]
        if self.mutual is not None:
            while self.identifier == identifier:  # never reuse the target's CHAP_I
                self.identifier = secrets.randbelow(256)
            self.challenge = secrets.token_bytes(self.challenge_length)
            while hmac.compare_digest(self.challenge, target_challenge):  # pragma: no cover
                self.challenge = secrets.token_bytes(self.challenge_length)
            reply += [("CHAP_I", str(self.identifier)), ("CHAP_C", encode_binary(self.challenge))]
        return reply

    def on_target_response(self, pairs: dict[str, str]) -> None:
        """Check the target's CHAP_N/CHAP_R to our mutual challenge; raise ChapError if wrong."""
        if self.mutual is None:
            return
        if not self.challenge:
            raise ChapError("no mutual challenge was sent")
        name = pairs.get("CHAP_N")
        value = pairs.get("CHAP_R")
        if name is None or value is None:
            raise ChapError("target did not answer the mutual challenge")
        answer = decode_binary(value)
        expected = chap_response(self.identifier, self.mutual.secret, self.challenge)
        name_ok = hmac.compare_digest(name.encode(), self.mutual.username.encode())
        if not (hmac.compare_digest(answer, expected) and name_ok):
            raise ChapError("target's mutual CHAP response does not match")
        self.target_verified = True
